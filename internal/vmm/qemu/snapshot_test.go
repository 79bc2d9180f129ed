package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/vmm"
	"golang.org/x/crypto/ssh"
)

func TestMachineFingerprintIgnoresPathsAndIdentity(t *testing.T) {
	a := withNetwork(baseMachine())
	b := a
	b.ID, b.Name = "fedcba98", "clone"
	b.RootDisk, b.WorkDisk = "/other/root.img", "/other/work.ext4"
	b.TapDevice, b.GuestMAC, b.GuestIP = "bgtapother", "52:54:00:ff:ff:ff", "172.30.0.9"
	b.APISock, b.ConsoleLog, b.AgentSock = "/run/x/api.sock", "/var/x/console.log", "/run/x/agent.sock"
	b.Kernel, b.Initrd = "/images/other/vmlinuz", "/images/other/initrd.img"
	fa, fb := fingerprintOf(t, a, 2593906), fingerprintOf(t, b, 2000000)
	if fa != fb {
		t.Fatalf("a clone's fingerprint differs:\n%s\n%s", fa, fb)
	}
	for _, bad := range []string{"/var/lib", "/run", "bgtap", "52:54", "web", "0123abcd", "tsc_early"} {
		if strings.Contains(fa, bad) {
			t.Errorf("fingerprint %q holds %q", fa, bad)
		}
	}
	for _, want := range []string{"-m 256", "-smp 2", "-accel tcg", "-cpu max", "drive=root", "drive=work", "netdev=n0", "virtserialport,chardev=agent,name=org.banger.agent"} {
		if !strings.Contains(fa, want) {
			t.Errorf("fingerprint %q lacks %q", fa, want)
		}
	}
	// Anything a restore cannot change must change the fingerprint.
	changes := map[string]func(*vmm.Machine){
		"memory":    func(m *vmm.Machine) { m.MemoryMiB = 512 },
		"vcpus":     func(m *vmm.Machine) { m.VCPUs = 1 },
		"accel":     func(m *vmm.Machine) { m.Accel = "kvm" },
		"no work":   func(m *vmm.Machine) { m.WorkDisk = "" },
		"no tap":    func(m *vmm.Machine) { m.TapDevice = "" },
		"no initrd": nil,
	}
	delete(changes, "no initrd") // the initrd is loaded at boot only: not part of the state
	for name, change := range changes {
		c := a
		change(&c)
		if f := fingerprintOf(t, c, 2593906); f == fa {
			t.Errorf("%s: fingerprint unchanged (%s)", name, f)
		}
	}
}

func fingerprintOf(t *testing.T, m vmm.Machine, tsc int) string {
	t.Helper()
	argv, err := buildArgv(m, "qemu-system-x86_64", tsc)
	if err != nil {
		t.Fatal(err)
	}
	return machineFingerprint(argv)
}

func TestRestoreArgvDiffersOnlyByIncoming(t *testing.T) {
	// The argv of a restore is the boot argv plus -incoming fd:3: Launch
	// appends it after buildArgv, so check that buildArgv is independent
	// of Incoming.
	m := withNetwork(baseMachine())
	boot, err := buildArgv(m, "qemu-system-x86_64", 2593906)
	if err != nil {
		t.Fatal(err)
	}
	m.Incoming = &vmm.Incoming{File: "/var/lib/banger/vms/0123abcd/state"}
	restore, err := buildArgv(m, "qemu-system-x86_64", 2593906)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(boot, restore) {
		t.Fatalf("argv changed with Incoming:\n%q\n%q", boot, restore)
	}
}

func TestStateHeaderRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	want := StateInfo{VMID: "0123abcd", QEMUVersion: "7.2.22", Machine: "-M microvm -m 256", MemoryMiB: 256, VCPUs: 1,
		SavedAt: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)}
	if err := writeStateHeader(f, want); err != nil {
		t.Fatal(err)
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != stateHeaderSize {
		t.Fatalf("offset after the header = %d, want %d (where QEMU's stream starts)", off, stateHeaderSize)
	}
	f.WriteString("stream")
	f.Close()
	got, err := ReadStateInfo(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("ReadStateInfo = %+v, want %+v", got, want)
	}
	// Not ours, or cut short: refused.
	other := filepath.Join(dir, "other")
	os.WriteFile(other, append([]byte("QEVM"), make([]byte, 8192)...), 0o600)
	if _, err := ReadStateInfo(other); err == nil || !strings.Contains(err.Error(), "not a banger QEMU state file") {
		t.Errorf("foreign file: %v", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte(stateMagic+"{}"), 0o600)
	if _, err := ReadStateInfo(short); err == nil {
		t.Error("a truncated header was accepted")
	}
}

// fakeQEMUBinary writes a script that answers --version like QEMU version v.
func fakeQEMUBinary(t *testing.T, v string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	script := "#!/bin/sh\necho 'QEMU emulator version " + v + " (Debian 1:7.2+dfsg-7)'\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpenIncomingRefusesMismatch(t *testing.T) {
	m := withNetwork(baseMachine())
	argv, err := buildArgv(m, "qemu-system-x86_64", 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(info StateInfo, stream string) string {
		p := filepath.Join(dir, "state-"+info.QEMUVersion+"-"+stream)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := writeStateHeader(f, info); err != nil {
			t.Fatal(err)
		}
		f.WriteString(stream)
		return p
	}
	good := StateInfo{QEMUVersion: "7.2.22", Machine: machineFingerprint(argv)}
	bin := fakeQEMUBinary(t, "7.2.22")
	ctx := context.Background()

	m.Incoming = &vmm.Incoming{File: write(good, "QEVM")}
	f, err := openIncoming(ctx, m, bin, argv)
	if err != nil {
		t.Fatalf("matching state refused: %v", err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "QEVM" {
		t.Fatalf("descriptor positioned at %q, want the stream after the header", b)
	}

	cases := map[string]struct {
		in      vmm.Incoming
		bin     string
		wantErr string
	}{
		"other qemu version":     {vmm.Incoming{File: write(good, "QEVM")}, fakeQEMUBinary(t, "8.2.2"), "cannot be restored by QEMU 8.2.2"},
		"caller recorded other":  {vmm.Incoming{File: write(good, "QEVM"), VMMVersion: "7.2.21"}, bin, "caller recorded 7.2.21"},
		"other machine":          {vmm.Incoming{File: write(StateInfo{QEMUVersion: "7.2.22", Machine: "-m 512"}, "QEVM")}, bin, "memory, vCPUs and devices"},
		"header without a state": {vmm.Incoming{File: write(good, "")}, bin, "holds no state"},
	}
	for name, tc := range cases {
		m.Incoming = &tc.in
		_, err := openIncoming(ctx, m, tc.bin, argv)
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.wantErr)
		}
		if tc.wantErr != "holds no state" && !errors.Is(err, ErrStateMismatch) {
			t.Errorf("%s: %v is not ErrStateMismatch", name, err)
		}
	}
}

func TestSaveSuspendWritesStateAndEndsQEMU(t *testing.T) {
	v := startFakeQEMU(t, "migrate")
	d := &Driver{}
	state := filepath.Join(t.TempDir(), "vm.state")
	info, err := d.Save(context.Background(), v.m, v.p, state, false)
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	if v.p.Alive() {
		t.Error("qemu still alive after a suspend")
	}
	if _, err := os.Lstat(v.m.APISock); err == nil {
		t.Error("qmp socket left behind")
	}
	got := v.commands(t)
	want := []string{"query-version", "query-status", "migrate-set-parameters", "stop", "getfd", "migrate", "query-migrate", "quit"}
	if !slices.Equal(got, want) {
		t.Errorf("qmp commands %q, want %q", got, want)
	}
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != stateHeaderSize+len(fakeStream) || string(b[stateHeaderSize:]) != fakeStream {
		t.Fatalf("state file: %d bytes, tail %q; want the header then the stream QEMU wrote", len(b), b[min(len(b), stateHeaderSize):])
	}
	if info.Size != int64(len(b)) || info.QEMUVersion != "7.2.22" || info.VMID != v.m.ID || info.Resumed {
		t.Errorf("SaveInfo = %+v", info)
	}
	hdr, err := ReadStateInfo(state)
	if err != nil || hdr.QEMUVersion != "7.2.22" || hdr.Machine != "-M microvm -m 256 -smp 2" || hdr.MemoryMiB != 256 || hdr.VCPUs != 2 || hdr.SavedAt.IsZero() {
		t.Errorf("header %+v, %v", hdr, err)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(state), ".*tmp*")); len(left) > 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

func TestSaveKeepRunningResumes(t *testing.T) {
	v := startFakeQEMU(t, "migrate")
	d := &Driver{}
	state := filepath.Join(t.TempDir(), "vm.state")
	info, err := d.Save(context.Background(), v.m, v.p, state, true)
	if err != nil {
		t.Fatalf("Save: %v", err)
	}
	if !info.Resumed || !v.p.Alive() {
		t.Fatalf("Resumed %v, alive %v: want a running source", info.Resumed, v.p.Alive())
	}
	if st, err := d.RunState(context.Background(), v.m, v.p); err != nil || st != "running" {
		t.Fatalf("RunState = %q, %v", st, err)
	}

	// A paused guest (a fork's source while its disks are copied) stays
	// paused through a Save with keepRunning, and Resume lets it go.
	if err := d.Pause(context.Background(), v.m, v.p); err != nil {
		t.Fatal(err)
	}
	if err := d.Identify(context.Background(), v.m, v.p); err != nil {
		t.Errorf("Identify of a paused QEMU (alive, a pool member): %v", err)
	}
	info, err = d.Save(context.Background(), v.m, v.p, state+"2", true)
	if err != nil {
		t.Fatalf("Save of a paused guest: %v", err)
	}
	if st, _ := d.RunState(context.Background(), v.m, v.p); info.Resumed || st != "postmigrate" {
		t.Fatalf("after saving a paused guest: Resumed %v, status %q; want it left paused", info.Resumed, st)
	}
	if err := d.Identify(context.Background(), v.m, v.p); err == nil {
		t.Error("Identify accepted a QEMU whose state was saved (postmigrate)")
	}
	if err := d.Resume(context.Background(), v.m, v.p); err != nil {
		t.Fatal(err)
	}
	if err := d.Identify(context.Background(), v.m, v.p); err != nil {
		t.Errorf("Identify after Resume: %v", err)
	}
}

func TestSaveFailureResumesAndLeavesNoFile(t *testing.T) {
	v := startFakeQEMU(t, "migrate-fail")
	d := &Driver{}
	dir := t.TempDir()
	state := filepath.Join(dir, "vm.state")
	_, err := d.Save(context.Background(), v.m, v.p, state, false)
	if err == nil || !strings.Contains(err.Error(), "No space left on device") {
		t.Fatalf("Save = %v, want the migration's error", err)
	}
	if !v.p.Alive() {
		t.Fatal("qemu ended although the save failed")
	}
	if st, _ := d.RunState(context.Background(), v.m, v.p); st != "running" {
		t.Errorf("status %q after a failed save, want running again", st)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("files left after a failed save: %v", ents)
	}
	var got []string
	waitFor(t, "the fake's command log", func() bool {
		got = v.commands(t)
		return slices.Contains(got, "query-name") // RunState's, after everything Save sent
	})
	i := slices.Index(got, "migrate_cancel")
	if i < 0 || !slices.Contains(got[i:], "cont") {
		t.Errorf("qmp commands %q: want migrate_cancel, then cont", got)
	}
}

func TestSaveRefusesAnotherVMsProcess(t *testing.T) {
	v := startFakeQEMU(t, "migrate")
	other := v.m
	other.ID = "99999999"
	d := &Driver{}
	if _, err := d.Save(context.Background(), other, v.p, filepath.Join(t.TempDir(), "s"), false); err == nil {
		t.Fatal("Save stopped a QEMU whose -name is another VM's")
	}
	if got := v.commands(t); len(got) != 0 {
		t.Errorf("commands reached the other VM's QEMU: %q", got)
	}
}

// agentDouble answers on a unix socket like QEMU's chardev with the guest
// agent behind it: first any stale lines, then answer(request).
func agentDouble(t *testing.T, stale string, answer func(id, cmd string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, stale)
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					break
				}
				id, cmd, _ := strings.Cut(strings.TrimSpace(line), " ")
				io.WriteString(c, answer(id, cmd))
			}
			c.Close()
		}
	}()
	return path
}

func TestAgentClient(t *testing.T) {
	ctx := context.Background()
	var seen []string
	path := agentDouble(t, "deadbeef ok answer-for-someone-else\r\n", func(id, cmd string) string {
		seen = append(seen, cmd)
		switch {
		case cmd == "ping":
			return id + " ok\n"
		case strings.HasPrefix(cmd, "regen-hostkey"):
			return id + " ok ssh-ed25519 AAAAC3Nza\r\n"
		case strings.HasPrefix(cmd, "set-mac"):
			return id + " err set-mac: want aa:bb:cc:dd:ee:ff\n"
		}
		return id + " ok\n"
	})
	a := Agent(path)
	if err := a.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	key, err := a.RegenHostKey(ctx)
	if err != nil || key != "ssh-ed25519 AAAAC3Nza" {
		t.Fatalf("RegenHostKey = %q, %v (the stale line must be skipped)", key, err)
	}
	var ae *AgentError
	if err := a.SetMAC(ctx, "nonsense"); !errors.As(err, &ae) || ae.Command != "set-mac" || !strings.Contains(ae.Message, "want aa:bb") {
		t.Fatalf("SetMAC = %v, want an AgentError", err)
	}
	if err := a.SetIP(ctx, "172.30.0.3", 24, "172.30.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetTime(ctx, time.Unix(1700000000, 5)); err != nil {
		t.Fatal(err)
	}
	if err := a.Reseed(ctx); err != nil {
		t.Fatal(err)
	}
	if seen[3] != "set-ip 172.30.0.3/24 172.30.0.1" || seen[4] != "set-time 1700000000000000005 nearest" ||
		!strings.HasPrefix(seen[5], "reseed ") || len(seen[5]) != len("reseed ")+128 {
		t.Errorf("commands sent: %q", seen)
	}
	if _, err := a.Do(ctx, "ping\nregen-hostkey"); err == nil {
		t.Error("a command with a newline was sent")
	}

	// Several commands over one connection, answers in order; the first
	// "err" ends the call with what came before it.
	got, err := a.DoAll(ctx, "ping", "regen-hostkey", "set-hostname x")
	if err != nil || !slices.Equal(got, []string{"", "ssh-ed25519 AAAAC3Nza", ""}) {
		t.Fatalf("DoAll = %q, %v", got, err)
	}
	got, err = a.DoAll(ctx, "ping", "set-mac zz", "ping")
	if !errors.As(err, &ae) || ae.Command != "set-mac" || !slices.Equal(got, []string{""}) {
		t.Fatalf("DoAll with a failing command = %q, %v", got, err)
	}
}

func TestAgentClientTimesOut(t *testing.T) {
	// An agent that never answers (a guest not running it): Do ends with ctx.
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Agent(path).Do(ctx, "ping"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Do = %v, want the deadline", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("Do took %s after a 200ms deadline", time.Since(start))
	}
}

// PrepareClone installs a host-made key and returns its public half; an
// agent that does not know set-hostkey makes one itself (regen-hostkey).
func TestPrepareCloneHostKey(t *testing.T) {
	for _, old := range []bool{false, true} {
		var seen []string
		path := agentDouble(t, "", func(id, cmd string) string {
			seen = append(seen, cmd)
			switch name, _, _ := strings.Cut(cmd, " "); {
			case name == "set-hostkey" && old:
				return id + " err unknown command set-hostkey\n"
			case name == "regen-hostkey":
				return id + " ok ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPz4ItKw9cW2PZGPvZP2wdBy0lXYFm1LIoQqf+xPbGVZ\n"
			}
			return id + " ok\n"
		})
		key, priv, err := giveIdentity(context.Background(), Agent(path), vmm.CloneIdentity{MAC: "02:00:00:00:00:01", IP: "172.30.0.9", PrefixLen: 24, Gateway: "172.30.0.1", Hostname: "c1"})
		if err != nil {
			t.Fatalf("old agent %v: %v", old, err)
		}
		var hk string
		for _, c := range seen {
			if strings.HasPrefix(c, "set-hostkey ") {
				hk = strings.TrimPrefix(c, "set-hostkey ")
			}
		}
		raw, _ := hex.DecodeString(hk)
		if len(raw) != 83 {
			t.Fatalf("set-hostkey sent %q", hk)
		}
		if old {
			// The commands after the refused set-hostkey ran unchecked:
			// they are sent again after regen-hostkey.
			if i := slices.Index(seen, "regen-hostkey"); i < 0 || len(seen) < i+6 || !strings.HasPrefix(seen[i+1], "set-mac ") || !strings.HasPrefix(seen[i+5], "set-time ") {
				t.Errorf("old agent: commands %q", seen)
			}
			if !strings.HasSuffix(key, "IPz4ItKw9cW2PZGPvZP2wdBy0lXYFm1LIoQqf+xPbGVZ") {
				t.Errorf("old agent: key %q, want the one regen-hostkey reported", key)
			}
			// The guest made that key: the host has no private half to keep.
			if priv != nil {
				t.Errorf("old agent: a private key was returned for a key the guest made")
			}
			continue
		}
		// The private key returned is the file set-hostkey installed.
		if !bytes.Equal(priv, raw) {
			t.Errorf("returned private key %x, installed %x", priv, raw)
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
		if err != nil || !bytes.Equal(pub.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey), raw[51:]) {
			t.Errorf("returned key %q is not the one installed (%v)", key, err)
		}
	}
}

// A guest running OpenSSH's server answers set-hostkey with "openssh": the
// private key PrepareClone returns, for the clone's disk, is then in
// OpenSSH's format, and holds the key installed.
func TestPrepareCloneHostKeyOpenSSH(t *testing.T) {
	var hk string
	path := agentDouble(t, "", func(id, cmd string) string {
		if rest, ok := strings.CutPrefix(cmd, "set-hostkey "); ok {
			hk = rest
			return id + " ok openssh\n"
		}
		return id + " ok\n"
	})
	key, priv, err := giveIdentity(context.Background(), Agent(path), vmm.CloneIdentity{MAC: "02:00:00:00:00:01", IP: "172.30.0.9", PrefixLen: 24, Gateway: "172.30.0.1", Hostname: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil {
		t.Fatalf("returned private key is not OpenSSH's: %v\n%s", err, priv)
	}
	if got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))); got != key {
		t.Errorf("private key's public half %q, returned %q", got, key)
	}
	raw, _ := hex.DecodeString(hk)
	if len(raw) != 83 || !bytes.Equal(raw[51:], signer.PublicKey().(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey)) {
		t.Errorf("the key returned is not the one sent (%d bytes)", len(raw))
	}
}

// An AgentConn runs batches over one connection; answers a failed batch
// left unread are skipped by their ids, and ids go on from batch to batch.
func TestAgentConnBatches(t *testing.T) {
	ctx := context.Background()
	prefixes := map[string]bool{}
	var ids []string
	path := agentDouble(t, "", func(id, cmd string) string {
		p, _, _ := strings.Cut(id, "-")
		prefixes[p] = true
		ids = append(ids, id)
		if cmd == "fail" {
			return id + " err fail: no\n"
		}
		return id + " ok " + cmd + "\n"
	})
	c, err := Agent(path).Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.DoAll(ctx, "a", "fail", "b", "c")
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Command != "fail" || !slices.Equal(got, []string{"a"}) {
		t.Fatalf("first batch = %q, %v", got, err)
	}
	// The answers to b and c are still on their way: they must not be
	// taken for d's and e's.
	got, err = c.DoAll(ctx, "d", "e")
	if err != nil || !slices.Equal(got, []string{"d", "e"}) {
		t.Fatalf("second batch = %q, %v", got, err)
	}
	if len(prefixes) != 1 || len(ids) != 6 || !strings.HasSuffix(ids[4], "-4") || !strings.HasSuffix(ids[5], "-5") {
		t.Errorf("connections %d, ids %q: want one connection and ids numbered on", len(prefixes), ids)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.DoAll(cctx, "f"); !errors.Is(err, context.Canceled) {
		t.Errorf("DoAll with a cancelled context = %v", err)
	}
}

// PrepareClone gives the whole identity over a single connection to the
// agent, the host key first (the guest's SSH server restarts meanwhile),
// and leaves the VMM's link alone (the caller keeps the clone off the
// network host-side).
func TestPrepareCloneOneConnection(t *testing.T) {
	qmp := filepath.Join(t.TempDir(), "qmp.sock")
	f, err := newFakeQMP(qmp)
	if err != nil {
		t.Fatal(err)
	}
	go f.serve()
	t.Cleanup(func() { f.ln.Close() })
	prefixes := map[string]bool{}
	var seen []string
	path := agentDouble(t, "", func(id, cmd string) string {
		p, _, _ := strings.Cut(id, "-")
		prefixes[p] = true
		name, _, _ := strings.Cut(cmd, " ")
		seen = append(seen, name)
		return id + " ok\n"
	})
	d := &Driver{}
	m := vmm.Machine{ID: "c1", APISock: qmp, AgentSock: path, TapDevice: "tap0"}
	key, _, err := d.PrepareClone(context.Background(), m, vmm.CloneIdentity{MAC: "02:00:00:00:00:01", IP: "172.30.0.9", PrefixLen: 24, Gateway: "172.30.0.1", Hostname: "c1"})
	if err != nil || !strings.HasPrefix(key, "ssh-ed25519 ") {
		t.Fatalf("PrepareClone = %q, %v", key, err)
	}
	want := []string{"ping", "set-hostkey", "set-mac", "set-ip", "set-hostname", "reseed", "set-time"}
	if !slices.Equal(seen, want) || len(prefixes) != 1 {
		t.Errorf("agent saw %q over %d connections, want %q over one", seen, len(prefixes), want)
	}
	if f.log() != "" {
		t.Errorf("QMP commands %q: PrepareClone needs none", f.log())
	}
}
