package e2e

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// TestForkAndSnapshot forks a running guest into four clones and makes a VM
// from a named snapshot: each clone carries the source's memory (mapped
// copy-on-write from one sealed memfd all four share) and disks, yet has its
// own hostname, address, SSH host key and disk; the source goes on running.
func TestForkAndSnapshot(t *testing.T) {
	requireSuite(t)
	const name = "e2e-fork"
	runVM(t, name)
	// The key dropbear serves: the runtime copy on tmpfs (a clone's agent
	// replaces that copy only; the host writes it to the clone's disk
	// before its next cold boot).
	hostKey := "dropbearkey -y -f /run/banger/dropbear_ed25519_host_key | grep ^ssh-"
	diskKey := "dropbearkey -y -f /etc/dropbear/dropbear_ed25519_host_key | grep ^ssh-"
	mustBanger(t, "vm", "exec", name, "--", "sh", "-c", "echo in-memory >/tmp/mark && echo on-disk >/root/mark && sync")
	srcKey := strings.TrimSpace(mustBanger(t, "vm", "exec", name, "--", "sh", "-c", hostKey))
	srcIP := showVM(t, name).Runtime.GuestIP
	// A session running at the fork goes on only in the source.
	mustBanger(t, "vm", "session", "start", name, "--name", "ticker", "--", "sh", "-c", "while :; do echo tick; sleep 0.3; done", "forkmark")
	running := "ps -o args | grep -c '[f]orkmark' || true"

	start := time.Now()
	out := mustBanger(t, "vm", "fork", name, "--count", "4")
	t.Logf("TIMING fork of 4 %s", time.Since(start).Round(time.Millisecond))
	clones := strings.Fields(out)
	if len(clones) != 4 {
		t.Fatalf("vm fork printed %q, want four names", out)
	}
	deleteAtEnd(t, clones...)

	ips := map[string]string{srcIP: name}
	guestRAM := map[string]string{} // memfd inode -> clone
	for _, c := range clones {
		vm := showVM(t, c)
		guestRAM[sharedGuestRAM(t, vm.ID)] = c
		if vm.Runtime.State != "running" {
			t.Errorf("clone %s is %s, want running", c, vm.Runtime.State)
		}
		if other, dup := ips[vm.Runtime.GuestIP]; dup {
			t.Errorf("clone %s has the address %s of %s", c, vm.Runtime.GuestIP, other)
		}
		ips[vm.Runtime.GuestIP] = c
		got := mustBanger(t, "vm", "exec", c, "--", "sh", "-c", "hostname; cat /tmp/mark /root/mark; ip -4 -o addr show dev eth0; grep ^127.0.1.1 /etc/hosts")
		lines := strings.Split(strings.TrimSpace(got), "\n")
		if len(lines) < 5 || lines[0] != c || lines[1] != "in-memory" || lines[2] != "on-disk" || !strings.Contains(lines[3], " "+vm.Runtime.GuestIP+"/") ||
			lines[4] != "127.0.1.1\t"+c {
			t.Errorf("clone %s: got %q; want its own hostname, the source's memory and disk, its address %s and its name in /etc/hosts", c, got, vm.Runtime.GuestIP)
		}
		if key := strings.TrimSpace(mustBanger(t, "vm", "exec", c, "--", "sh", "-c", hostKey)); key == "" || key == srcKey {
			t.Errorf("clone %s kept the source's SSH host key", c)
		}
	}
	// The four clones' QEMUs map one sealed memfd, privately, as their RAM.
	if len(guestRAM) != 1 {
		t.Errorf("the clones map %d different guest RAM memfds, want one for all: %v", len(guestRAM), guestRAM)
	}
	// The source's session: listed as forked in a clone, not running there,
	// still running in the source.
	if s := sessions(t, clones[0])["ticker"]; s.Status != "forked" {
		t.Errorf("session ticker in clone %s: %+v, want forked", clones[0], s)
	}
	if n := strings.TrimSpace(mustBanger(t, "vm", "exec", clones[0], "--", "sh", "-c", running)); n != "0" {
		t.Errorf("the source's session runs in clone %s (%s processes)", clones[0], n)
	}
	if out := mustBanger(t, "vm", "session", "logs", clones[0], "ticker"); !strings.Contains(out, "tick") {
		t.Errorf("forked session's logs in the clone: %q", out)
	}
	if s := sessions(t, name)["ticker"]; s.Status != "running" {
		t.Errorf("session ticker in the source after the fork: %+v, want running", s)
	}
	if n := strings.TrimSpace(mustBanger(t, "vm", "exec", name, "--", "sh", "-c", running)); n == "0" {
		t.Error("the source's session stopped running after the fork")
	}
	// Disks are copies: a write in one clone is not seen anywhere else.
	mustBanger(t, "vm", "exec", clones[0], "--", "sh", "-c", "echo mine >/root/only; sync")
	for _, other := range []string{clones[1], clones[3], name} {
		if _, _, code := banger(t, "vm", "exec", other, "--", "test", "-e", "/root/only"); code == 0 {
			t.Errorf("%s sees a file written in %s", other, clones[0])
		}
	}
	if h := strings.TrimSpace(mustBanger(t, "vm", "exec", name, "--", "hostname")); h != name {
		t.Errorf("source hostname after the fork = %q", h)
	}
	// The fork's temporary snapshot is gone.
	if out := mustBanger(t, "snapshot", "list"); strings.Contains(out, "fork-") {
		t.Errorf("snapshot list after a fork:\n%s", out)
	}

	// A named snapshot, a VM made from it, and its deletion once no
	// unstarted VM needs it.
	mustBanger(t, "vm", "snapshot", name, "--as", "e2e-snap")
	t.Cleanup(func() { banger(t, "snapshot", "delete", "e2e-snap") })
	mustBanger(t, "vm", "create", "--name", "e2e-from", "--from", "e2e-snap")
	deleteAtEnd(t, "e2e-from")
	if _, errOut, code := banger(t, "snapshot", "delete", "e2e-snap"); code == 0 || !strings.Contains(errOut, "e2e-from") {
		t.Errorf("snapshot delete while e2e-from needs it: exit %d, %q", code, errOut)
	}
	mustBanger(t, "vm", "start", "e2e-from")
	if got := strings.TrimSpace(mustBanger(t, "vm", "exec", "e2e-from", "--", "sh", "-c", "hostname; cat /tmp/mark")); got != "e2e-from\nin-memory" {
		t.Errorf("vm from a snapshot: %q", got)
	}
	// vm run --from: a sandbox from the snapshot in one command, deleted after.
	if got := strings.TrimSpace(mustBanger(t, "vm", "run", "--from", "e2e-snap", "--", "cat", "/tmp/mark")); got != "in-memory" {
		t.Errorf("vm run --from: %q", got)
	}
	mustBanger(t, "snapshot", "delete", "e2e-snap")
	fromKey := strings.TrimSpace(mustBanger(t, "vm", "exec", "e2e-from", "--", "sh", "-c", hostKey))
	if fromKey == "" || fromKey == srcKey {
		t.Errorf("e2e-from serves %q, want its own key", fromKey)
	}
	// A restart of a VM made from a snapshot boots from its own disks, with
	// the host key it was given (the host wrote it to its disk: the SSH
	// connections here check it against the pin).
	mustBanger(t, "vm", "restart", "e2e-from")
	mustBanger(t, "vm", "run", "--name", "e2e-from", "--", "true") // wait for ssh
	if got := strings.TrimSpace(mustBanger(t, "vm", "exec", "e2e-from", "--", "sh", "-c", "hostname; cat /root/mark; test -e /tmp/mark || echo cold")); got != "e2e-from\non-disk\ncold" {
		t.Errorf("vm from a snapshot after a restart: %q", got)
	}
	for _, k := range []string{hostKey, diskKey} {
		if got := strings.TrimSpace(mustBanger(t, "vm", "exec", "e2e-from", "--", "sh", "-c", k)); got != fromKey {
			t.Errorf("after a restart, %q gives %q, want the key given at the restore %q", k, got, fromKey)
		}
	}
}

// sharedGuestRAM returns the inode of the memfd VM id's QEMU maps privately
// as its guest RAM (a clone sharing its snapshot's memory), failing the
// test if it maps none.
func sharedGuestRAM(t *testing.T, id string) string {
	t.Helper()
	p, ok := system.FindProcess(func(argv []string) bool { return system.ArgvHasPair(argv, "-name", "banger-"+id) })
	if !ok {
		t.Fatalf("no qemu process for vm %s", id)
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.PID))
	if err != nil {
		t.Fatal(err)
	}
	// address perms offset dev inode path
	m := regexp.MustCompile(`(?m)^\S+ r[w-]-p \S+ \S+ (\d+) +/memfd:banger-guest-ram`).FindSubmatch(maps)
	if m == nil {
		t.Fatalf("qemu of vm %s maps no private memfd:banger-guest-ram", id)
	}
	return string(m[1])
}
