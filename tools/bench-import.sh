#!/usr/bin/env bash
# Benchmark of `qdump all` (issue #3), all measured in one run on this machine:
#   (a) qdump all --mysql end to end into a new directory (table order, 2 key ranges, or 1), with --calendar-table, as
#       the sorted scan over 2 connections that a selection takes (--limit), and with --overwrite over an
#       existing store; with peak memory;
#   (b) the server's own client exporting the same rows: mariadb -B -N --quick ... > /dev/null;
#   (c) the users' current approach: one query per symbol, rows collected in memory;
#   (d) qdump all --csv of the same data (one CSV per symbol).
# Usage: tools/bench-import.sh [SYMBOLS] [DAYS]   (default 5000 x 780, about 3.5M rows; needs MariaDB up)
set -euo pipefail
cd "$(dirname "$0")/.."
symbols=${1:-5000}
days=${2:-780}
url=${QSTORE_BENCH_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
table=bench_kline_${symbols}_${days}
work=${QSTORE_BENCH_DIR:-target/bench-import}
mkdir -p "$work"
cargo build --release --quiet --bin qdump --bin qgen -p qstore -p qgen

have=$(mariadb -h127.0.0.1 -uroot -N -B test -e "SELECT COUNT(DISTINCT symbol) FROM $table" 2>/dev/null || echo 0)
if [ "$have" != "$symbols" ]; then
  echo "generating $table ($symbols symbols x $days days) ..." >&2
  target/release/qgen mysql --url "$url" --table "$table" --symbols "$symbols" --days "$days"
fi
if [ ! -d "$work/csv-$symbols-$days" ]; then
  target/release/qgen csv --raw-symbols --out "$work/csv-$symbols-$days" --symbols "$symbols" --days "$days"
fi
rows=$(mariadb -h127.0.0.1 -uroot -N -B test -e "SELECT COUNT(*) FROM $table")
echo "rows: $rows   machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

timed() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" > "$work/out.txt" 2> "$work/err.txt" || { cat "$work/err.txt" >&2; exit 1; }
  read -r secs kb < "$work/time.txt"
  printf '%-44s %8.2f s  %8.0f rows/s  peak RSS %6.1f MB\n' "$label" "$secs" "$(echo "$rows / $secs" | bc -l)" "$(echo "$kb / 1024" | bc -l)"
}

caltab=${table}_days
mariadb -h127.0.0.1 -uroot test -e "CREATE TABLE IF NOT EXISTS $caltab (trade_date DATE PRIMARY KEY);
  INSERT IGNORE INTO $caltab SELECT DISTINCT trade_date FROM $table"

# Every timed import writes to a new directory and nothing is deleted until the end: on this ext4 (mounted with
# discard) creating files right after deleting tens of thousands is several times slower, which would measure
# the file system's recovery instead of the import.
n=0
fresh() { n=$((n + 1)); dir="$work/run-$n"; }
for run in 1 2 3; do
  echo "--- run $run"
  timed "(b) mariadb -B -N --quick > /dev/null" \
    mariadb -h127.0.0.1 -uroot -B -N --quick test \
      -e "SELECT symbol, trade_date, open, high, low, close, volume, amount, factor FROM $table"
  fresh
  timed "(a) qdump all --mysql" \
    target/release/qdump all --mysql "$url" --table "$table" --to "$dir"
  fresh
  timed "(a) ... --connections 1 (one table scan)" \
    target/release/qdump all --mysql "$url" --table "$table" --to "$dir" --connections 1
  fresh
  timed "(a) ... --limit $symbols (sorted, 2 connections)" \
    target/release/qdump all --mysql "$url" --table "$table" --to "$dir" --limit "$symbols"
  fresh
  timed "(a) ... --calendar-table" \
    target/release/qdump all --mysql "$url" --table "$table" --to "$dir" --calendar-table "$caltab"
  timed "(c) one query per symbol (qgen query-per-symbol)" \
    target/release/qgen query-per-symbol --url "$url" --table "$table"
  fresh
  timed "(d) qdump all --csv ($symbols files)" \
    target/release/qdump all --csv "$work/csv-$symbols-$days" --to "$dir"
done
echo "--- once, last (its deletion slows what follows)"
timed "(a) ... --overwrite (also deletes the old store)" \
  target/release/qdump all --mysql "$url" --table "$table" --to "$work/run-1" --overwrite
cmp <(cd "$work/run-1" && find . -type f -exec md5sum {} + | sort -k2) \
    <(cd "$work/run-5" && find . -type f -exec md5sum {} + | sort -k2) \
  && echo "MySQL and CSV stores are byte-identical"
rm -rf "$work"/run-*
