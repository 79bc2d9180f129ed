#!/usr/bin/env bash
# make demo: build banger, build the default image if it is missing, then in
# a network namespace made for the purpose start a private daemon, run two
# commands in a VM, show the output, and clean everything up.
#
# Guest traffic never leaves the namespace. Image building needs the Debian
# mirror, so it runs outside it, with a daemon that runs no VM.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then exec sudo -E "$0" "$@"; fi
  echo "demo: needs root (taps, bridges, loop devices)" >&2; exit 1
fi

BIN=${BIN:-$PWD/bin}
export BANGER_STATE_DIR=${BANGER_DEMO_STATE_DIR:-/var/tmp/banger-demo}
export BANGER_RUN_DIR=${BANGER_DEMO_RUN_DIR:-/run/banger-demo}
export BANGER_CONFIG=/dev/null
export BANGER_IMAGE_CACHE_DIR=${BANGER_IMAGE_CACHE_DIR:-/var/cache/banger/debs}
banger="$BIN/banger"
ns="banger-demo-$$"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  set +e
  if ip netns list 2>/dev/null | grep -qw "$ns"; then
    nsenter --net=/run/netns/"$ns" "$banger" vm delete --force demo >/dev/null 2>&1
    nsenter --net=/run/netns/"$ns" "$banger" daemon stop >/dev/null 2>&1
    ip netns del "$ns"
  fi
  "$banger" daemon stop >/dev/null 2>&1
}
trap cleanup EXIT

# A daemon left from an interrupted demo would serve the wrong namespace.
"$banger" daemon stop >/dev/null 2>&1 || true

if ! "$banger" image show default >/dev/null 2>&1; then
  say "building the default image from Debian packages (outside the namespace)"
  "$banger" image build --name default
fi
"$banger" daemon stop >/dev/null

say "network namespace $ns (all guest traffic stays inside it)"
ip netns add "$ns"
ip -n "$ns" link set lo up

say "banger vm run --name demo -- uname -a"
time nsenter --net=/run/netns/"$ns" "$banger" vm run --name demo -- uname -a

say "banger vm run --name demo -- cat /etc/os-release"
time nsenter --net=/run/netns/"$ns" "$banger" vm run --name demo -- cat /etc/os-release

say "banger vm list"
nsenter --net=/run/netns/"$ns" "$banger" vm list

say "cleaning up"
nsenter --net=/run/netns/"$ns" "$banger" vm delete demo
nsenter --net=/run/netns/"$ns" "$banger" daemon stop
ip netns del "$ns"
left=$(ip -br link 2>/dev/null | grep -c '^bgr' || true)
echo "demo done; taps left in the host namespace: $left"
