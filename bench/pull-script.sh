#!/usr/bin/env bash
# The pull benchmark's baseline: the same image by hand, as a container
# tool chain does it: skopeo copies it from the registry into a fresh OCI
# layout, umoci applies the layers, mkfs.ext4 -d writes the tree into an
# ext4 of the size banger's rule gives (the tree, plus a quarter, plus
# 32 MiB); the layout and the tree are removed, as banger removes its own.
# Usage: pull-script.sh REF DIR
set -euo pipefail
ref=$1 dir=$2
rm -rf "$dir"
mkdir -p "$dir"
skopeo copy -q --src-tls-verify=false "docker://$ref" "oci:$dir/layout:1"
umoci raw unpack --image "$dir/layout:1" "$dir/rootfs"
kib=$(du -s --block-size=1K "$dir/rootfs" | cut -f1)
files=$(find "$dir/rootfs" | wc -l)
size=$(((kib + files / 4) * 5 / 4 + 32 * 1024))
mkfs.ext4 -q -F -b 4096 -L root -d "$dir/rootfs" "$dir/rootfs.ext4" "${size}k"
rm -rf "$dir/layout" "$dir/rootfs"
