#!/bin/sh
# Runs every spec under busted on Lua 5.4, then again with the C core built
# with AddressSanitizer+UBSan. A sanitizer report anywhere (including child
# processes the specs start) counts as a failure. Last line: N passed, N failed.
#
#   sh spec/run.sh                  all passes (make test)
#   sh spec/run.sh plain [spec...]  the plain build only, every spec or those
#                                   given (make check, luarocks test)
set -u
MODE=${1:-all}
[ $# -gt 0 ] && shift
SPECS=${*:-spec}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/proxystore-test.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT INT TERM

export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;$ROOT/spec/?.lua;;"
export PROXYSTORE_SOURCE_ROOT="$ROOT"
passed=0
failed=0

# run NAME CPATH [env...]: one busted pass; adds to the counts.
run() {
  name=$1; cpath=$2; shift 2
  echo "== specs ($name)"
  log="$LOGDIR/$name.tap"
  env LUA_CPATH="$ROOT/$cpath/?.so;;" PROXYSTORE_BUILD="$ROOT/$cpath/.." "$@" \
    timeout 2400 busted --lua=lua5.4 --cpath="$ROOT/$cpath/?.so" -o TAP $SPECS \
    >"$log" 2>&1
  status=$?
  grep -v '^ok ' "$log"
  # busted's TAP prints pending specs as "ok N - # SKIP why": show them and
  # count them apart, not as passed.
  grep '^ok .* # SKIP ' "$log"
  s=$(grep -c '^ok .* # SKIP ' "$log")
  p=$(($(grep -c '^ok ' "$log") - s))
  f=$(grep -c '^not ok ' "$log")
  if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then
    echo "busted exited with status $status"
    f=1
  fi
  echo "$name: $p passed, $f failed, $s pending"
  passed=$((passed + p))
  failed=$((failed + f))
}

if [ "$MODE" = plain ]; then   # luarocks test comes here straight
  make --no-print-directory all lib >/dev/null || exit 1
fi
run plain build/lib

if [ "$MODE" = plain ]; then
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
fi

SAN="$LOGDIR/san"
mkdir -p "$SAN"
ASAN_LIB=$(gcc -print-file-name=libasan.so)
run sanitized build-asan/lib \
  LD_PRELOAD="$ASAN_LIB" \
  ASAN_OPTIONS="detect_leaks=1:log_path=$SAN/asan:allow_user_segv_handler=1:allocator_may_return_null=1" \
  LSAN_OPTIONS="exitcode=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$SAN/ubsan"
# LD_PRELOAD reaches every program the specs start (mktemp, sh, ...); only
# reports that involve proxystore or Lua are ours. Leaks do not change exit
# codes (LSAN exitcode=0) so a leaky system tool cannot break a spec; they
# are counted from the report files instead.
reports=0
for f in "$SAN"/*; do
  [ -e "$f" ] || continue
  if grep -qE 'core\.so|liblua|proxystore|build-asan' "$f"; then
    reports=$((reports + 1))
    echo "--- sanitizer report $f"; head -80 "$f"
  else
    exe=$(grep -m1 -oE '\(/[^ +)]+' "$f" | tr -d '(')
    echo "(ignored a sanitizer report from ${exe:-another program}, not proxystore)"
  fi
done
[ "$reports" -ne 0 ] && echo "== sanitizer reports: $reports"
failed=$((failed + reports))

# The decoder fuzzer, bounded (make fuzz; FUZZ_SECONDS, default 60): one
# more passed or failed. It needs clang and its libFuzzer runtime
# (.ci/deps.sh installs both); without them it counts as failed.
echo "== fuzz (decoder, ${FUZZ_SECONDS:-60} s)"
flog="$LOGDIR/fuzz.log"
if make --no-print-directory fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-60}" >"$flog" 2>&1; then
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$flog")
  echo "fuzz: ${runs:-?} executions, no crash"
  passed=$((passed + 1))
else
  tail -40 "$flog"
  echo "fuzz: failed"
  failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
