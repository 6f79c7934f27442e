#!/usr/bin/env bash
# Benchmark of the expression engine (issue #4), everything measured in one run on this machine:
#   (a) ten rolling expressions (Mean, Std, EMA, Max, Min, Corr, Slope, Rsquare, Rank, Quantile; windows 5-60)
#       over every instrument of a SYMBOLS x DAYS store, by `qcache query --format stats` (evaluation plus a
#       one-pass summary; no CSV text, whose formatting would dominate);
#   (b) the full Alpha158 set the same way;
#   (c) when qlib's virtualenv exists (tools/golden.sh makes it), QLIB_ROUNDS rounds (default 3) of qstore
#       (median of 3 runs) then qlib 0.9.7's D.features on the first QLIB_N instruments (default 500) for (a)
#       and (b), so the ratio compares equal work under the same machine state; qlib runs with kernels=2 and
#       no caches. Prints each round's ratios and their medians.
#   (d) KunQuant 0.1.12 (issue 21; installed with pip into target/venv-kunquant on first use)
#       against qstore per factor group of Alpha158 without VWAP0 (tools/golden/bench_kunquant.py defines the
#       groups): for each group, alternating, qstore's whole `qcache query --format stats` process (median of
#       3) and KunQuant's compute-only time (float32, 2 threads, median of 3 repeat calls on loaded inputs,
#       compiled once into $work/kunquant).
# Usage: tools/bench-expr.sh [SYMBOLS] [DAYS]   (default 5000 x 750); PARTS (default "own qlib kunquant") picks
#   the parts: "own" is (a) and (b), "qlib" (c), "kunquant" (d)
set -euo pipefail
cd "$(dirname "$0")/.."
symbols=${1:-5000}
days=${2:-750}
work=${QSTORE_BENCH_DIR:-target/bench-expr}
venv=${QLIB_VENV:-target/qlib-venv}
qlib_n=${QLIB_N:-500}
mkdir -p "$work"
cargo build --release --quiet --bin qdump --bin qcache --bin qgen -p qstore -p qgen
csv="$work/csv-$symbols-$days"
store="$work/store-$symbols-$days"
[ -d "$csv" ] || target/release/qgen csv --out "$csv" --symbols "$symbols" --days "$days" >/dev/null
[ -d "$store" ] || target/release/qdump all --csv "$csv" --to "$store" >/dev/null
echo "store: $symbols x $days   machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
ten=('Mean($close,5)' 'Std($close,20)' 'EMA($close,12)' 'Max($high,60)' 'Min($low,60)'
     'Corr($close,$volume,20)' 'Slope($close,20)' 'Rsquare($close,20)' 'Rank($close,20)'
     'Quantile($close,60,0.8)')
timed() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "$label %e s wall %U s user %M KB" "$@" >/dev/null
}
parts=${PARTS:-"own qlib kunquant"}
if [[ " $parts " == *" own "* ]]; then
for run in 1 2 3; do
  timed "qstore ten      all  run$run" target/release/qcache query "$store" --fields "${ten[@]}" --format stats
done
for run in 1 2; do
  timed "qstore alpha158 all  run$run" target/release/qcache query "$store" --feature-set alpha158 --format stats
done
fi
if [[ " $parts " != *" qlib "* ]]; then
  :
elif [ -x "$venv/bin/python" ]; then
  # Rounds of: qstore on the first QLIB_N instruments (median of 3 runs per work), then qlib on the same ones.
  # Alternating keeps both under the same machine state; each round prints its ratios, the last lines the
  # medians over rounds.
  first=$(cut -f1 "$store/instruments/all.txt" | sort | awk -v n="$qlib_n" 'NR <= n' | paste -sd, -)
  log=$(mktemp)
  median3() { # command... -> median wall and user seconds of 3 runs
    for _ in 1 2 3; do /usr/bin/time -f "%e %U" "$@" 2>&1 >/dev/null | tail -1; done |
      sort -n | sed -n 2p
  }
  for round in $(seq "${QLIB_ROUNDS:-3}"); do
    read -r tw tu < <(median3 target/release/qcache query "$store" --instruments "$first" --fields "${ten[@]}" --format stats)
    read -r aw au < <(median3 target/release/qcache query "$store" --instruments "$first" --feature-set alpha158 --format stats)
    q=$("$venv/bin/python" tools/golden/bench_qlib.py "$store" "$qlib_n" 2>/dev/null)
    read -r _ _ qtw qtc _ < <(grep '^qlib ten ' <<<"$q")
    read -r _ _ qaw qac _ < <(grep '^qlib alpha158 ' <<<"$q")
    awk -v r="$round" -v n="$qlib_n" -v tw="$tw" -v tu="$tu" -v aw="$aw" -v au="$au" \
        -v qtw="$qtw" -v qtc="$qtc" -v qaw="$qaw" -v qac="$qac" 'BEGIN {
      printf "round %d, %d instruments: ten      qstore %.2f s wall %.2f s user | qlib %.2f s wall %.2f s cpu | %.0fx wall %.0fx cpu\n", r, n, tw, tu, qtw, qtc, qtw / tw, qtc / tu
      printf "round %d, %d instruments: alpha158 qstore %.2f s wall %.2f s user | qlib %.2f s wall %.2f s cpu | %.0fx wall %.0fx cpu\n", r, n, aw, au, qaw, qac, qaw / aw, qac / au
      printf "%f %f %f %f\n", qtw / tw, qtc / tu, qaw / aw, qac / au > "/dev/stderr"
    }' 2>>"$log"
  done
  for k in 1 2 3 4; do sort -n -k$k,$k "$log" | awk -v k=$k '{v[NR]=$k} END {print v[int((NR + 1) / 2)]}'; done |
    paste -sd' ' | awk '{printf "median over rounds: ten %.0fx wall %.0fx cpu; alpha158 %.0fx wall %.0fx cpu\n", $1, $2, $3, $4}'
  rm -f "$log"
else
  echo "no qlib virtualenv at $venv (tools/golden.sh creates it): skipping the qlib comparison"
fi
if [[ " $parts " == *" kunquant "* ]]; then
  kvenv=target/venv-kunquant
  if [ ! -x "$kvenv/bin/python" ]; then
    python3 -m venv "$kvenv"
    "$kvenv/bin/python" -m pip install -q --disable-pip-version-check kunquant==0.1.12 numpy
  fi
  median() { sort -n | sed -n 2p; }
  printf "%-28s %7s %16s %16s %8s\n" group factors "qstore (s)" "kunquant (s)" "q / k"
  for group in all kbar price roc-ma std-vstd beta-rsqr-resi max-min-rsv-imax-imin-imxd qtlu-qtld-rank \
      corr-cord cnt-sum-vma-wvma-vsum; do
    mapfile -t exprs < <(python3 tools/golden/bench_kunquant.py exprs "$group")
    # Compiles on first use (minutes for the whole set); the figures are the repeat calls.
    k=$("$kvenv/bin/python" tools/golden/bench_kunquant.py "$store" "$work/kunquant" "$group" 3 2)
    [ "$(cut -d' ' -f3 <<<"$k")" = "${#exprs[@]}" ] || { echo "bench-expr.sh: $group: $k against ${#exprs[@]} factors" >&2; exit 1; }
    q=$(for _ in 1 2 3; do /usr/bin/time -f "%e" target/release/qcache query "$store" --fields "${exprs[@]}" \
          --format stats --expr-cache off 2>&1 >/dev/null | tail -1; done | median)
    kq=$(cut -d' ' -f7- <<<"$k" | tr ' ' '\n' | median)
    awk -v g="$group" -v n="${#exprs[@]}" -v q="$q" -v k="$kq" -v f="$(cut -d' ' -f5 <<<"$k")" \
      'BEGIN { printf "%-28s %7d %16.2f %9.3f (%.2f) %7.2fx\n", g, n, q, k, f, q / k }'
  done
  echo "(kunquant: median repeat call, first call in brackets; q / k above 1: qstore slower)"
fi
