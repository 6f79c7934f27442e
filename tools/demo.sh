#!/usr/bin/env bash
# The main job on the embedded default, no servers needed: import the sample K-lines in fixtures/sample (CSV)
# into a store, then read it back and print a few days of it.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-target/demo-store}
# The default build links libhdf5 (the dataset cache); without it and without root, build without that feature.
features=()
if ! pkg-config --exists hdf5 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libhdf5-dev pkg-config >/dev/null
  else
    echo "demo.sh: libhdf5-dev is missing (apt-get install libhdf5-dev as root); building without the dataset cache" >&2
    features=(--no-default-features --features cli)
  fi
fi
cargo build --release --quiet "${features[@]}" --bin qdump
target/release/qdump all --csv fixtures/sample --to "$store" --overwrite
echo
echo "$store now holds: $(ls "$store"/features | wc -l) instruments, calendar $(head -1 "$store"/calendars/day.txt) .. $(tail -1 "$store"/calendars/day.txt)"
echo
target/release/qdump show "$store" --instruments SH600000,SZ300009 --fields open,close,volume --start 2023-05-19 --end 2023-05-25
