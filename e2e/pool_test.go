package e2e

import (
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"
)

// TestPool: a warm pool keeps paused clones of a snapshot; vm run --pool
// claims one (renamed when asked), which is then an ordinary VM with the
// snapshot's memory, its own name and a correct clock; the pool refills,
// also after bangerd is killed while it refills; deleting the pool removes
// its members and not the VMs claimed from it.
func TestPool(t *testing.T) {
	requireSuite(t)
	const src, snap, pool = "e2e-pool-src", "e2e-pool-snap", "e2e-pool"
	runVM(t, src)
	mustBanger(t, "vm", "exec", src, "--", "sh", "-c", "echo in-memory >/tmp/mark")
	mustBanger(t, "vm", "snapshot", src, "--as", snap)
	t.Cleanup(func() {
		banger(t, "pool", "delete", pool)
		banger(t, "snapshot", "delete", snap)
	})
	deleteAtEnd(t, src, "e2e-claimed")

	// Bad input: nothing made.
	for _, bad := range [][]string{
		{"pool", "create", pool, "--from", snap, "--size", "0"},
		{"pool", "create", pool, "--from", snap, "--size", "1000"},
		{"pool", "create", pool, "--from", "nosuch", "--size", "1"},
		{"pool", "create", "bad/name", "--from", snap, "--size", "1"},
	} {
		if _, errOut, code := banger(t, bad...); code == 0 || errOut == "" {
			t.Errorf("banger %s: exit %d, %q; want a clear error", strings.Join(bad, " "), code, errOut)
		}
	}
	if out := mustBanger(t, "pool", "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("pool list after refused creates: %q", out)
	}

	start := time.Now()
	mustBanger(t, "pool", "create", pool, "--from", snap, "--size", "2", "--wait", "--timeout", "5m")
	t.Logf("TIMING pool of 2 ready in %s", time.Since(start).Round(time.Millisecond))
	if _, errOut, code := banger(t, "pool", "create", pool, "--from", snap, "--size", "1"); code == 0 || !strings.Contains(errOut, "exists") {
		t.Errorf("second pool create: exit %d, %q", code, errOut)
	}
	if _, errOut, code := banger(t, "snapshot", "delete", snap); code == 0 || !strings.Contains(errOut, pool) {
		t.Errorf("snapshot delete while a pool uses it: exit %d, %q", code, errOut)
	}
	p := getPool(t, pool)
	if p.Ready != 2 || len(p.Members) != 2 {
		t.Fatalf("pool after --wait: %+v; want 2 ready members", p)
	}
	if out := mustBanger(t, "vm", "list"); strings.Count(out, " pool "+pool+" ") != 2 {
		t.Errorf("vm list does not show the 2 members as pool members:\n%s", out)
	}
	for _, m := range p.Members {
		vm := showVM(t, m)
		if vm.Spec.Options.Pool != pool || vm.Live == nil || !vm.Live.Alive {
			t.Errorf("member %s: pool %q, live %+v", m, vm.Spec.Options.Pool, vm.Live)
		}
		// Paused: its clock stands still, and it refuses to be used.
		if _, errOut, code := banger(t, "vm", "exec", m, "--", "true"); code == 0 || !strings.Contains(errOut, "warm member") {
			t.Errorf("vm exec on member %s: exit %d, %q", m, code, errOut)
		}
	}

	// A claim under a name of ours.
	start = time.Now()
	got := strings.TrimSpace(mustBanger(t, "vm", "run", "--pool", pool, "--name", "e2e-claimed", "--keep", "--", "sh", "-c", "hostname; cat /tmp/mark; date +%s"))
	t.Logf("TIMING vm run --pool -- (claim + exec) %s", time.Since(start).Round(time.Millisecond))
	lines := strings.Split(got, "\n")
	if len(lines) != 3 || lines[0] != "e2e-claimed" || lines[1] != "in-memory" {
		t.Fatalf("claimed vm answered %q; want its new hostname and the snapshot's memory", got)
	}
	if sec, err := strconv.ParseInt(lines[2], 10, 64); err != nil || time.Since(time.Unix(sec, 0)).Abs() > 3*time.Second {
		t.Errorf("claimed vm's clock %q is off the host's (%d)", lines[2], time.Now().Unix())
	}
	// vm list (the daemon's list cache) follows the claim: new name, no
	// longer a member.
	if out := mustBanger(t, "vm", "list", "-q"); !strings.Contains(out, "e2e-claimed\n") || strings.Contains(out, p.Members[0]+"\n") {
		t.Errorf("vm list after claiming %s as e2e-claimed:\n%s", p.Members[0], out)
	}
	claimed := showVM(t, "e2e-claimed")
	if claimed.Spec.Options.Pool != "" || slices.Contains(getPool(t, pool).Members, "e2e-claimed") {
		t.Errorf("claimed vm is still a member: %+v", claimed.Spec.Options)
	}
	// Its new name resolves for the other guests.
	if out, _, _ := banger(t, "vm", "exec", src, "--", "sh", "-c", "ping -c1 -W2 e2e-claimed 2>&1 | head -1"); !strings.Contains(out, claimed.Runtime.GuestIP) {
		t.Errorf("e2e-claimed does not resolve to %s: %q", claimed.Runtime.GuestIP, out)
	}

	// The pool refills; kill -9 of bangerd while it does leaves nothing
	// half made: the next daemon deletes what was not ready and refills.
	time.Sleep(1500 * time.Millisecond) // into the refill's restore
	d := daemonPID()
	if d.PID == 0 {
		t.Fatal("no bangerd")
	}
	if err := d.Kill(5 * time.Second); err != nil {
		t.Fatalf("kill -9 bangerd: %v", err)
	}
	eventually(t, 4*time.Minute, "the pool refilled to 2 after the crash", func() (bool, string) {
		p := getPool(t, pool)
		return p.Ready == 2 && len(p.Members) == 2, p.LastError
	})
	// Every VMM belongs to a VM of the store: the crash leaked none.
	vms := listVMs(t)
	if n, want := countQEMUs(), len(vms); n != want {
		t.Errorf("%d qemu processes for %d vms after the crash and refill", n, want)
	}

	// A claim with the member's own name, deleted when its command ends.
	member := strings.TrimSpace(mustBanger(t, "vm", "run", "--pool", pool, "--", "hostname"))
	if !strings.HasPrefix(member, pool+"-") {
		t.Errorf("vm run --pool without --name ran in %q, want a member of %s", member, pool)
	}
	if _, _, code := banger(t, "vm", "show", member); code == 0 {
		t.Errorf("vm %s still exists after its vm run", member)
	}

	// Deleting the pool removes its members, not the claimed VM.
	members := getPool(t, pool).Members
	mustBanger(t, "pool", "delete", pool)
	for _, m := range members {
		if _, _, code := banger(t, "vm", "show", m); code == 0 {
			t.Errorf("member %s survived pool delete", m)
		}
	}
	if vm := showVM(t, "e2e-claimed"); vm.Live == nil || !vm.Live.Alive {
		t.Errorf("claimed vm after pool delete: %+v", vm.Live)
	}
	mustBanger(t, "snapshot", "delete", snap)
}

func getPool(t *testing.T, name string) client.Pool {
	t.Helper()
	var p client.Pool
	if err := json.Unmarshal([]byte(mustBanger(t, "pool", "show", name)), &p); err != nil {
		t.Fatalf("pool show %s: %v", name, err)
	}
	return p
}

func listVMs(t *testing.T) []client.VM {
	t.Helper()
	var vms []client.VM
	if err := json.Unmarshal([]byte(mustBanger(t, "vm", "list", "-o", "json")), &vms); err != nil {
		t.Fatalf("vm list: %v", err)
	}
	return vms
}

// countQEMUs counts the QEMU processes of the suite's daemon.
func countQEMUs() int {
	pids, _ := system.ListPIDs()
	n := 0
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err == nil && len(argv) > 0 && strings.Contains(argv[0], "qemu") && strings.Contains(strings.Join(argv, "\x00"), os.Getenv(runEnv)) {
			n++
		}
	}
	return n
}
