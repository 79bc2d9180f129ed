package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/storage"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Real guests saved and restored: a suspend and resume of one VM, then two
// clones of it, one after the other (at most one guest runs at a time).
// Everything network happens in the test binary's private namespace.

const (
	snapBridge  = "bgqbr0"
	snapGateway = "172.30.0.1"
	suspendFor  = 10 * time.Second
)

// snapNet makes a bridge with the gateway address; taps are added per guest.
func snapNet(t *testing.T) func(tap string) {
	t.Helper()
	r := system.ExecRunner{}
	ctx := context.Background()
	run := func(args ...string) {
		t.Helper()
		if _, err := r.Run(ctx, "ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	run("link", "add", snapBridge, "type", "bridge")
	t.Cleanup(func() { _, _ = r.Run(ctx, "ip", "link", "del", snapBridge) })
	run("addr", "add", snapGateway+"/24", "dev", snapBridge)
	run("link", "set", snapBridge, "up")
	return func(tap string) {
		t.Helper()
		run("tuntap", "add", "dev", tap, "mode", "tap")
		t.Cleanup(func() { _, _ = r.Run(ctx, "ip", "link", "del", tap) })
		run("link", "set", tap, "master", snapBridge)
		run("link", "set", tap, "up")
	}
}

// setTap sets a test tap up or down.
func setTap(t *testing.T, tap, state string) {
	t.Helper()
	if _, err := (system.ExecRunner{}).Run(context.Background(), "ip", "link", "set", tap, state); err != nil {
		t.Fatal(err)
	}
}

// withGuestNet gives m a tap on the bridge and an address.
func withGuestNet(m vmm.Machine, tap, mac, ip string) vmm.Machine {
	m.TapDevice, m.GuestMAC, m.GuestIP = tap, mac, ip
	m.GatewayIP, m.Netmask = snapGateway, "255.255.255.0"
	return m
}

// authorize puts the test's SSH key into m's root disk, as the daemon does.
func authorize(t *testing.T, m vmm.Machine, signer ssh.Signer) {
	t.Helper()
	sm := &storage.Manager{Runner: system.ExecRunner{}, Method: storage.MethodCopy}
	err := sm.InjectFiles(context.Background(), m.RootDisk, []storage.File{
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: ssh.MarshalAuthorizedKey(signer.PublicKey())},
	})
	if err != nil {
		t.Fatal(err)
	}
}

// cloneMachine is src's machine for another VM with copies of disks.
func cloneMachine(t *testing.T, src vmm.Machine, id, name, root, work string) vmm.Machine {
	t.Helper()
	dir := t.TempDir()
	m := src
	m.ID, m.Name = id, name
	m.RootDisk, m.WorkDisk = filepath.Join(dir, "root.ext4"), filepath.Join(dir, "work.ext4")
	for from, to := range map[string]string{root: m.RootDisk, work: m.WorkDisk} {
		if _, err := (system.ExecRunner{}).Run(context.Background(), "cp", "--sparse=always", from, to); err != nil {
			t.Fatal(err)
		}
	}
	m.APISock = filepath.Join(dir, "qmp.sock")
	m.AgentSock = ""
	m.ConsoleLog = filepath.Join(dir, "console.log")
	m.Incoming = nil
	return m
}

func waitConsole(t *testing.T, m vmm.Machine, marker string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(m.ConsoleLog)
		if strings.Contains(string(b), marker) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console within %s:\n%s", marker, limit, tail(b))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type sshTo struct {
	signer ssh.Signer
	pins   string
}

func (s sshTo) dial(t *testing.T, m vmm.Machine) *guest.Client {
	t.Helper()
	c, err := guest.DialRetry(context.Background(), guest.Config{
		Addr: m.GuestIP + ":22", Signer: s.signer, KnownHostsFile: s.pins, DialTimeout: 5 * time.Second,
	}, 30*time.Second)
	if err != nil {
		t.Fatalf("ssh to %s: %v; console:\n%s", m.Name, err, readTail(m.ConsoleLog))
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func output(t *testing.T, c *guest.Client, script string) string {
	t.Helper()
	out, err := c.Output(context.Background(), script)
	if err != nil {
		t.Fatalf("guest %q: %v", script, err)
	}
	return strings.TrimSpace(string(out))
}

// counterScript counts in /work/counter, ten times a second, and records
// its PID: a process whose life and output tell whether the guest's memory
// and disks were restored together.
const counterScript = `echo $$ >/work/counter.pid; i=0; while :; do i=$((i+1)); echo $i >>/work/counter; usleep 100000; done`

// checkCounter reads the counter file: every line must be the previous
// plus one, from 1. It returns the last value and whether the counting
// process is alive.
func checkCounter(t *testing.T, c *guest.Client, wantPID string) int {
	t.Helper()
	out := output(t, c, `cat /work/counter; echo pid $(cat /work/counter.pid); kill -0 $(cat /work/counter.pid) && echo alive`)
	lines := strings.Split(out, "\n")
	if len(lines) < 3 || lines[len(lines)-1] != "alive" || lines[len(lines)-2] != "pid "+wantPID {
		t.Fatalf("counter process %s not alive (or another one): %q", wantPID, lines[max(0, len(lines)-3):])
	}
	n := 0
	for i, l := range lines[:len(lines)-2] {
		v, err := strconv.Atoi(l)
		if err != nil || v != i+1 {
			t.Fatalf("counter line %d is %q, want %d: the file lost or repeated writes", i+1, l, i+1)
		}
		n = v
	}
	return n
}

// guestClockOffset returns guest time minus host time, read with busybox
// adjtimex (microseconds) against the middle of the round trip.
func guestClockOffset(t *testing.T, c *guest.Client) time.Duration {
	t.Helper()
	before := time.Now()
	out := output(t, c, "adjtimex")
	after := time.Now()
	sec := regexp.MustCompile(`tv_sec:\s*(\d+)`).FindStringSubmatch(out)
	usec := regexp.MustCompile(`tv_usec:\s*(\d+)`).FindStringSubmatch(out)
	if sec == nil || usec == nil {
		t.Fatalf("adjtimex output %q", out)
	}
	s, _ := strconv.ParseInt(sec[1], 10, 64)
	us, _ := strconv.ParseInt(usec[1], 10, 64)
	guestNow := time.Unix(s, us*1000)
	return guestNow.Sub(before.Add(after.Sub(before) / 2))
}

func TestSnapshotTCG(t *testing.T) {
	g := requireGuest(t)
	addTap := snapNet(t)
	ctx := context.Background()
	dir := t.TempDir()
	signer, err := guest.Keygen(filepath.Join(dir, "id_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	srcSSH := sshTo{signer: signer, pins: filepath.Join(dir, "known_hosts.src")}
	d := &Driver{}

	// Boot the source and start the counter.
	addTap("bgqt0")
	src := withGuestNet(newGuestMachine(t, g, "tcg"), "bgqt0", "52:54:00:5a:00:02", "172.30.0.2")
	authorize(t, src, signer)
	p, _, _ := bootGuest(t, d, src)
	waitConsole(t, src, "banger-agent: ready", 20*time.Second)
	c := srcSSH.dial(t, src)
	output(t, c, "echo '"+counterScript+"' >/work/count.sh && setsid sh /work/count.sh </dev/null >/dev/null 2>&1 &")
	time.Sleep(time.Second)
	pid := output(t, c, "cat /work/counter.pid")
	// The kernel makes boot_id on its first read: read now, it is part of
	// the saved state and every clone reports it.
	srcBootID := output(t, c, "cat /proc/sys/kernel/random/boot_id")
	before := checkCounter(t, c, pid)
	c.Close()

	// Suspend: QEMU saves the state and exits.
	state := filepath.Join(dir, "suspend.state")
	start := time.Now()
	info, err := d.Save(ctx, src, p, state, false)
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	saveWall := time.Since(start)
	if p.Alive() {
		t.Fatal("qemu still runs after a suspend: its RAM is not freed")
	}
	assertNothingLeft(t, d, src, p)
	fi, err := os.Stat(state)
	if err != nil || fi.Size() != info.Size || info.Size < 1<<20 {
		t.Fatalf("state file %v, %v; SaveInfo size %d", fi, err, info.Size)
	}
	if v, err := Version(ctx, defaultBinary); err != nil || info.QEMUVersion != v {
		t.Errorf("recorded QEMU version %q, binary says %q (%v)", info.QEMUVersion, v, err)
	}
	t.Logf("suspend: %d MiB guest saved to %.1f MB in %s (guest stopped %s)", src.MemoryMiB,
		float64(info.Size)/1e6, saveWall.Round(time.Millisecond), info.Duration.Round(time.Millisecond))

	// A machine with other memory cannot take this state: refused before
	// QEMU starts.
	bigger := src
	bigger.MemoryMiB = 512
	bigger.Incoming = &vmm.Incoming{File: state}
	if _, err := d.Launch(ctx, bigger); !errors.Is(err, ErrStateMismatch) {
		t.Fatalf("restoring into 512 MiB: %v, want ErrStateMismatch", err)
	}

	// A state file cut short (a full disk, a crash while copying) fails the
	// restore and leaves nothing running.
	cut := filepath.Join(dir, "cut.state")
	if b, err := os.ReadFile(state); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(cut, b[:len(b)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	broken := src
	broken.Incoming = &vmm.Incoming{File: cut}
	if bp, err := d.Launch(ctx, broken); err == nil || !strings.Contains(err.Error(), "qemu exited while loading the saved state") {
		t.Fatalf("restoring a truncated state: %v, want qemu's failure", err)
	} else {
		t.Logf("truncated state refused: %v", err)
		assertNothingLeft(t, d, src, bp)
	}

	time.Sleep(suspendFor)

	// Resume: same machine, from the file.
	resumed := src
	resumed.Incoming = &vmm.Incoming{File: state}
	start = time.Now()
	p, err = d.Launch(ctx, resumed)
	if err != nil {
		t.Fatalf("restoring: %v", err)
	}
	toRunning := time.Since(start)
	t.Cleanup(func() { _ = d.Shutdown(ctx, src, p, 0, true) })
	c = srcSSH.dial(t, src)
	dialed := time.Since(start)
	output(t, c, "true")
	toSSH := time.Since(start)
	t.Logf("resume: running %s after launch, ssh connected after %s, first ssh command done after %s",
		toRunning.Round(time.Millisecond), dialed.Round(time.Millisecond), toSSH.Round(time.Millisecond))
	if err := d.Identify(ctx, src, p); err != nil {
		t.Errorf("Identify after restore: %v", err)
	}

	// The clock stood still while suspended, until the agent sets it.
	if off := guestClockOffset(t, c); off > -suspendFor+2*time.Second {
		t.Errorf("guest clock is %s off after a %s suspension: expected it to lag", off.Round(time.Millisecond), suspendFor)
	} else {
		t.Logf("resume: guest clock %s behind before set-time", (-off).Round(time.Millisecond))
	}
	agent := Agent(AgentSocket(src))
	start = time.Now()
	if err := agent.SetTime(ctx, time.Now()); err != nil {
		t.Fatalf("set-time: %v", err)
	}
	t.Logf("resume: set-time answered in %s", time.Since(start).Round(time.Millisecond))
	if off := guestClockOffset(t, c); off.Abs() > 2*time.Second {
		t.Errorf("guest clock %s off after set-time, want within 2s", off.Round(time.Millisecond))
	} else {
		t.Logf("resume: guest clock %s off after set-time", off.Round(time.Millisecond))
	}

	// The same process counts on, in the same file, without a gap.
	time.Sleep(500 * time.Millisecond)
	after := checkCounter(t, c, pid)
	if after <= before {
		t.Fatalf("counter at %d after resume, was %d before suspend", after, before)
	}
	t.Logf("resume: counter %d before suspend, %d after (same pid %s, no gap)", before, after, pid)

	// Fork: pause the source, save it keeping QEMU up, copy the disks while
	// nothing writes them, let the source go on.
	forkState := filepath.Join(dir, "fork.state")
	if err := d.Pause(ctx, src, p); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	finfo, err := d.Save(ctx, src, p, forkState, true)
	if err != nil {
		t.Fatalf("Save for a fork: %v", err)
	}
	if finfo.Resumed {
		t.Error("Save resumed a source the caller had paused")
	}
	snapDir := t.TempDir()
	root, work := filepath.Join(snapDir, "root.ext4"), filepath.Join(snapDir, "work.ext4")
	for from, to := range map[string]string{src.RootDisk: root, src.WorkDisk: work} {
		if _, err := (system.ExecRunner{}).Run(ctx, "cp", "--sparse=always", from, to); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Resume(ctx, src, p); err != nil {
		t.Fatal(err)
	}
	t.Logf("fork: source paused %s for save and disk copies (state %.1f MB)", time.Since(start).Round(time.Millisecond), float64(finfo.Size)/1e6)
	if n := checkCounter(t, c, pid); n < after {
		t.Errorf("source counter %d after the fork save, was %d", n, after)
	}
	c.Close()
	// One guest at a time on this host.
	if err := d.Shutdown(ctx, src, p, 0, true); err != nil {
		t.Fatal(err)
	}
	srcKey := consoleHostKey(t, src)

	type cloneResult struct {
		hostname, uuid, bootID, mac, addr, key string
	}
	// Clone 1 gets its identity one command at a time (timed), clone 2 in
	// one connection (DoAll).
	restoreClone := func(i int, batched bool) cloneResult {
		id, name := fmt.Sprintf("c10e%04d", i), fmt.Sprintf("clone%d", i)
		tap, mac, ip := fmt.Sprintf("bgqt%d", i), fmt.Sprintf("52:54:00:5a:01:%02x", i), fmt.Sprintf("172.30.0.%d", 10+i)
		addTap(tap)
		// Off the bridge until it has its own identity, as the daemon does.
		setTap(t, tap, "down")
		m := withGuestNet(cloneMachine(t, src, id, name, root, work), tap, mac, ip)
		m.Incoming = &vmm.Incoming{File: forkState, ShareMemory: true}
		start := time.Now()
		cp, err := d.Launch(ctx, m)
		if err != nil {
			t.Fatalf("restoring %s: %v", name, err)
		}
		toRunning := time.Since(start)
		// The guest's RAM is the split state's memfd, mapped privately.
		if maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", cp.PID)); err != nil {
			t.Fatal(err)
		} else if !regexp.MustCompile(`(?m) r[w-]-p .*/memfd:banger-guest-ram`).Match(maps) {
			t.Errorf("%s: qemu maps no private memfd:banger-guest-ram:\n%s", name, maps)
		}
		defer func() {
			if err := d.Shutdown(ctx, m, cp, 0, true); err != nil {
				t.Error(err)
			}
			assertNothingLeft(t, d, m, cp)
		}()
		a := Agent(AgentSocket(m))
		var key string
		if batched {
			answers, err := a.DoAll(ctx, "set-mac "+mac, "set-ip "+ip+"/24 "+snapGateway, "set-hostname "+name,
				"reseed 0123456789abcdef", "regen-hostkey", fmt.Sprintf("set-time %d", time.Now().UnixNano()))
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			key = answers[4]
		} else {
			var steps []string
			for _, step := range []struct {
				name string
				do   func() error
			}{
				{"ping", func() error { return a.Ping(ctx) }},
				{"set-mac", func() error { return a.SetMAC(ctx, mac) }},
				{"set-ip", func() error { return a.SetIP(ctx, ip, 24, snapGateway) }},
				{"set-hostname", func() error { return a.SetHostname(ctx, name) }},
				{"reseed", func() error { return a.Reseed(ctx) }},
				{"set-time", func() error { return a.SetTime(ctx, time.Now()) }},
				{"regen-hostkey", func() (err error) { key, err = a.RegenHostKey(ctx); return err }},
			} {
				t0 := time.Now()
				if err := step.do(); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				steps = append(steps, fmt.Sprintf("%s %s", step.name, time.Since(t0).Round(time.Millisecond)))
			}
			t.Logf("%s: agent commands: %s", name, strings.Join(steps, ", "))
		}
		setTap(t, tap, "up")
		agentDone := time.Since(start)
		// Pin the key the agent reported: the dial succeeds only if the
		// guest's SSH server now offers it.
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
		if err != nil {
			t.Fatalf("%s: regen-hostkey answered %q: %v", name, key, err)
		}
		pins := filepath.Join(dir, "known_hosts."+name)
		if err := os.WriteFile(pins, []byte(knownhosts.Line([]string{knownhosts.Normalize(ip + ":22")}, pk)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cc := sshTo{signer: signer, pins: pins}.dial(t, m)
		dialed := time.Since(start)
		out := output(t, cc, `hostname; cat /proc/sys/kernel/random/uuid; cat /proc/sys/kernel/random/boot_id; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'`)
		toSSH := time.Since(start)
		f := strings.Split(out, "\n")
		if len(f) != 5 {
			t.Fatalf("%s: guest answered %q", name, out)
		}
		r := cloneResult{hostname: f[0], uuid: f[1], bootID: f[2], mac: f[3], addr: f[4], key: key}
		if r.hostname != name || r.mac != mac || r.addr != ip+"/24" {
			t.Errorf("%s: hostname %q, mac %q, address %q; want %q, %q, %q", name, r.hostname, r.mac, r.addr, name, mac, ip+"/24")
		}
		if n := checkCounter(t, cc, pid); n < after {
			t.Errorf("%s: counter %d, the source had %d before the fork", name, n, after)
		}
		if off := guestClockOffset(t, cc); off.Abs() > 2*time.Second {
			t.Errorf("%s: clock %s off", name, off.Round(time.Millisecond))
		}
		t.Logf("%s: running %s after launch, agent done (mac, ip, hostname, reseed, time, host key, link up) after %s, ssh connected after %s, first ssh command done after %s",
			name, toRunning.Round(time.Millisecond), agentDone.Round(time.Millisecond), dialed.Round(time.Millisecond), toSSH.Round(time.Millisecond))
		return r
	}
	a, b := restoreClone(1, false), restoreClone(2, true)
	if a.uuid == b.uuid {
		t.Errorf("both clones read the same random uuid %s: their RNGs were not reseeded apart", a.uuid)
	}
	if a.key == b.key || a.key == srcKey || b.key == srcKey {
		t.Errorf("host keys not all different: source %q, clones %q and %q", srcKey, a.key, b.key)
	}
	// boot_id is not an identity after a fork: it comes with the state.
	if a.bootID != srcBootID || b.bootID != srcBootID {
		t.Errorf("boot ids %s and %s, the source's was %s: expected the clones to keep it", a.bootID, b.bootID, srcBootID)
	}
	t.Logf("clones: uuid %s vs %s, boot_id %s in all three", a.uuid, b.uuid, srcBootID)
}

// consoleHostKey returns the ed25519 host key guest-setup printed at boot.
func consoleHostKey(t *testing.T, m vmm.Machine) string {
	t.Helper()
	b, _ := os.ReadFile(m.ConsoleLog)
	sm := regexp.MustCompile(`banger-hostkey: (ssh-ed25519 \S+)`).FindSubmatch(b)
	if sm == nil {
		t.Fatalf("no banger-hostkey line on %s's console", m.Name)
	}
	return string(sm[1])
}
