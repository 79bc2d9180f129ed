#!/usr/bin/env bash
# Real-guest benchmarks, called by run.sh as root: QEMU guests (TCG unless
# /dev/kvm works) in a network namespace made here, one guest at a time.
#
#   guest.sh exec|boot|confineboot|forward|snap|suspend WORK BIN BOOTS RUNS
#
#   exec: banger vm exec NAME -- true against a running guest, beside a plain
#         OpenSSH client with the daemon's key (ratio, target <= 1.3x).
#   boot: banger vm run -- true on a new VM, median of BOOTS, beside a bare
#         QEMU boot of the same kernel, initrd and a copy of the same root disk
#         to the same point (port 22 answering + one ssh command), target
#         <= 1.2x; and vm run -- true on the running VM.
#   confineboot: vm run -- true on a new VM confined (the default: own uid,
#         cgroup, banger-jail) beside --unconfined, in alternating pairs,
#         median of BOOTS each, target <= 1.05x; the start's steps and the
#         wait for SSH from the daemon's log; vm start alone (host side).
#   suspend: vm suspend of a 1 GiB guest with 0, 256 and 512 MiB of its RAM
#         touched (random bytes in its tmpfs /tmp): suspend time and state
#         file size, medians of BOOTS, and per GiB touched.
#   forward: TCP through a port forward (-p) to the guest beside a direct
#         connection to the guest: throughput to a guest that counts what
#         it received and answers after EOF (target >= 0.8x), and round trips
#         to a guest echo server.
#   snap: vm run --from SNAP -- true (a new VM restored from a snapshot of a
#         running guest) beside a cold vm run -- true on a new VM, target
#         <= 0.2x; vm fork --count 4 beside vm fork --count 1, target <= 2x;
#         vm exec on a suspended VM (resume + exec) beside the cold run,
#         target <= 0.15x; vm run --pool P -- true (a claim from a warm pool
#         of 2, refilled between runs) beside the cold run, target <= 0.05x.
#
# The image is built outside the namespace (it needs the Debian mirror). The
# caller (run.sh) owns WORK and removes it; this script removes its namespace,
# guests and daemon itself, so a run of only this section leaves nothing.
set -euo pipefail
what=$1 work=$2 bin=$3 boots=$4 runs=$5
repo=$(cd "$(dirname "$0")/.." && pwd)
bt=$bin/benchtool
banger=$bin/banger
ns=bbench-$$
g=$work/$what

export BANGER_STATE_DIR=$g/s BANGER_RUN_DIR=$g/r BANGER_CONFIG=/dev/null
export BANGER_VMM=qemu BANGER_ROOT_DISK_METHOD=copy BANGER_NETWORK=auto
export BANGER_SUBNET=172.31.250.0/24 BANGER_BRIDGE=bbench0
unset BANGER_FIRECRACKER_BIN BANGER_SOCKET
export BANGER_IMAGE_CACHE_DIR=${BANGER_IMAGE_CACHE_DIR:-/var/cache/banger/debs}
key=$BANGER_STATE_DIR/ssh/id_ed25519
sshopts=(-i "$key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes)

inns() { nsenter --net=/run/netns/"$ns" "$@"; } # the net namespace only: ip netns exec would hide the cgroup mounts confinement needs

cleanup() {
  set +e
  if ip netns list 2>/dev/null | grep -qw "$ns"; then
    for v in $(inns "$banger" vm list -q 2>/dev/null); do inns "$banger" vm delete --force "$v" >/dev/null 2>&1; done
    inns "$banger" daemon stop >/dev/null 2>&1
    ip netns del "$ns"
  fi
  "$banger" daemon stop >/dev/null 2>&1
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

say "$what: building the guest image outside the namespace"
start=$(date +%s.%N)
"$banger" image build --name default >/dev/null
"$banger" daemon stop >/dev/null
echo "image built in $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5)s"

ip netns add "$ns"
ip -n "$ns" link set lo up

say "$what: first boot of vm warm (untimed)"
inns "$banger" vm run --name warm -p 127.0.0.1:19400:9000 -p 127.0.0.1:19401:9001 -- true 2>&1 | grep -v '^warning' || true
inns "$banger" vm show warm -o json >"$g/warm.json"
ip=$(sed -n 's/.*"guest_ip": "\([^"]*\)".*/\1/p' "$g/warm.json" | head -1)
accel=$(sed -n 's/.*"accel": "\([^"]*\)".*/\1/p' "$g/warm.json" | head -1)
echo "guest $ip, accel $accel"

case $what in
exec)
  say "6. per-command overhead against a running guest ($accel)"
  inns "$bt" time -n "$runs" -label "banger vm exec warm -- true" -save "$g/e_banger" -- "$banger" vm exec warm -- true
  inns "$bt" time -n "$runs" -label "ssh -i <daemon key> root@guest true" -save "$g/e_ssh" -- ssh "${sshopts[@]}" "root@$ip" true
  "$bt" ratio -label "exec banger/ssh" -num "$g/e_banger" -den "$g/e_ssh" -target 1.3
  ;;
boot)
  say "7. boot to first SSH command ($accel)"
  inns "$bt" time -n "$runs" -warmup 1 -label "vm run -- true (VM already running)" -- "$banger" vm run --name warm -- true
  # The bare boot replays the exact QEMU command line banger used for warm,
  # on a fresh copy of warm's root disk, with its own QMP socket and console.
  pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$g/warm.json" | head -1)
  tr '\0' '\n' <"/proc/$pid/cmdline" >"$g/qemu.argv"
  vmdir=$(sed -n 's/.*"vm_dir": "\([^"]*\)".*/\1/p' "$g/warm.json" | head -1)
  inns "$banger" vm stop warm >/dev/null
  inns "$bt" time -n "$boots" -warmup 0 -label "vm run -- true (new VM, boot)" -save "$g/b_banger" \
    -after "$banger vm delete --force boot-{i}" -- "$banger" vm run --name boot-{i} -- true
  inns "$bt" time -n "$boots" -warmup 0 -label "bare qemu boot + ssh true" -save "$g/b_bare" \
    -- bash "$repo/bench/bare-boot.sh" "$bt" "$g/qemu.argv" "$vmdir/root.img" "$g/bare" "$ip" "$key" "$BANGER_BRIDGE"
  "$bt" ratio -label "boot banger/bare" -num "$g/b_banger" -den "$g/b_bare" -target 1.2
  ;;
snap)
  say "12. starts from a snapshot and forks ($accel)"
  inns "$banger" vm snapshot warm --as bsnap >/dev/null
  # Deletes every VM but warm and the pool's members (clones have generated names).
  printf '%s\n' "for v in \$($banger vm list -q); do case \$v in warm | bpool-*) ;; *) $banger vm delete --force \$v >/dev/null ;; esac; done" >"$g/clean.sh"
  inns "$bt" time -n "$boots" -warmup 0 -label "vm run -- true (new VM, cold boot)" -save "$g/s_cold" \
    -after "bash $g/clean.sh" -- "$banger" vm run --name cold-{i} -- true
  inns "$bt" time -n "$boots" -warmup 0 -label "vm run --from SNAP -- true (new VM, restored)" -save "$g/s_from" \
    -after "bash $g/clean.sh" -- "$banger" vm run --name from-{i} --from bsnap -- true
  "$bt" ratio -label "run from snapshot/cold" -num "$g/s_from" -den "$g/s_cold" -target 0.2
  # Where a restored run's time goes: the start's steps (the restore is the
  # vmm step, the agent's part identify) and the wait for SSH after it.
  "$bt" logstats -log "$BANGER_STATE_DIR/bangerd.log" -msg "vm started" -vm "from-" -label "start steps (from-*)"
  "$bt" logstats -log "$BANGER_STATE_DIR/bangerd.log" -msg "clone identity" -vm "from-" -label "identity: agent, host key (from-*)"
  "$bt" logstats -log "$BANGER_STATE_DIR/bangerd.log" -msg "guest ssh connected" -vm "from-" -label "start to ssh (from-*)"
  inns "$bt" time -n "$boots" -warmup 0 -label "vm fork warm --count 1" -save "$g/s_f1" \
    -after "bash $g/clean.sh" -- "$banger" vm fork warm --count 1
  inns "$bt" time -n "$boots" -warmup 0 -label "vm fork warm --count 4" -save "$g/s_f4" \
    -after "bash $g/clean.sh" -- "$banger" vm fork warm --count 4
  "$bt" ratio -label "fork 4/fork 1" -num "$g/s_f4" -den "$g/s_f1" -target 2
  # Resume: exec on a suspended VM resumes it first (clock stepped at once).
  inns "$banger" vm suspend warm >/dev/null
  inns "$bt" time -n "$boots" -warmup 0 -label "vm exec -- true on a suspended VM (resume + exec)" -save "$g/s_resume" \
    -after "$banger vm suspend warm" -- "$banger" vm exec warm -- true
  inns "$banger" vm resume warm >/dev/null
  "$bt" ratio -label "resume to first exec/cold" -num "$g/s_resume" -den "$g/s_cold" -target 0.15
  # A warm pool of 2; after each claim the next run waits for the refill.
  inns "$banger" pool create bpool --from bsnap --size 2 --wait >/dev/null
  printf '%s\n' "bash $g/clean.sh; until $banger pool show bpool | grep -q '\"ready\": 2,'; do sleep 0.2; done" >"$g/poolwait.sh"
  inns "$bt" time -n "$boots" -warmup 0 -label "vm run --pool P -- true (claimed from a warm pool)" -save "$g/s_pool" \
    -after "bash $g/poolwait.sh" -- "$banger" vm run --pool bpool --name pool-{i} -- true
  "$bt" ratio -label "run from a warm pool/cold" -num "$g/s_pool" -den "$g/s_cold" -target 0.05
  inns "$banger" pool delete bpool >/dev/null
  inns "$banger" snapshot delete bsnap >/dev/null
  ;;
confineboot)
  say "7b. boot to first SSH command, confined (the default) vs --unconfined ($accel)"
  inns "$banger" vm stop warm >/dev/null
  log=$BANGER_STATE_DIR/bangerd.log
  # Pairs alternate A B, B A, ... so drift in a loaded machine hits both.
  inns "$bt" pair -n "$boots" -label-a "vm run -- true, new VM, confined" -label-b "vm run -- true, new VM, --unconfined" \
    -label "boot confined/unconfined" -target 1.05 -save-a "$g/cb" -save-b "$g/ub" \
    -after-a "$banger vm delete --force cb-{i}" -after-b "$banger vm delete --force ub-{i}" \
    -b "$banger vm run --name ub-{i} --unconfined -- true" -- "$banger" vm run --name cb-{i} -- true
  # Where the time goes, from the daemon's log: the start (its steps) and
  # the wait for the guest's SSH after it.
  for p in cb ub; do
    "$bt" logstats -log "$log" -msg "vm started" -vm "$p-" -label "start steps ($p-*)"
    "$bt" logstats -log "$log" -msg "guest ssh connected" -vm "$p-" -label "boot to ssh after start ($p-*)"
  done
  # The host side alone: vm start (steps + VMM launch, no wait for the
  # guest) on a VM made just before, untimed.
  inns "$bt" pair -n $((boots * 2)) -label-a "vm start, confined" -label-b "vm start, --unconfined" -label "start confined/unconfined" \
    -before-a "$banger vm create --name cs-{i}" -after-a "$banger vm delete --force cs-{i}" \
    -before-b "$banger vm create --name us-{i} --unconfined" -after-b "$banger vm delete --force us-{i}" \
    -b "$banger vm start us-{i}" -- "$banger" vm start cs-{i}
  for p in cs us; do
    "$bt" logstats -log "$log" -msg "vm started" -vm "$p-" -label "start steps ($p-*)"
  done
  ;;
suspend)
  say "12b. suspend time and state file size by touched guest memory ($accel)"
  inns "$banger" vm stop warm >/dev/null
  mem=1024
  inns "$banger" vm run --name sus --memory $mem -- true
  inns "$banger" vm show sus -o json >"$g/sus.json"
  sdir=$(sed -n 's/.*"vm_dir": "\([^"]*\)".*/\1/p' "$g/sus.json" | head -1)/suspend
  log=$BANGER_STATE_DIR/bangerd.log
  # The guest's /tmp is RAM (tmpfs). Touched memory is written with a random
  # 1 MiB block repeated: QEMU saves a zero page as a flag, not its bytes.
  # Its default size is half the guest's RAM: room for 512 MiB is made.
  inns "$banger" vm exec sus -- sh -c 'mount -o remount,size=900m /tmp && grep " /tmp " /proc/mounts; dd if=/dev/urandom of=/tmp/block bs=1M count=1 2>/dev/null; : >/tmp/fill'
  # After each timed suspend: the state's size (every file the save left),
  # then a resume, untimed.
  printf '%s\n' "du -sb --apparent-size $sdir | cut -f1 >>$g/size.\$1; $banger vm resume sus" >"$g/after.sh"
  touched=0
  for want in 0 256 512; do
    if [ $want -gt $touched ]; then
      inns "$banger" vm exec sus -- sh -c "i=$touched; while [ \$i -lt $want ]; do cat /tmp/block; i=\$((i+1)); done >>/tmp/fill"
      touched=$want
    fi
    # What the guest really holds (a full tmpfs would stop short).
    inns "$banger" vm exec sus -- ls -l /tmp/fill | awk '{print $5}' >"$g/touched.$touched"
    echo "guest /tmp/fill: $(($(cat "$g/touched.$touched") >> 20)) MiB (+ the 1 MiB block)"
    off=$(stat -c %s "$log")
    inns "$bt" time -n "$boots" -warmup 0 -label "vm suspend, $touched MiB touched of $mem" -save "$g/sus$touched" \
      -after "bash $g/after.sh $touched" -- "$banger" vm suspend sus
    "$bt" logstats -log "$log" -offset "$off" -msg "vm suspended" -vm sus -label "  in the daemon ($touched MiB)"
    "$bt" logstats -log "$log" -offset "$off" -msg "vm resumed" -vm sus -label "  resume after it ($touched MiB)"
    sort -n "$g/size.$touched" | awk -v t=$touched '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%-44s median %.1f MB (%d bytes; min %.1f, max %.1f MB)\n", "  state file, " t " MiB touched", m/1e6, m, a[1]/1e6, a[NR]/1e6}' | tee "$g/sizeline.$touched"
    sort -n "$g/size.$touched" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}' >"$g/size.med.$touched"
  done
  # Per GiB of touched memory: the slope from 0 to 512 MiB touched.
  awk -v t0="$(cat "$g/sus0")" -v t5="$(cat "$g/sus512")" -v s0="$(cat "$g/size.med.0")" -v s5="$(cat "$g/size.med.512")" -v b="$(cat "$g/touched.512")" 'BEGIN {
    gib = b / 1073741824
    printf "%-44s %.0f ms per GiB touched (%.0f ms with none)\n", "suspend time", (t5 - t0) / 1e6 / gib, t0 / 1e6
    printf "%-44s %.0f MB per GiB touched (%.1f MB with none; %.3f bytes per byte touched)\n", "state file size", (s5 - s0) / 1e6 / gib, s0 / 1e6, (s5 - s0) / b }'
  inns "$banger" vm delete --force sus >/dev/null
  ;;
forward)
  say "forward: TCP through banger's port forward vs direct to the guest ($accel)"
  inns "$banger" vm exec warm -- sh -c 'printf "#!/bin/sh\nexec wc -c\n" > /tmp/count && chmod +x /tmp/count'
  inns "$banger" vm session start warm --name count -- sh -c 'while true; do nc -l -p 9000 -e /tmp/count; done' >/dev/null
  inns "$banger" vm session start warm --name echo -- sh -c 'while true; do nc -l -p 9001 -e /bin/cat; done' >/dev/null
  inns "$bt" tcp -direct "$ip:9000" -forward 127.0.0.1:19400 -echo-direct "$ip:9001" -echo-forward 127.0.0.1:19401 -rounds "$boots"
  ;;
esac
