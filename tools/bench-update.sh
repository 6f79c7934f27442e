#!/usr/bin/env bash
# Benchmark of `qdump update` (issue #8): append one trading day to 5000 symbols x 8 fields, on a store holding
# 1 year (250 days) and on one holding 10 years (2500 days) of history, all measured in one run. The new day comes
# as one CSV file with a symbol column (what a daily export looks like), so reading it costs the same for both.
# Each timing is on a fresh copy of the store; the page cache is warm (the store was just written).
# Usage: tools/bench-update.sh [SYMBOLS]
set -euo pipefail
cd "$(dirname "$0")/.."
symbols=${1:-5000}
work=${QSTORE_BENCH_DIR:-target/bench-update}
mkdir -p "$work"
cargo build --release --quiet --bin qdump --bin qgen -p qstore -p qgen
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for days in 250 2500; do
  csv="$work/csv-$symbols-$((days + 1))"
  [ -d "$csv" ] || target/release/qgen csv --out "$csv" --symbols "$symbols" --days $((days + 1)) >/dev/null
  last=$(for f in "$csv"/*.csv; do tail -n 1 "$f" | cut -d, -f1; done | sort -u | tail -n 1)
  prev=$(for f in "$csv"/*.csv; do tail -n 2 "$f" | head -n 1 | cut -d, -f1; done | sort -u | tail -n 1)
  base="$work/store-$symbols-$days"
  if [ ! -d "$base" ]; then
    # Generated histories run past today (10 years from 2023): --max-date lets them in.
    target/release/qdump all --csv "$csv" --to "$base" --end "$prev" --max-date 2100-12-31 >/dev/null ||
      [ $? -eq 3 ]
  fi
  day="$work/day-$symbols-$days.csv"
  if [ ! -f "$day" ]; then
    { echo "symbol,$(head -n 1 "$csv/$(ls "$csv" | head -n 1)")"
      for f in "$csv"/*.csv; do
        s=$(basename "$f" .csv); tail -n 1 "$f" | grep "^$last," | sed "s/^/$s,/" || true
      done; } > "$day"
  fi
  rows=$(($(wc -l < "$day") - 1))
  for run in 1 2 3; do
    rm -rf "$work/copy"; cp -r "$base" "$work/copy"; sync
    /usr/bin/time -f "history $days days, run $run: %e s wall %U s user %S s sys %M KB ($rows rows of $last)" \
      target/release/qdump update --csv "$day" --to "$work/copy" --max-date 2100-12-31 >/dev/null
  done
done
rm -rf "$work/copy"
