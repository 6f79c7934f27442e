#!/usr/bin/env bash
# Every fuzz target in tools/fuzz for SECONDS each (default 60), each seeded from tools/fuzz/seeds/<target>
# and its growing corpus in tools/fuzz/corpus/<target> (not committed). Prints each target's execution count.
# A crash stops it with exit 1 and the fuzzer's report (the input is in tools/fuzz/artifacts/<target>/).
#
#   tools/fuzz.sh [SECONDS] [TARGET...]
#
# QSTORE_FUZZ_DEV=1 builds the targets unoptimised (still with AddressSanitizer): 3.5 min instead of 8 on two
# cores, for fewer executions per second; tools/test.sh uses it for its short runs.
#
# cargo-fuzz drives libFuzzer through nightly-only flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain here
# accept them. tools/test.sh runs it for a few seconds per target.
set -euo pipefail
cd "$(dirname "$0")/fuzz"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
targets=("$@")
profile=()
[ "${QSTORE_FUZZ_DEV:-}" = 1 ] && profile=(--dev)
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
if ! log=$(cargo fuzz build --fuzz-dir . "${profile[@]}" 2>&1); then
  printf '%s\n' "$log" | tail -40
  echo "fuzz: the targets did not build"
  exit 1
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  if ! out=$(cargo fuzz run --fuzz-dir . "${profile[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 2>&1); then
    printf '%s\n' "$out" | tail -40
    echo "fuzz: $t FAILED"
    exit 1
  fi
  runs=$(printf '%s\n' "$out" | sed -n 's/.*stat::number_of_executed_units: *\([0-9]*\).*/\1/p' | tail -1)
  echo "fuzz: $t: ${runs:-?} executions in ${secs} s"
done
