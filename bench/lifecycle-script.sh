#!/usr/bin/env bash
# The same lifecycle as lifecycle-banger.sh done by hand, the baseline banger
# is compared with: copy the rootfs (sparse) and size it, make an ext4 work
# disk, start the VMM with an API socket, configure and boot it with curl,
# Ctrl-Alt-Del, wait for the exit, remove the files. No tap, no ip commands
# (the banger side runs with networking off too).
# Usage: lifecycle-script.sh FIRECRACKER KERNEL ROOTFS DIR NAME [DISK_SIZE]
set -euo pipefail
fc=$1 kernel=$2 rootfs=$3 dir=$4/$5 name=$5 size=${6:-8G}
mkdir -p "$dir"
cp --sparse=always "$rootfs" "$dir/root.img"
truncate -s "$size" "$dir/root.img"
truncate -s 4G "$dir/work.ext4"
mkfs.ext4 -q -F -L work -E root_owner=0:0,lazy_journal_init=1 "$dir/work.ext4"
sock=$dir/api.sock
"$fc" --api-sock "$sock" --id "$name" >"$dir/console.log" 2>&1 &
pid=$!
until curl -sf --unix-socket "$sock" http://localhost/ >/dev/null 2>&1; do sleep 0.005; done
put() { curl -sf -X PUT --unix-socket "$sock" "http://localhost$1" -H 'Content-Type: application/json' -d "$2" >/dev/null; }
put /machine-config '{"vcpu_count":2,"mem_size_mib":1024}'
put /boot-source "{\"kernel_image_path\":\"$kernel\",\"boot_args\":\"console=ttyS0 reboot=k panic=1\"}"
put /drives/rootfs "{\"drive_id\":\"rootfs\",\"path_on_host\":\"$dir/root.img\",\"is_root_device\":true,\"is_read_only\":false}"
put /drives/work "{\"drive_id\":\"work\",\"path_on_host\":\"$dir/work.ext4\",\"is_root_device\":false,\"is_read_only\":false}"
put /actions '{"action_type":"InstanceStart"}'
put /actions '{"action_type":"SendCtrlAltDel"}'
wait "$pid" || true
rm -rf "$dir"
