#!/usr/bin/env bash
# Query outputs (issue 20 part 3), in one run: Alpha158 over N instruments x D days (default 1000 x 750) with
# `qcache query --out FILE`, the median of R runs (default 3) of each format: wall time, peak RSS, file size.
# `stats` writes a few lines, so it is the baseline (the query's compute); each format's ratio is against it.
# `whole` rows run the same query in one part (`--part-size` of every instrument: how every query ran before
# outputs took parts), for the memory the parts save. When target/venv has pandas, pyarrow and polars, the
# time each takes to read the files back is measured too. Release build; the page cache is warm (every
# command runs once before it is timed).
#
#   tools/bench-output.sh [N] [D] [R]          FORMATS="stats csv parquet arrow" to choose formats
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
days=${2:-750}
runs=${3:-3}
formats=${FORMATS:-stats csv json parquet arrow}
work=${QSTORE_BENCH_DIR:-target/bench-output}/$n-$days
cargo build --release --quiet --bin qdump --bin qcache -p qstore
cargo build --release --quiet -p qgen
bin=target/release
mkdir -p "$work"
store=$work/store
if [ ! -f "$store/.done" ]; then
  rm -rf "$work/csv" "$store"
  $bin/qgen csv --out "$work/csv" --symbols "$n" --days "$days" >/dev/null
  # Long generated histories run past today: --max-date lets them in.
  $bin/qdump all --csv "$work/csv" --to "$store" --max-date 2100-12-31 >/dev/null || [ $? = 3 ]
  rm -rf "$work/csv"
  touch "$store/.done"
fi

# One timed run: prints "seconds KB".
timed() {
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
  cat "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The command of one query into `cmd`: format, out, extra args...
query() {
  local format=$1 out=$2
  shift 2
  cmd=("$bin/qcache" query "$store" --feature-set alpha158 --expr-cache off --format "$format" --out "$out" "$@")
}

echo "# Alpha158 over $n instruments x $days days, qcache query --out, median of $runs runs ($(nproc) cores)"
printf '%-14s %9s %9s %10s %10s\n' output seconds ratio "peak MB" "file MB"
base=""
for spec in $formats whole-stats whole-parquet; do
  case $spec in
    whole-*) format=${spec#whole-}; extra=(--part-size "$n") ;;
    *) format=$spec; extra=() ;;
  esac
  out=$work/out.$spec
  query "$format" "$out" "${extra[@]}"
  "${cmd[@]}" >/dev/null # warm the page cache
  secs=()
  peak=()
  for _ in $(seq "$runs"); do
    read -r s kb < <(timed "${cmd[@]}")
    secs+=("$s")
    peak+=("$kb")
  done
  s=$(printf '%s\n' "${secs[@]}" | median)
  kb=$(printf '%s\n' "${peak[@]}" | median)
  [ -z "$base" ] && base=$s
  printf '%-14s %9s %9s %10d %10.1f\n' "$spec" "$s" "$(echo "$s / $base" | bc -l | xargs printf '%.2f')" \
    $((kb / 1024)) "$(echo "$(stat -c %s "$out") / 1048576" | bc -l)"
done

py=target/venv/bin/python
if [ -x "$py" ] && $py -c 'import pandas, pyarrow, polars' 2>/dev/null; then
  echo "# reading the files back in Python (median of $runs runs, seconds)"
  $py - "$work" "$runs" <<'EOF'
import statistics, sys, time
import pandas as pd, polars as pl, pyarrow.feather as feather
work, runs = sys.argv[1], int(sys.argv[2])
import os
readers = [
    ("pandas.read_csv", "csv", lambda f: pd.read_csv(f, parse_dates=["datetime"])),
    ("polars.read_csv", "csv", pl.read_csv),
    ("pandas.read_parquet", "parquet", pd.read_parquet),
    ("polars.read_parquet", "parquet", pl.read_parquet),
    ("pyarrow.feather", "arrow", feather.read_table),
    ("polars.read_ipc", "arrow", pl.read_ipc),
]
for name, ext, read in readers:
    path = f"{work}/out.{ext}"
    if not os.path.exists(path):
        continue
    read(path)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - t)
    print(f"{name:22s} {statistics.median(times):8.3f}")
EOF
fi
