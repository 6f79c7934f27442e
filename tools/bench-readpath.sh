#!/usr/bin/env bash
# The expression cache on the read path (issue 17), in one run: Alpha158 over N instruments x D days (default
# 5000 x 750), `qcache query --format stats`, the median of R runs (default 3) of each of
#   compute  --expr-cache off: every column evaluated
#   raw      a raw read of 158 field columns of the same shape: a store whose fields f0..f157 are the warm
#            cache's own .bin files (hard links), queried as `$f0 ... $f157` with the cache off
#   cache    --expr-cache read on the warm cache: every column read from its entry
# and the ratios cache/raw (target <= 1.2) and compute/cache (target >= 10). Release build; the page cache is
# warm for all three (each is run once before it is timed).
#
#   tools/bench-readpath.sh [N] [D] [R]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
days=${2:-750}
runs=${3:-3}
work=${QSTORE_BENCH_DIR:-target/bench-readpath}/$n-$days
cargo build --release --quiet --bin qdump --bin qcache -p qstore
cargo build --release --quiet -p qgen
bin=target/release
mkdir -p "$work"
store=$work/store
raw=$work/raw
if [ ! -f "$store/.warm-done" ]; then
  rm -rf "$work/csv" "$store" "$raw"
  $bin/qgen csv --out "$work/csv" --symbols "$n" --days "$days" >/dev/null
  # Long generated histories run past today: --max-date lets them in.
  $bin/qdump all --csv "$work/csv" --to "$store" --max-date 2100-12-31 >/dev/null || [ $? = 3 ]
  /usr/bin/time -f "warm alpha158: %e s wall, %M KB" \
    $bin/qcache warm "$store" --feature-set alpha158 --lock file >/dev/null
  touch "$store/.warm-done"
fi
if [ ! -d "$raw" ]; then
  mkdir -p "$raw/features"
  cp -r "$store/calendars" "$store/instruments" "$raw/"
  # One process for the 790,000 links (an `ln` each took 13 minutes). Entry data files only: a pack's
  # values file is `.values`.
  python3 - "$store/features_cache" "$raw/features" <<'EOF'
import os, sys
cache, out = sys.argv[1:3]
for inst in sorted(os.listdir(cache)):
    d = os.path.join(cache, inst)
    if not os.path.isdir(d):
        continue
    os.makedirs(os.path.join(out, inst))
    bins = sorted(f for f in os.listdir(d) if f.endswith(".bin"))
    for k, f in enumerate(bins):
        os.link(os.path.join(d, f), os.path.join(out, inst, f"f{k}.day.bin"))
EOF
fi
fields=()
for k in $(seq 0 157); do fields+=("\$f$k"); done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
timed() { # label, command...: prints the median wall seconds of $runs runs (after one untimed run)
  local label=$1; shift
  "$@" >/dev/null 2>&1
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e" "$@" 2>&1 >/dev/null | tail -1
  done | median
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $n instruments x $days days, Alpha158"
compute=$(timed compute $bin/qcache query "$store" --feature-set alpha158 --format stats --expr-cache off)
rawt=$(timed raw $bin/qcache query "$raw" --fields "${fields[@]}" --format stats --expr-cache off)
cache=$(timed cache $bin/qcache query "$store" --feature-set alpha158 --format stats --expr-cache read)
$bin/qcache query "$store" --feature-set alpha158 --format stats --cache-stats 2>&1 >/dev/null | sed -n 1p
echo "compute ${compute} s, raw read ${rawt} s, from the cache ${cache} s (median of $runs)"
awk -v c="$cache" -v r="$rawt" -v m="$compute" \
  'BEGIN { printf "cache / raw = %.2fx (target <= 1.2); compute / cache = %.1fx (target >= 10)\n", c / r, m / c }'
