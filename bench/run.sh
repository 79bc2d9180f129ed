#!/usr/bin/env bash
# bench/run.sh: banger's speed and memory benchmarks. Prints figures, the
# target and PASS/MISS as information; it fails only when a benchmark cannot
# run. See bench/README.md.
#
#   bench/run.sh [SECTION...]     sections: list create lifecycle confine reconcile exec boot confineboot forward snap suspend pull (default: all)
#
# Every section runs its own isolated daemon (BANGER_STATE_DIR/RUN_DIR under
# one temp dir, config /dev/null, networking off except for real guests) and
# everything is removed at the end: daemons stopped, VMMs killed, temp dirs
# gone. The real-guest sections (exec, boot, confineboot, forward, snap,
# suspend) need root and QEMU; they boot one guest at a time inside a
# network namespace made for them.
#
# Knobs: BENCH_VMS (10000), BENCH_RUNS (30), BENCH_RECONCILE_VMS (200),
# BENCH_BOOTS (5), BENCH_PULLS (5), BANGER_IMAGE_CACHE_DIR (Debian package cache for the
# real-guest image build).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(list create lifecycle confine reconcile exec boot confineboot forward snap suspend pull)
VMS=${BENCH_VMS:-10000}
RUNS=${BENCH_RUNS:-30}
REC_VMS=${BENCH_RECONCILE_VMS:-200}
BOOTS=${BENCH_BOOTS:-5}

work=$(mktemp -d /tmp/bbXXXX) # short: unix socket paths live under it
bin=$work/bin
ns=""
envs=()

say() { printf '\n== %s\n' "$*"; }

# use_env NAME: point banger at the isolated daemon NAME (created on first use).
use_env() {
  export BANGER_STATE_DIR=$work/$1/s BANGER_RUN_DIR=$work/$1/r
  export BANGER_CONFIG=/dev/null BANGER_NETWORK=off BANGER_VMM=firecracker
  export BANGER_FIRECRACKER_BIN=$bin/fc-double BANGER_ROOT_DISK_METHOD=copy
  export BANGER_SUBNET=10.200.0.0/16 # room for 10,000 addresses
  export BANGER_CONFINE=${BENCH_CONFINE:-off} # the confine section measures confinement itself
  unset BANGER_SOCKET BANGER_ACCEL
  case " ${envs[*]-} " in *" $1 "*) ;; *) envs+=("$1") ;; esac
}

# kill_ours: SIGKILL any process still running a binary or socket under
# $work (fc-double and QEMU VMMs that outlived a daemon), by PID.
kill_ours() {
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" != "$$" ] || continue
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF "$work/"; then
      kill -9 "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

cleanup() {
  set +e
  local e
  for e in "${envs[@]-}"; do
    [ -n "$e" ] || continue
    use_env "$e"
    if [ -S "$BANGER_RUN_DIR/bangerd.sock" ]; then
      if [ -n "$ns" ] && [ "$e" = guest ]; then
        for v in $(nsenter --net=/run/netns/"$ns" "$bin/banger" vm list -q 2>/dev/null); do
          nsenter --net=/run/netns/"$ns" "$bin/banger" vm delete --force "$v" >/dev/null 2>&1
        done
        nsenter --net=/run/netns/"$ns" "$bin/banger" daemon stop >/dev/null 2>&1
      else
        "$bin/banger" daemon stop >/dev/null 2>&1
      fi
    fi
  done
  kill_ours
  if [ -n "$ns" ]; then ip netns del "$ns" 2>/dev/null; fi
  rm -rf "$work"
}
trap cleanup EXIT

say "building into $work/bin"
go build -o "$bin/" ./cmd/banger ./cmd/bangerd ./cmd/banger-jail ./cmd/fc-double ./bench/cmd/benchtool
go build -tags netgo,osusergo -ldflags "-s -w" -o "$bin/" ./cmd/banger-agent
bt=$bin/benchtool
banger=$bin/banger

# The Firecracker double boots nothing: any x86-64 ELF is a kernel for it
# (the double's own binary), and the rootfs is a small ext4 image.
kernel=$bin/fc-double
rootfs=$work/rootfs.ext4
mkfs.ext4 -q -F "$rootfs" 32M

import_double_image() { "$banger" image import --name base --kernel "$kernel" --rootfs "$rootfs" >/dev/null; }

echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"

for s in "${sections[@]}"; do
  case $s in
  list)
    say "1+2. vm list -o json and daemon memory with $VMS VMs recorded"
    use_env big
    import_double_image
    "$bt" seed -n "$VMS"
    pid=$(cat "$BANGER_STATE_DIR/bangerd.lock")
    "$bt" rss -pid "$pid" -label "bangerd VmRSS after seeding"
    "$bt" time -n "$RUNS" -label "vm list -o json ($VMS VMs)" -target 40ms -- "$banger" vm list -o json
    sleep 0.3 # the freed heap goes back to the OS in the background
    "$bt" rss -pid "$pid" -label "bangerd VmRSS after list ($VMS VMs)" -target-mib 40
    grep VmHWM "/proc/$pid/status" | awk '{printf "%-44s %.1f MiB (peak)\n", "bangerd VmHWM", $2/1024}'
    "$bt" time -n "$RUNS" -label "vm list, table ($VMS VMs)" -- "$banger" vm list
    "$bt" time -n "$RUNS" -label "vm create ($VMS VMs recorded)" -target 20ms -- "$banger" vm create --name more-{i}
    "$banger" daemon stop >/dev/null
    ;;
  create)
    say "3. vm create, daemon running, small store"
    use_env small
    import_double_image
    "$bt" time -n "$RUNS" -label "vm create" -target 20ms -- "$banger" vm create --name c-{i}
    "$bt" time -n "$RUNS" -label "banger version (CLI + one round trip)" -- "$banger" version
    "$banger" daemon stop >/dev/null
    ;;
  lifecycle)
    say "4. create+start+stop+delete with the Firecracker double, copy root disks"
    use_env life
    import_double_image
    lb=$repo/bench/lifecycle-banger.sh
    ls=$repo/bench/lifecycle-script.sh
    n=$((RUNS < 20 ? 20 : RUNS))
    for par in 1 10; do
      "$bt" time -n "$n" -parallel "$par" -label "banger lifecycle (8G root disk) x$par" -save "$work/b$par" -- bash "$lb" "$banger" p$par-{i}
      "$bt" time -n "$n" -parallel "$par" -label "script lifecycle (8G root disk) x$par" -save "$work/s$par" -- bash "$ls" "$kernel" "$kernel" "$rootfs" "$work/script" p$par-{i}
      "$bt" ratio -label "lifecycle banger/script x$par" -num "$work/b$par" -den "$work/s$par" -target 1.5
      # banger grows the copied ext4 to the disk size (e2fsck + resize2fs);
      # the script only truncates. With the disk at the rootfs size neither grows.
      "$bt" time -n "$n" -parallel "$par" -label "banger lifecycle (root disk = rootfs) x$par" -save "$work/bs$par" -- bash "$lb" "$banger" q$par-{i} --disk-size 32M
      "$bt" time -n "$n" -parallel "$par" -label "script lifecycle (root disk = rootfs) x$par" -save "$work/ss$par" -- bash "$ls" "$kernel" "$kernel" "$rootfs" "$work/script" q$par-{i} 32M
      "$bt" ratio -label "lifecycle banger/script, no grow x$par" -num "$work/bs$par" -den "$work/ss$par" -target 1.5
    done
    "$banger" daemon stop >/dev/null
    ;;
  confine)
    say "4b. create+start+stop+delete confined (own uid, cgroup, jail) vs --unconfined, same daemon, double, copy disks"
    if [ "$(id -u)" != 0 ]; then
      echo "skipped: confinement needs root"
      continue
    fi
    BENCH_CONFINE=on use_env conf
    import_double_image
    lb=$repo/bench/lifecycle-banger.sh
    n=$((RUNS < 20 ? 20 : RUNS))
    # Alternate blocks so drift in the machine's speed hits both sides.
    for round in 1 2; do
      "$bt" time -n $((n / 2)) -label "confined lifecycle, round $round" -save "$work/con$round" -- bash "$lb" "$banger" con$round-{i} --disk-size 32M
      "$bt" time -n $((n / 2)) -label "unconfined lifecycle, round $round" -save "$work/unc$round" -- bash "$lb" "$banger" unc$round-{i} --disk-size 32M --unconfined
      "$bt" ratio -label "lifecycle confined/unconfined, round $round" -num "$work/con$round" -den "$work/unc$round" -target 1.15
    done
    "$banger" daemon stop >/dev/null
    ;;
  reconcile)
    say "5. startup reconcile with $REC_VMS VMs recorded running (half alive, half dead)"
    use_env rec
    import_double_image
    "$bt" reconcile -bangerd "$bin/bangerd" -n "$REC_VMS" -rounds 3
    "$banger" daemon stop >/dev/null
    ;;
  exec | boot | confineboot | forward | snap | suspend)
    if [ "$(id -u)" -ne 0 ] || ! command -v qemu-system-x86_64 >/dev/null || ! command -v ssh >/dev/null; then
      say "$s: skipped (needs root, qemu-system-x86_64 and the OpenSSH client)"
      continue
    fi
    "$repo/bench/guest.sh" "$s" "$work" "$bin" "$BOOTS" "$RUNS"
    ;;
  pull)
    if [ "$(id -u)" -ne 0 ]; then
      say "pull: skipped (needs root: a network namespace for the registry, owners in the unpacked tree)"
      continue
    fi
    "$repo/bench/pull.sh" "$work" "$bin" "${BENCH_PULLS:-5}"
    ;;
  *)
    echo "unknown section $s (want list create lifecycle confine reconcile exec boot confineboot forward snap suspend pull)" >&2
    exit 2
    ;;
  esac
done
