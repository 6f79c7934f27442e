#!/usr/bin/env bash
# qstore's drop-in qlib provider against stock qlib 0.9.7, in one run (issue 18; figures in benches/README.md):
#   handler   qlib's Alpha158 DataHandlerLP (default processors) over N instruments x D days, end to end:
#             stock qlib (its own providers, its caches off) against qstore.qlib.init(...)
#             stock qlib (its own providers, its caches off) against qstore.qlib.init(...), and against
#             qstore.qlib.init(..., fast_processors=False) (qlib's own per-day processors on qstore's data)
#   sampler   random samples per second of qlib's TSDataSampler (step_len 60) over the handler's frame against
#             qstore.WindowSampler over the same query, and what each holds
# Each side runs in a process of its own; ROUNDS rounds (default 3) alternate the three, and the last lines give
# each round's ratios and their medians. Needs the qlib virtualenv tools/test.sh creates (target/venv-qlib).
#
#   tools/bench-qlib.sh [N] [D]        (default 500 x 750)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
days=${2:-750}
work=${QSTORE_BENCH_DIR:-target/bench-python}/$n-$days
qvenv=target/venv-qlib
venv=target/venv
[ -x "$qvenv/bin/python" ] || { echo "bench-qlib.sh: run tools/test.sh first (it creates $qvenv)" >&2; exit 3; }
(cd python && VIRTUAL_ENV="$PWD/../$qvenv" PATH="$PWD/../$qvenv/bin:$PATH" "$PWD/../$venv/bin/maturin" develop -q --release)
cargo build --release --quiet --bin qdump -p qstore
cargo build --release --quiet -p qgen
store=$work/store
if [ ! -d "$store" ]; then
  mkdir -p "$work"
  target/release/qgen csv --out "$work/csv" --symbols "$n" --days "$days" >/dev/null
  target/release/qdump all --csv "$work/csv" --to "$store" --max-date 2100-12-31 >/dev/null || [ $? = 3 ]
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $n instruments x $days days"
run() { # mode
  # qlib logs at INFO on stderr; everything else (the figures, or an error) is shown.
  "$qvenv/bin/python" - "$1" "$store" <<'EOF' 2>&1 | grep -vE " INFO - |Warning|warn\(" || true
import sys, time, tracemalloc
import numpy as np
mode, store = sys.argv[1:3]
import qlib
if mode.startswith("qstore"):
    import qstore.qlib
    qstore.qlib.init(provider_uri=store, region="cn", fast_processors=mode == "qstore")
else:
    qlib.init(provider_uri=store, region="cn", expression_cache=None, dataset_cache=None)
from qlib.data import D
cal = D.calendar()
start, end = str(cal[0])[:10], str(cal[-1])[:10]
from qlib.contrib.data.handler import Alpha158
t = time.perf_counter()
h = Alpha158(instruments="all", start_time=start, end_time=end, fit_start_time=start, fit_end_time=str(cal[len(cal) // 2])[:10])
df = h.fetch(col_set="feature", data_key="infer")
print(f"handler {mode} {time.perf_counter() - t:.2f} s {df.shape}")
if mode == "qstore-stockproc":
    sys.exit(0)
rng = np.random.default_rng(7)
if mode == "qlib":
    from qlib.data.dataset import TSDataSampler
    data = df.sort_index()  # the handler gives (datetime, instrument), as TSDataSampler wants
    sampler = TSDataSampler(data=data, start=start, end=end, step_len=60, fillna_type="none")
    held = sampler.data_arr.nbytes
else:
    import qstore
    sampler = qstore.WindowSampler(qstore.Store(store), "alpha158", window=60)
    held = sampler._values.nbytes
idx = rng.integers(0, len(sampler), size=20000)
t = time.perf_counter()
for i in idx:
    sampler[int(i)]
rate = len(idx) / (time.perf_counter() - t)
print(f"sampler {mode} {rate:.0f} samples/s, {len(sampler)} samples, holds {held / 1e6:.0f} MB")
EOF
}
log=$(mktemp)
for round in $(seq "${ROUNDS:-3}"); do
  for mode in qlib qstore qstore-stockproc; do run $mode; done | tee -a "$log"
done
# handler seconds per round: qlib, qstore, qstore with qlib's processors -> each round's ratios, then medians
ratios=$(awk '/^handler/ { t[$2] = $3; if ($2 == "qstore-stockproc")
  print t["qlib"] / t["qstore"], t["qlib"] / t["qstore-stockproc"] }' "$log")
awk '{ printf "round %d: handler %.1fx stock qlib (%.1fx with qlib'"'"'s own processors)\n", NR, $1, $2 }' <<<"$ratios"
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] }'; }
echo "median over ${ROUNDS:-3} rounds: $(cut -d' ' -f1 <<<"$ratios" | median)x ($(cut -d' ' -f2 <<<"$ratios" | median)x with qlib's own processors)"
rm -f "$log"
