#!/usr/bin/env bash
# Installs the host packages banger's tests and demo use, when missing.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || need+=(qemu-system-x86)
have mkfs.ext4 || need+=(e2fsprogs)
have debugfs || need+=(e2fsprogs)
have losetup || need+=(util-linux)
have ip || need+=(iproute2)
have unshare || need+=(util-linux)
have dpkg-deb || need+=(dpkg)
have nft || need+=(nftables)          # egress NAT (tested inside a private netns)
have debootstrap || need+=(debootstrap) # image build --base debian
have docker-registry || need+=(docker-registry) # a real OCI registry for the image pull tests (loopback, in a netns)
have skopeo || need+=(skopeo)         # pushes test images to that registry; pull benchmark baseline
have umoci || need+=(umoci)           # OCI unpack baseline for the pull benchmark
have apt-get || { echo "host-deps: not a Debian/Ubuntu host; install qemu-system-x86, e2fsprogs, iproute2 by hand" >&2; exit 0; }
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "host-deps: missing ${need[*]}; run as root (or install them) to continue" >&2
    exit 1
  fi
  echo "host-deps: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# apt-get download (image builds) needs package lists.
if [ "$(id -u)" -eq 0 ] && [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ]; then
  apt-get update -qq
fi
