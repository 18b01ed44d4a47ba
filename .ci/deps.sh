#!/bin/sh
# Installs the Debian packages proxystore needs that are missing; does
# nothing when all are present.
set -eu
PACKAGES="gcc g++ make pkg-config lua5.4 liblua5.4-dev libhiredis-dev lua-cjson
lua-busted luarocks redis-server clang libclang-rt-14-dev procps libedit-dev"
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
if command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
