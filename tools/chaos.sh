#!/usr/bin/env bash
# Crash soak: kill -9 every kind of writer at a random moment while readers run, rerun it, and check the store
# against a clean run. Not a unit test: a soak (tools/test.sh runs a short form of it).
#
#   tools/chaos.sh [ITERATIONS]        default 200; ITERATIONS/5 of each writer below
#
# Writers (one per iteration, in turn):
#   import   qdump all --overwrite over an older store          -> byte-identical to a clean import
#   update   qdump update of the older store                    -> byte-identical to a clean import
#   warm     qcache warm (expression cache, file locks)         -> verify clean, every entry there
#   cupdate  qcache update after a qdump update                 -> verify clean, no stale entry
#   dataset  qcache warm --dataset                              -> verify clean, values equal a computed query
# Readers: while each writer runs and is killed and rerun, `qdump show` of the days before the update runs in
# a loop, and its output must never differ from the reference (no torn or missing value, no error).
#
# Prints one line per failure and, at the end, "chaos: N iterations (K killed mid-run), F failed". Exit 0 only
# when nothing failed.
set -euo pipefail
cd "$(dirname "$0")/.."

iterations=${1:-200}
# The workspace's features (as tools/test.sh's cargo test builds them): the binaries it built are reused.
cargo build --quiet --workspace --bins

work=$(mktemp -d "${TMPDIR:-/tmp}/qstore-chaos.XXXXXX")
# Copies of the binaries: a rebuild while the soak runs must not change (or remove) them under it.
mkdir "$work/bin"
cp target/debug/qdump target/debug/qcache target/debug/qgen "$work/bin/"
qdump=$work/bin/qdump
qcache=$work/bin/qcache
reader_pid=""
cleanup() {
  [ -n "$reader_pid" ] && kill "$reader_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

log() { printf 'chaos: %s\n' "$*" >&2; }

# Data: 60 symbols x 400 days (late listings, suspensions, a delisting), larger than the fixtures so that a
# random kill lands inside the work, not before or after it.
"$work/bin/qgen" csv --out "$work/data" --symbols 60 --days 400 >/dev/null
ref="$work/ref"
mkdir -p "$ref"
$qdump all --csv "$work/data" --to "$ref/whole" >/dev/null
mid=$(sed -n 300p "$ref/whole/calendars/day.txt")
early_end=$(sed -n 250p "$ref/whole/calendars/day.txt")
$qdump all --csv "$work/data" --to "$ref/early" --end "$mid" >/dev/null || [ $? = 3 ]
cp -r "$ref/early" "$ref/early-warm"
$qcache warm "$ref/early-warm" --feature-set technical --lock file >/dev/null
$qcache query "$ref/whole" --feature-set technical --format csv >"$ref/technical.csv"
json_num() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p" | head -1; }
cp -r "$ref/whole" "$ref/whole-warm"
$qcache warm "$ref/whole-warm" --feature-set technical --lock file >/dev/null
entries=$($qcache info "$ref/whole-warm" --json | json_num entries)
# What readers must always see: the days before the update's first day, for every instrument.
show() { $qdump show "$1" --fields open,close,volume --end "$early_end"; }
show "$ref/early" >"$ref/show.txt"

# The store files a clean run produces (qstore's dot-files left out: lock, stamp, id).
data_sum() {
  (cd "$1" && find calendars instruments features -type f ! -name '.qstore-*' -print0 | sort -z |
    xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}
whole_sum=$(data_sum "$ref/whole")

# Milliseconds one clean run of a writer takes, to pick kill moments inside it.
ms() { date +%s%3N; }
declare -A dur
time_op() { # op, store
  local t0; t0=$(ms)
  (run_op "$1" "$2") >/dev/null 2>&1 || true
  dur[$1]=$(( $(ms) - t0 + 1 ))
}

prepare() { # op, store
  rm -rf "$2"
  case $1 in
    import | update) cp -r "$ref/early" "$2" ;;
    warm | dataset) cp -r "$ref/whole" "$2" ;;
    cupdate)
      cp -r "$ref/early-warm" "$2"
      $qdump update --csv "$work/data" --to "$2" >/dev/null
      ;;
  esac
}

# Runs a writer with `exec`, so that in a subshell (`&`, `$(...)`) the pid is the writer's own: kill -9 must hit
# the writer, not a shell around it. Always call it in a subshell.
run_op() { # op, store
  case $1 in
    import) exec $qdump all --csv "$work/data" --to "$2" --overwrite ;;
    update) exec $qdump update --csv "$work/data" --to "$2" ;;
    warm) exec $qcache warm "$2" --feature-set technical --lock file ;;
    cupdate) exec $qcache update "$2" --lock file ;;
    dataset) exec $qcache warm "$2" --dataset --feature-set technical --lock file ;;
  esac
}

ops=(import update warm cupdate dataset)
for op in "${ops[@]}"; do
  prepare "$op" "$work/timing"
  time_op "$op" "$work/timing"
done
log "clean run times (ms): $(for op in "${ops[@]}"; do printf '%s=%s ' "$op" "${dur[$op]}"; done)"

failures=0
killed=0
fail() {
  failures=$((failures + 1))
  printf 'chaos: FAILED iteration %s (%s, kill after %s ms): %s\n' "$i" "$op" "$delay" "$*"
}

check() { # op, store
  local s=$2
  case $1 in
    import | update)
      [ "$(data_sum "$s")" = "$whole_sum" ] || fail "the store differs from a clean import"
      [ ! -e "$s/.qstore-update-pending" ] || fail "the update marker stayed"
      ;;
    warm)
      $qcache verify "$s" >/dev/null 2>&1 || fail "qcache verify: $($qcache verify "$s" 2>&1 | tail -3)"
      [ "$($qcache info "$s" --json | json_num stale_entries)" = 0 ] || fail "stale entries after warm"
      got=$($qcache info "$s" --json | json_num entries)
      [ "$got" = "$entries" ] || fail "$got entries, a clean warm makes $entries"
      ;;
    cupdate)
      $qcache verify "$s" >/dev/null 2>&1 || fail "qcache verify: $($qcache verify "$s" 2>&1 | tail -3)"
      [ "$($qcache info "$s" --json | json_num stale_entries)" = 0 ] || fail "stale entries after qcache update"
      ;;
    dataset)
      $qcache verify "$s" >/dev/null 2>&1 || fail "qcache verify: $($qcache verify "$s" 2>&1 | tail -3)"
      cmp -s <($qcache query "$s" --feature-set technical --format csv --disk-cache 1) "$ref/technical.csv" ||
        fail "the dataset's values differ from a computed query"
      ;;
  esac
}

# The reader loop: `qdump show` of the stable days, compared with the reference, until told to stop.
reader() { # store, failure file
  while [ ! -e "$work/stop-reader" ]; do
    if [ -d "$1/calendars" ]; then
      if ! out=$(show "$1" 2>&1); then
        echo "reader error: $out" >>"$2"
      elif [ "$out" != "$(cat "$ref/show.txt")" ]; then
        echo "reader saw other values" >>"$2"
      fi
    fi
  done
}

store="$work/store"
for ((i = 1; i <= iterations; i++)); do
  op=${ops[$(( (i - 1) % ${#ops[@]} ))]}
  prepare "$op" "$store"
  rm -f "$work/stop-reader" "$work/reader-failures"
  reader "$store" "$work/reader-failures" &
  reader_pid=$!
  delay=$(( RANDOM % ${dur[$op]} ))
  run_op "$op" "$store" >/dev/null 2>&1 &
  pid=$!
  sleep "$(awk -v ms="$delay" 'BEGIN { printf "%.3f", ms / 1000 }')"
  kill -9 "$pid" 2>/dev/null || true
  status=0
  { wait "$pid"; } 2>/dev/null || status=$?
  [ "$status" = 137 ] && killed=$((killed + 1))
  # The rerun must finish the job (a killed import or warm leaves nothing a rerun trips over).
  rerun=0
  out=$(run_op "$op" "$store" 2>&1) || rerun=$?
  case "$op:$rerun" in
    *:0 | import:3 | update:3) ;; # 3: symbols reported as skipped, as in a clean run
    *) fail "the rerun failed ($rerun): $(printf '%s' "$out" | tail -2)" ;;
  esac
  touch "$work/stop-reader"
  wait "$reader_pid" || true
  reader_pid=""
  if [ -s "$work/reader-failures" ]; then
    fail "$(sort "$work/reader-failures" | uniq -c | head -3)"
  fi
  check "$op" "$store"
done

echo "chaos: $iterations iterations ($killed killed mid-run), $failures failed"
[ "$failures" = 0 ]
