#!/bin/sh
# Installs the Debian packages proxystore needs that are missing; does
# nothing when all are present.
#
#   sh .ci/deps.sh         everything: build, test, fuzz, bench, packaging
#   sh .ci/deps.sh demo    only what make demo needs: a compiler and the
#                          libraries the core and the binary link
set -eu
BUILD="gcc make pkg-config liblua5.4-dev libhiredis-dev libssl-dev libedit-dev"
TEST="g++ lua5.4 lua-cjson lua-busted luarocks redis-server redis-tools clang
libclang-rt-14-dev procps zip unzip"
case "${1:-all}" in
  demo) PACKAGES=$BUILD ;;
  all) PACKAGES="$BUILD $TEST" ;;
  *) echo "usage: $0 [all|demo]" >&2; exit 2 ;;
esac
missing=""
for p in $PACKAGES; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
  esac
done
[ -z "$missing" ] && exit 0
echo "proxystore: installing missing packages:$missing" >&2
if [ "$(id -u)" != 0 ]; then
  echo "proxystore: not root; run: sudo apt-get install$missing" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# Debian starts a system redis-server on 6379; the tests start their own.
case "$missing" in
  *redis-server*)
    if command -v systemctl >/dev/null 2>&1; then
      systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi ;;
esac
