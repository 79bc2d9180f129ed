package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// TestSuspendResume: a suspended guest's VMM is gone (its RAM freed); after
// resume a counting loop started before goes on where it was, the same
// session still runs, and the guest clock is corrected to the host's after
// 30 s suspended.
func TestSuspendResume(t *testing.T) {
	requireSuite(t)
	const name = "e2e-sus"
	runVM(t, name)
	mustBanger(t, "vm", "session", "start", name, "--name", "count", "--", "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i >>/root/count; sleep 0.2; done")
	// 64 MiB of guest memory touched (the guest's /tmp is in its RAM).
	mustBanger(t, "vm", "exec", name, "--", "dd", "if=/dev/urandom", "of=/tmp/fill", "bs=1M", "count=64")
	time.Sleep(2 * time.Second)
	before := showVM(t, name)
	p, ok := qemuFor(before.Runtime.APISockPath)
	if !ok {
		t.Fatal("no qemu")
	}
	usage, err := system.ReadProcUsage(p.PID)
	if err != nil || usage.RSSBytes < 64<<20 {
		t.Fatalf("qemu RSS %d bytes (%v) before suspend, want at least the 64 MiB the guest touched", usage.RSSBytes, err)
	}
	availBefore, _ := system.MemAvailable()
	start := time.Now()
	mustBanger(t, "vm", "suspend", name)
	t.Logf("TIMING suspend %s", time.Since(start).Round(time.Millisecond))
	if p.Alive() {
		t.Error("qemu still runs while suspended")
	}
	// The host got the VMM's memory back (noisy: other processes move too).
	availAfter, _ := system.MemAvailable()
	t.Logf("suspend freed qemu's %d MiB RSS; host MemAvailable %+d MiB", usage.RSSBytes>>20, (availAfter-availBefore)>>20)
	if st := showVM(t, name).Runtime.State; st != "suspended" {
		t.Fatalf("state %s, want suspended", st)
	}
	time.Sleep(30 * time.Second) // the guest clock must be corrected after a long suspension
	start = time.Now()
	mustBanger(t, "vm", "resume", name)
	resumed := time.Since(start)
	out := mustBanger(t, "vm", "exec", name, "--", "sh", "-c", "tail -n1 /root/count; date +%s")
	t.Logf("TIMING resume %s, to first exec %s", resumed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	lines := strings.Fields(out)
	if len(lines) != 2 {
		t.Fatalf("exec output %q", out)
	}
	n, _ := strconv.Atoi(lines[0])
	if n < 5 {
		t.Errorf("counter at %d after resume: the loop did not survive", n)
	}
	guestNow, _ := strconv.ParseInt(lines[1], 10, 64)
	if d := time.Now().Unix() - guestNow; d > 2 || d < -2 {
		t.Errorf("guest clock %d s off the host's after resume", d)
	}
	time.Sleep(time.Second)
	out2 := strings.TrimSpace(mustBanger(t, "vm", "exec", name, "--", "tail", "-n1", "/root/count"))
	if m, _ := strconv.Atoi(out2); m <= n {
		t.Errorf("counter stuck at %d after resume", m)
	}
	// The whole file counts up by one from 1: nothing lost, nothing repeated.
	all := strings.Fields(mustBanger(t, "vm", "exec", name, "--", "cat", "/root/count"))
	for i, s := range all {
		if s != strconv.Itoa(i+1) {
			t.Fatalf("line %d of the count is %q", i+1, s)
		}
	}
	if ss := sessions(t, name); ss["count"].Status != "running" {
		t.Errorf("session after resume: %+v", ss["count"])
	}
	// exec on a suspended VM resumes it.
	mustBanger(t, "vm", "suspend", name)
	if out := mustBanger(t, "vm", "exec", name, "--", "cat", "/etc/hostname"); out != name+"\n" {
		t.Errorf("exec on a suspended vm: %q", out)
	}
}
