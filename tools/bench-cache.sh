#!/usr/bin/env bash
# Benchmark of the expression cache (issue #5), in one run: `qcache warm --feature-set technical` for the first N
# instruments (default 500; file locks), then one new trading day (`qdump update`) and `qcache update`, on a store
# of 1 year and one of 10 years (made by tools/bench-update.sh). The update should cost the new day plus the
# window, not the history.
# Usage: tools/bench-cache.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
work=${QSTORE_BENCH_DIR:-target/bench-update}
cargo build --release --quiet --bin qdump --bin qcache
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for days in 250 2500; do
  base="$work/store-5000-$days"
  day="$work/day-5000-$days.csv"
  [ -d "$base" ] && [ -f "$day" ] || { echo "run tools/bench-update.sh first" >&2; exit 1; }
  rm -rf "$work/cache-copy"; cp -r "$base" "$work/cache-copy"; sync
  s="$work/cache-copy"
  first=$(cut -f1 "$s/instruments/all.txt" | sort | awk -v n="$n" 'NR <= n' | paste -sd, -)
  /usr/bin/time -f "history $days: warm technical, $n instruments: %e s wall %U s user %S s sys %M KB" \
    target/release/qcache warm "$s" --lock file --instruments "$first" --feature-set technical
  target/release/qdump update --csv "$day" --to "$s" >/dev/null
  /usr/bin/time -f "history $days: qcache update after one day: %e s wall %U s user %S s sys %M KB" \
    target/release/qcache update "$s" --lock file
  target/release/qcache verify "$s" | tail -n 1
done
rm -rf "$work/cache-copy"
