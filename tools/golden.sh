#!/usr/bin/env bash
# Regenerates fixtures/golden/ with qlib itself: a virtualenv with pyqlib 0.9.7 from PyPI (about 2 minutes and
# 1.4 GB the first time, kept in target/qlib-venv), the sample store built by qdump, then
# tools/golden/make_golden.py. The test suite only reads the CSVs; it needs no Python.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${QLIB_VENV:-$repo/target/qlib-venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyqlib==0.9.7
fi
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
cargo run --quiet --release --bin qdump -- all --csv "$repo/fixtures/sample" --to "$store/s" >/dev/null
# Arguments name the files to rewrite (operators alpha158 alpha360 technical); none: all of them.
"$venv/bin/python" "$repo/tools/golden/make_golden.py" "$store/s" "$repo" "$@"
