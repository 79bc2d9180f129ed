#!/usr/bin/env bash
# The pull benchmark, called by run.sh as root:
#
#   pull.sh WORK BIN RUNS
#
# Builds a ~100 MB image from Debian packages (python3 and its dependency
# closure, 50 packages, about 114 MiB unpacked, 40 MB of gzip blobs in 7
# layers; benchtool ociimage), serves it from Debian's docker-registry on
# loopback inside a network namespace made here, and times, side by side:
#
#   banger image pull, empty layer and rootfs caches (the first pull)
#   skopeo copy to an OCI layout + umoci raw unpack + mkfs.ext4 -d
#     (pull-script.sh), target banger <= 1.2x
#   banger image pull of the same image again after image delete (layers
#     and the built rootfs cached), target <= 0.2x of the first
#
# The image and the guest packages are fetched outside the namespace (they
# need the Debian mirror); nothing inside it reaches further than loopback.
# The caller owns WORK; this script removes its namespace, registry and
# daemon itself.
set -euo pipefail
work=$1 bin=$2 runs=$3
repo=$(cd "$(dirname "$0")/.." && pwd)
bt=$bin/benchtool
banger=$bin/banger
ns=bpull-$$
g=$work/pull
mkdir -p "$g"

for tool in docker-registry skopeo umoci mkfs.ext4; do
  if ! command -v "$tool" >/dev/null; then
    echo "pull: skipped ($tool is not installed; scripts/host-deps.sh installs it)"
    exit 0
  fi
done

export BANGER_STATE_DIR=$g/s BANGER_RUN_DIR=$g/r BANGER_CONFIG=/dev/null
export BANGER_NETWORK=off BANGER_VMM=firecracker BANGER_FIRECRACKER_BIN=$bin/fc-double BANGER_CONFINE=off
unset BANGER_SOCKET
export BANGER_IMAGE_CACHE_DIR=${BANGER_IMAGE_CACHE_DIR:-/var/cache/banger/debs}

inns() { nsenter --net=/run/netns/"$ns" "$@"; }
regpid=""
cleanup() {
  set +e
  if ip netns list 2>/dev/null | grep -qw "$ns"; then
    inns "$banger" daemon stop >/dev/null 2>&1
    [ -z "$regpid" ] || { kill "$regpid" 2>/dev/null; wait "$regpid" 2>/dev/null; }
    ip netns del "$ns"
  fi
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }

say "pull: building the image from Debian packages (outside the namespace)"
"$bt" ociimage -o "$g/layout" -packages python3 -layers 6 -debs "$BANGER_IMAGE_CACHE_DIR"

ip netns add "$ns"
ip -n "$ns" link set lo up
addr=127.0.0.1:5099
ref=$addr/py:1
cat >"$g/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $g/registry
http:
  addr: $addr
YML
inns docker-registry serve "$g/registry.yml" >"$g/registry.log" 2>&1 &
regpid=$!
inns "$bt" waitport -addr "$addr" -timeout 20s
inns skopeo copy -q --dest-tls-verify=false "oci:$g/layout:1" "docker://$ref"

# Pulls need a default image for its kernel; the Firecracker double's
# binary serves (nothing boots here).
mkfs.ext4 -q -F "$g/base.ext4" 32M
inns "$banger" image import --name base --kernel "$bin/fc-double" --rootfs "$g/base.ext4" >/dev/null

printf '%s\n' "$banger image delete pf-\$1 >/dev/null && rm -rf $BANGER_STATE_DIR/oci-cache" >"$g/after-first.sh"
say "13. image pull of a ~100 MB image from a local registry vs skopeo + umoci + mkfs.ext4"
inns "$bt" time -n "$runs" -warmup 0 -label "banger image pull (first: caches empty)" -save "$g/p_first" \
  -after "bash $g/after-first.sh {i}" -- "$banger" image pull "$ref" --name pf-{i}
inns "$bt" time -n "$runs" -warmup 0 -label "skopeo copy + umoci raw unpack + mkfs.ext4 -d" -save "$g/p_script" \
  -after "rm -rf $g/script" -- bash "$repo/bench/pull-script.sh" "$ref" "$g/script"
"$bt" ratio -label "first pull banger/script" -num "$g/p_first" -den "$g/p_script" -target 1.2
inns "$banger" image pull "$ref" --name pw >/dev/null
inns "$banger" image delete pw >/dev/null
inns "$bt" time -n "$runs" -warmup 0 -label "banger image pull (again, after image delete)" -save "$g/p_again" \
  -after "$banger image delete ps-{i}" -- "$banger" image pull "$ref" --name ps-{i}
"$bt" ratio -label "second pull/first pull" -num "$g/p_again" -den "$g/p_first" -target 0.2
inns "$banger" image pull "$ref" --name pv >"$g/again.out"
grep -q "rootfs from the cache" "$g/again.out" || { echo "pull: the second pull did not use the rootfs cache:" >&2; cat "$g/again.out" >&2; exit 1; }
