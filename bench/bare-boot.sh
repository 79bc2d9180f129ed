#!/usr/bin/env bash
# A bare QEMU boot, the baseline of banger's boot benchmark: copy the root
# disk (sparse), make the tap (and a bridge with the gateway address), start
# QEMU with the command line banger used for the same VM (own QMP socket,
# console file and disk copy), wait for port 22, run one ssh command, then
# kill QEMU and remove everything. Run inside the benchmark's netns.
# Usage: bare-boot.sh BENCHTOOL ARGV_FILE ROOT_DISK DIR GUEST_IP SSH_KEY [BRIDGE]
# BRIDGE: an existing bridge to put the tap on (else one is made and removed).
set -euo pipefail
bt=$1 argvfile=$2 root=$3 dir=$4 ip=$5 key=$6 bridge=${7:-}
mkdir -p "$dir"
cp --sparse=always "$root" "$dir/root.img"
mapfile -t a <"$argvfile"
tap="" gw="" mask=""
for i in "${!a[@]}"; do
  case ${a[$i]} in
  id=root,file=*) a[$i]=$(sed "s#file=[^,]*#file=$dir/root.img#" <<<"${a[$i]}") ;;
  unix:*,server=on,wait=off) a[$i]="unix:$dir/qmp.sock,server=on,wait=off" ;;
  file:*) [ "${a[$((i - 1))]}" = -serial ] && a[$i]="file:$dir/console.log" ;;
  tap,*ifname=*) tap=$(sed 's/.*ifname=\([^,]*\).*/\1/' <<<"${a[$i]}") ;;
  esac
  if [[ ${a[$i]} == *" ip="* ]]; then
    IFS=: read -r _ _ gw mask _ <<<"$(sed 's/.* ip=\([^ ]*\).*/\1/' <<<"${a[$i]}")"
  fi
done
[ -n "$tap" ] && [ -n "$gw" ] || { echo "bare-boot: no tap or gateway in $argvfile" >&2; exit 1; }
bits=0
for o in ${mask//./ }; do
  while [ "$o" -gt 0 ]; do bits=$((bits + (o & 1))); o=$((o >> 1)); done
done
made=""
if [ -z "$bridge" ] || ! ip link show "$bridge" >/dev/null 2>&1; then
  bridge=bbare0 made=1
  ip link add "$bridge" type bridge
  ip addr add "$gw/$bits" dev "$bridge"
  ip link set "$bridge" up
fi
ip tuntap add "$tap" mode tap
ip link set "$tap" master "$bridge" up
"${a[@]}" >"$dir/qemu.log" 2>&1 &
pid=$!
status=0
"$bt" waitport -addr "$ip:22" || status=1
if [ $status -eq 0 ]; then
  ssh -i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes "root@$ip" true || status=1
fi
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
ip link del "$tap" 2>/dev/null || true
[ -z "$made" ] || ip link del "$bridge" 2>/dev/null || true
rm -rf "$dir"
exit $status
