#!/usr/bin/env bash
# Benchmarks of `qdump update`: append one trading day to SYMBOLS symbols x 8 fields.
# 1. CSV (issue #8): on a store holding 1 year (250 days) and on one holding 10 years (2500 days) of history. The
#    new day comes as one CSV file with a symbol column (what a daily export looks like), so reading it costs the
#    same for both.
# 2. MySQL (issue #20 part 2): `qdump update --mysql` against the server exporting the same new rows to its own
#    client (`mariadb -B -N --quick`, output to /dev/null), on a table keyed PRIMARY KEY (symbol, trade_date)
#    holding MYSQL_DAYS days, without and with an index on trade_date. Each run times the export and the update
#    one after the other, so every ratio is of one run.
# Each timing is on a fresh copy of the store; the page cache is warm (the store was just written).
# Usage: tools/bench-update.sh [SYMBOLS]   (PARTS="csv mysql", MYSQL_DAYS=750, RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
symbols=${1:-5000}
parts=${PARTS:-csv mysql}
runs=${RUNS:-3}
work=${QSTORE_BENCH_DIR:-target/bench-update}
mkdir -p "$work"
cargo build --release --quiet --bin qdump --bin qgen -p qstore -p qgen
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for days in 250 2500; do
  [[ " $parts " == *" csv "* ]] || break
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
  for run in $(seq "$runs"); do
    rm -rf "$work/copy"; cp -r "$base" "$work/copy"; sync
    /usr/bin/time -f "history $days days, run $run: %e s wall %U s user %S s sys %M KB ($rows rows of $last)" \
      target/release/qdump update --csv "$day" --to "$work/copy" --max-date 2100-12-31 >/dev/null
  done
done
rm -rf "$work/copy"

[[ " $parts " == *" mysql "* ]] || exit 0
url=${QSTORE_BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
sql() { mariadb -h 127.0.0.1 -P 3306 -u root -B -N test -e "$1"; }
mdays=${MYSQL_DAYS:-750}
cols="symbol, trade_date, open, high, low, close, volume, amount, vwap, factor"
for index in none date; do
  table="bench_update_${symbols}_${mdays}_$index"
  if [ "$(sql "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'test' AND TABLE_NAME = '$table'")" = 0 ]; then
    flag=(); [ "$index" = date ] && flag=(--date-index)
    target/release/qgen mysql --url "$url" --table "$table" --symbols "$symbols" --days "$mdays" \
      --key symbol-date "${flag[@]}"
  fi
  last=$(sql "SELECT MAX(trade_date) FROM $table")
  prev=$(sql "SELECT MAX(trade_date) FROM $table WHERE trade_date < '$last'")
  base="$work/mysql-store-$table"
  if [ ! -d "$base" ]; then
    target/release/qdump all --mysql "$url" --table "$table" --to "$base" --end-date "$prev" \
      --max-date 2100-12-31 >/dev/null || [ $? -eq 3 ]
  fi
  rows=$(sql "SELECT COUNT(*) FROM $table WHERE trade_date > '$prev'")
  for run in $(seq "$runs"); do
    rm -rf "$work/copy"; cp -r "$base" "$work/copy"; sync
    t0=$(date +%s.%N)
    mariadb -h 127.0.0.1 -P 3306 -u root -B -N --quick test \
      -e "SELECT $cols FROM $table WHERE trade_date > '$prev'" >/dev/null
    t1=$(date +%s.%N)
    /usr/bin/time -o "$work/time" -f "%e s wall %U s user %S s sys %M KB" \
      target/release/qdump update --mysql "$url" --table "$table" --to "$work/copy" --max-date 2100-12-31 >/dev/null
    t2=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v c="$t2" -v i="$index" -v r="$run" -v n="$rows" -v d="$mdays" -v t="$(cat "$work/time")" \
      'BEGIN { printf "mysql, %s date index, %d days, run %d: export %.3f s, qdump update %.3f s (%s), ratio %.2f (%d rows)\n", i == "date" ? "with" : "no", d, r, b - a, c - b, t, (c - b) / (b - a), n }'
  done
done
rm -rf "$work/copy"
