#!/usr/bin/env bash
# The main job on the embedded default, no servers needed: import the sample K-lines in fixtures/sample (CSV)
# into a store, then read it back and print a few days of it.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-target/demo-store}
cargo build --release --quiet --bin qdump
target/release/qdump all --csv fixtures/sample --to "$store" --overwrite
echo
echo "$store now holds: $(ls "$store"/features | wc -l) instruments, calendar $(head -1 "$store"/calendars/day.txt) .. $(tail -1 "$store"/calendars/day.txt)"
echo
target/release/qdump show "$store" --instruments SH600000,SZ300009 --fields open,close,volume --start 2023-05-19 --end 2023-05-25
