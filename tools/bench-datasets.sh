#!/usr/bin/env bash
# Benchmark of the dataset cache (issue #7), in one run on this machine:
#   (a) benches/datacache.rs on Alpha158 over SYMBOLS x DAYS (default 300 x 750): build, whole-range and one-month
#       reads from the dataset cache, versus recomputing, versus the expression cache, versus memcpy;
#   (b) the daily update: a store one day short, `qcache warm --dataset --feature-set alpha158`, then
#       `qdump update` with the last day and `qcache update` (an append to a copy of the file), against a full
#       rebuild (`qcache query --disk-cache 2`) of the same dataset.
# Usage: tools/bench-datasets.sh [SYMBOLS] [DAYS]
set -euo pipefail
cd "$(dirname "$0")/.."
symbols=${1:-300}
days=${2:-750}
work=${QSTORE_BENCH_DIR:-target/bench-datasets}
mkdir -p "$work"
cargo build --release --quiet --bin qdump --bin qcache --bin qgen -p qstore -p qgen
csv="$work/csv-$symbols-$days"
store="$work/store-$symbols-$days"
[ -d "$csv" ] || target/release/qgen csv --out "$csv" --symbols "$symbols" --days "$days" >/dev/null
[ -d "$store" ] || target/release/qdump all --csv "$csv" --to "$store" >/dev/null
echo "store: $symbols x $days   machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
QSTORE_BENCH_STORE="$PWD/$store" cargo bench --quiet --bench datacache 2>&1 |
  grep -E "^dataset:|^datacache|time:|thrpt:"
# (b) A store without the last day, its dataset, then the day.
last=$(tail -n 1 "$store/calendars/day.txt")
prev=$(tail -n 2 "$store/calendars/day.txt" | head -n 1)
short="$work/short"
for run in 1 2 3; do
  rm -rf "$short"
  target/release/qdump all --csv "$csv" --to "$short" --end "$prev" >/dev/null || true
  /usr/bin/time -f "run$run build alpha158 dataset: %e s wall %M KB" \
    target/release/qcache warm "$short" --lock file --dataset --feature-set alpha158 >/dev/null
  target/release/qdump update --csv "$csv" --to "$short" --end "$last" >/dev/null
  /usr/bin/time -f "run$run qcache update after one day (append): %e s wall %M KB" \
    target/release/qcache update "$short" --lock file >/dev/null
  /usr/bin/time -f "run$run full rebuild of the same dataset: %e s wall %M KB" \
    target/release/qcache query "$short" --feature-set alpha158 --disk-cache 2 --format stats >/dev/null
  target/release/qcache verify "$short" --lock file | tail -n 1
done
du -sh "$short/dataset_cache"
rm -rf "$short"
