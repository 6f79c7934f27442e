#!/usr/bin/env bash
# Benchmark of the expression engine (issue #4), everything measured in one run on this machine:
#   (a) ten rolling expressions (Mean, Std, EMA, Max, Min, Corr, Slope, Rsquare, Rank, Quantile; windows 5-60)
#       over every instrument of a SYMBOLS x DAYS store, by `qcache query --format stats` (evaluation plus a
#       one-pass summary; no CSV text, whose formatting would dominate);
#   (b) the full Alpha158 set the same way;
#   (c) when qlib's virtualenv exists (tools/golden.sh makes it), qlib 0.9.7's D.features on the first
#       QLIB_N instruments (default 500) for (a) and (b), and qstore on the same QLIB_N instruments, so the
#       ratio compares equal work; qlib runs with kernels=2 and no caches.
# Usage: tools/bench-expr.sh [SYMBOLS] [DAYS]   (default 5000 x 750)
set -euo pipefail
cd "$(dirname "$0")/.."
symbols=${1:-5000}
days=${2:-750}
work=${QSTORE_BENCH_DIR:-target/bench-expr}
venv=${QLIB_VENV:-target/qlib-venv}
qlib_n=${QLIB_N:-500}
mkdir -p "$work"
cargo build --release --quiet --bin qdump --bin qcache --bin qgen -p qstore -p qgen
csv="$work/csv-$symbols-$days"
store="$work/store-$symbols-$days"
[ -d "$csv" ] || target/release/qgen csv --out "$csv" --symbols "$symbols" --days "$days" >/dev/null
[ -d "$store" ] || target/release/qdump all --csv "$csv" --to "$store" >/dev/null
echo "store: $symbols x $days   machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
ten=('Mean($close,5)' 'Std($close,20)' 'EMA($close,12)' 'Max($high,60)' 'Min($low,60)'
     'Corr($close,$volume,20)' 'Slope($close,20)' 'Rsquare($close,20)' 'Rank($close,20)'
     'Quantile($close,60,0.8)')
timed() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "$label %e s wall %U s user %M KB" "$@" >/dev/null
}
for run in 1 2 3; do
  timed "qstore ten      all  run$run" target/release/qcache query "$store" --fields "${ten[@]}" --format stats
done
for run in 1 2; do
  timed "qstore alpha158 all  run$run" target/release/qcache query "$store" --feature-set alpha158 --format stats
done
if [ -x "$venv/bin/python" ]; then
  first=$(cut -f1 "$store/instruments/all.txt" | sort | awk -v n="$qlib_n" 'NR <= n' | paste -sd, -)
  timed "qstore ten      $qlib_n" target/release/qcache query "$store" --instruments "$first" --fields "${ten[@]}" --format stats
  timed "qstore alpha158 $qlib_n" target/release/qcache query "$store" --instruments "$first" --feature-set alpha158 --format stats
  "$venv/bin/python" tools/golden/bench_qlib.py "$store" "$qlib_n" 2>/dev/null
else
  echo "no qlib virtualenv at $venv (tools/golden.sh creates it): skipping the qlib comparison"
fi
