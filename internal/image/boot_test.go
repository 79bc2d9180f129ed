package image

// Boot test: boots the built minimal image with QEMU microvm, as in
// docs/qemu.md, inside the private network namespace TestMain
// re-executes into; the guest's tap lives there too, so no packet reaches
// the host's network. Root only.

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/system"
)

// hostTSCkHz reads the host's TSC frequency as /proc/cpuinfo states it; under
// TCG the guest TSC is the host's, and microvm needs tsc_early_khz (rig,
// gotcha 1).
func hostTSCkHz(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			var mhz float64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%f", &mhz); err == nil {
				return int(mhz * 1000)
			}
		}
	}
	t.Fatal("no cpu MHz in /proc/cpuinfo")
	return 0
}

func kvmUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// qmp is a minimal QMP client: greeting, capabilities, then commands.
type qmp struct {
	conn net.Conn
	rd   *bufio.Reader
}

// dialQMP connects while QEMU lives (the socket appears shortly after start).
func dialQMP(sock string, proc system.Process) (*qmp, error) {
	var conn net.Conn
	var err error
	for i := 0; i < 200; i++ {
		if conn, err = net.Dial("unix", sock); err == nil || !proc.Alive() {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to QMP %s: %w", sock, err)
	}
	q := &qmp{conn: conn, rd: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := q.rd.ReadString('\n'); err != nil { // greeting
		conn.Close()
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if err := q.command("qmp_capabilities"); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// sendKeys presses keys (QKeyCode names) together.
func (q *qmp) sendKeys(keys ...string) error {
	var ks []string
	for _, k := range keys {
		ks = append(ks, fmt.Sprintf(`{"type":"qcode","data":%q}`, k))
	}
	return q.execute(fmt.Sprintf(`{"execute":"send-key","arguments":{"keys":[%s]}}`, strings.Join(ks, ",")))
}

// command sends cmd and waits for its return, skipping events.
func (q *qmp) command(cmd string) error {
	return q.execute(fmt.Sprintf("{\"execute\":%q}", cmd))
}

// execute sends one JSON request and waits for its return.
func (q *qmp) execute(req string) error {
	cmd := req
	if _, err := fmt.Fprintf(q.conn, "%s\n", req); err != nil {
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		line, err := q.rd.ReadString('\n')
		if err != nil {
			return fmt.Errorf("QMP %s: %w", cmd, err)
		}
		var msg map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &msg); err != nil {
			return fmt.Errorf("QMP %s: bad reply %q", cmd, line)
		}
		if e, ok := msg["error"]; ok {
			return fmt.Errorf("QMP %s: %s", cmd, e)
		}
		if _, ok := msg["return"]; ok {
			return nil
		}
	}
}

func waitForConsole(path, marker string, timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), marker) {
			return string(b), true
		}
		if time.Now().After(deadline) {
			return string(b), false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// guestNet is a tap with the host's address, in the test's private network
// namespace, and the SSH identity the guest will accept.
type guestNet struct {
	tap, hostIP, guestIP, hostname string
	signer                         ssh.Signer
	authorizedKey                  []byte
}

func setupGuestNet(t *testing.T) *guestNet {
	t.Helper()
	if !system.InPrivateNetNS() {
		t.Fatal("refusing to create a tap outside a private network namespace")
	}
	n := &guestNet{tap: "bgimgtap0", hostIP: "172.30.0.1", guestIP: "172.30.0.11", hostname: "bgimgvm"}
	ctx := context.Background()
	r := system.ExecRunner{}
	for _, args := range [][]string{
		{"tuntap", "add", "dev", n.tap, "mode", "tap"},
		{"addr", "add", n.hostIP + "/24", "dev", n.tap},
		{"link", "set", n.tap, "up"},
	} {
		if _, err := r.Run(ctx, "ip", args...); err != nil {
			t.Fatalf("setting up tap: %v", err)
		}
	}
	t.Cleanup(func() { r.Run(context.Background(), "ip", "link", "del", n.tap) })
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	if n.signer, err = ssh.NewSignerFromKey(priv); err != nil {
		t.Fatal(err)
	}
	n.authorizedKey = ssh.MarshalAuthorizedKey(n.signer.PublicKey())
	return n
}

// bootAttempt is one QEMU run of the image on fresh disk copies.
type bootAttempt struct {
	dir, console, rootfs, work string
	proc                       system.Process
	qmp                        *qmp
	start                      time.Time
}

// bootMinimal starts QEMU (machine "microvm", or "pc" with virtio-pci) on copies of the image's rootfs and a new
// work disk, and connects to its QMP socket. The QEMU process is killed in
// t.Cleanup whatever happens.
func bootMinimal(t *testing.T, qemu string, res Result, machine, accel string, n *guestNet) *bootAttempt {
	t.Helper()
	ctx := context.Background()
	r := system.ExecRunner{}
	a := &bootAttempt{dir: t.TempDir()}
	a.rootfs = filepath.Join(a.dir, "rootfs.ext4")
	a.work = filepath.Join(a.dir, "work.ext4")
	a.console = filepath.Join(a.dir, "console.log")
	sock := filepath.Join(a.dir, "qmp.sock")
	if _, err := r.Run(ctx, "cp", "--sparse=always", res.Rootfs, a.rootfs); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", "work", a.work, "64M"); err != nil {
		t.Fatal(err)
	}
	if n != nil {
		// What the daemon does per VM: the user's key into /root/.ssh.
		keyFile := filepath.Join(a.dir, "authorized_keys")
		if err := os.WriteFile(keyFile, n.authorizedKey, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Run(ctx, "debugfs", "-w", "-R", "write "+keyFile+" /root/.ssh/authorized_keys", a.rootfs); err != nil {
			t.Fatal(err)
		}
	}
	cpu := "max"
	if accel == "kvm" {
		cpu = "host"
	}
	// What the QEMU driver adds to the image's BootArgs.
	cmdline := fmt.Sprintf("console=ttyS0 %s panic=-1 reboot=t tsc_early_khz=%d", res.BootArgs, hostTSCkHz(t))
	if n != nil {
		cmdline += " ip=" + n.guestIP + "::" + n.hostIP + ":255.255.255.0:" + n.hostname + ":eth0:off"
	}
	transport := "device" // virtio-mmio
	if machine != "microvm" {
		transport = "pci"
	}
	argv := []string{qemu, "-M", machine, "-accel", accel, "-cpu", cpu, "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + a.console, "-qmp", "unix:" + sock + ",server=on,wait=off",
		"-kernel", res.Kernel, "-initrd", res.Initrd, "-append", cmdline,
		"-drive", "id=root,file=" + a.rootfs + ",format=raw,if=none", "-device", "virtio-blk-" + transport + ",drive=root",
		"-drive", "id=work,file=" + a.work + ",format=raw,if=none", "-device", "virtio-blk-" + transport + ",drive=work",
	}
	if n != nil {
		argv = append(argv, "-netdev", "tap,id=n0,ifname="+n.tap+",script=no,downscript=no",
			"-device", "virtio-net-"+transport+",netdev=n0,mac=52:54:00:00:00:01")
	}
	a.start = time.Now()
	proc, err := system.StartDetached(system.DetachedSpec{Argv: argv, LogPath: filepath.Join(a.dir, "qemu.log")})
	if err != nil {
		t.Fatal(err)
	}
	a.proc = proc
	t.Cleanup(func() {
		if a.qmp != nil {
			a.qmp.conn.Close()
		}
		if err := proc.Kill(5 * time.Second); err != nil {
			t.Errorf("killing qemu: %v", err)
		}
	})
	if q, err := dialQMP(sock, proc); err == nil {
		a.qmp = q
	} else {
		t.Logf("QEMU (%s) gave no QMP socket: %v\n%s", accel, err, mustRead(filepath.Join(a.dir, "qemu.log")))
	}
	return a
}

func TestBootMinimalQEMU(t *testing.T) {
	requireRoot(t)
	if !system.InPrivateNetNS() {
		t.Skip("boot test runs only in a private network namespace (TestMain re-exec as root)")
	}
	qemu, err := system.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	res := minimalImage(t)
	n := setupGuestNet(t)

	// KVM when /dev/kvm opens; but nested KVM on some hosts opens fine and
	// then never boots a guest, so a KVM boot that shows nothing within 20 s
	// is retried under TCG. BANGER_TEST_ACCEL=kvm|tcg pins the choice.
	accels := []string{"tcg"}
	if kvmUsable() {
		accels = []string{"kvm", "tcg"}
	}
	if a := os.Getenv("BANGER_TEST_ACCEL"); a != "" {
		accels = []string{a}
	}
	var a *bootAttempt
	var log string
	booted := false
	for i, accel := range accels {
		timeout := 60 * time.Second
		if i < len(accels)-1 {
			timeout = 20 * time.Second
		}
		a = bootMinimal(t, qemu, res, "microvm", accel, n)
		if a.qmp != nil {
			log, booted = waitForConsole(a.console, "rcS done", timeout)
		}
		if booted {
			t.Logf("rcS done %v after QEMU start (accel %s)", time.Since(a.start).Round(time.Millisecond), accel)
			break
		}
		if a.qmp != nil {
			t.Logf("no \"rcS done\" on the console within %v with accel %s; console:\n%s", timeout, accel, mustRead(a.console))
		}
		if err := a.proc.Kill(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if !booted {
		t.Fatalf("guest did not boot with %v", accels)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console:\n%s", mustRead(a.console))
		}
	})
	if !strings.Contains(log, "banger-hostkey: ssh-ed25519 ") {
		t.Errorf("guest printed no host key on first boot:\n%s", log)
	}
	if strings.Contains(log, "cannot mount") {
		t.Errorf("guest could not mount a disk:\n%s", log)
	}

	// SSH as the daemon will: key in authorized_keys, host key pinned from
	// the console line; then SFTP (dropbear runs /usr/lib/sftp-server).
	hostKey := hostKeyFromConsole(t, log)
	client := dialSSH(t, n, hostKey)
	if out := sshRun(t, client, "hostname"); out != n.hostname {
		t.Errorf("guest hostname %q, want %q from ip=", out, n.hostname)
	}
	if out := sshRun(t, client, "grep ' /work ' /proc/mounts"); !strings.HasPrefix(out, "/dev/vdb /work ext4") {
		t.Errorf("work disk not mounted on /work: %q", out)
	}
	// SFTP on a connection of its own: on a shared one, a session opened
	// right after the SFTP session ends sometimes has its channel closed at
	// once by dropbear (the exec request fails with EOF; 2 runs in 7).
	sftpConn := dialSSH(t, n, hostKey)
	sc, err := sftp.NewClient(sftpConn)
	if err != nil {
		t.Fatalf("sftp: %v", err)
	}
	f, err := sc.Create("/work/hello")
	if err != nil {
		t.Fatalf("sftp create: %v", err)
	}
	if _, err := f.Write([]byte("hello from sftp\n")); err != nil {
		t.Fatalf("sftp write: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("sftp close: %v", err)
	}
	sc.Close()
	sftpConn.Close()
	if out := sshRun(t, client, "cat /work/hello"); out != "hello from sftp" {
		t.Errorf("file written over sftp reads %q", out)
	}
	client.Close()

	// The power button handler syncs, unmounts /work, remounts / read-only
	// and powers off: QEMU exits by itself and both filesystems are clean.
	if err := a.qmp.command("system_powerdown"); err != nil {
		t.Fatal(err)
	}
	if !a.proc.WaitExit(30 * time.Second) {
		t.Fatalf("QEMU still running 30 s after system_powerdown\nconsole:\n%s", mustRead(a.console))
	}
	if log := mustRead(a.console); !strings.Contains(log, "halt: poweroff") {
		t.Errorf("power button did not go through /etc/init.d/halt poweroff:\n%s", log)
	}
	ctx := context.Background()
	r := system.ExecRunner{}
	// The superblock counts mounts: proof that rcS mounted the work disk.
	if out, err := r.Run(ctx, "dumpe2fs", "-h", a.work); err != nil || !regexp.MustCompile(`(?m)^Mount count:\s+[1-9]`).Match(out) {
		t.Errorf("work disk was never mounted: %v\n%s", err, out)
	}
	for _, disk := range []string{a.rootfs, a.work} {
		if out, err := r.Run(ctx, "e2fsck", "-fn", disk); err != nil {
			t.Errorf("%s not clean after powerdown: %v\n%s", filepath.Base(disk), err, out)
		}
	}
	if out, err := r.Run(ctx, "debugfs", "-R", "cat /hello", a.work); err != nil || string(out) != "hello from sftp\n" {
		t.Errorf("work disk after powerdown: /hello = %q, %v", out, err)
	}
}

// hostKeyFromConsole parses the "banger-hostkey: ssh-ed25519 AAAA…" line
// guest-setup prints on first boot.
func hostKeyFromConsole(t *testing.T, log string) ssh.PublicKey {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "banger-hostkey: "); ok {
			key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rest))
			if err != nil {
				t.Fatalf("parsing host key %q: %v", rest, err)
			}
			return key
		}
	}
	t.Fatalf("no banger-hostkey line on the console:\n%s", log)
	return nil
}

// dialSSH connects to the guest, retrying while dropbear starts (port 22
// opens a moment after "rcS done").
func dialSSH(t *testing.T, n *guestNet, hostKey ssh.PublicKey) *ssh.Client {
	t.Helper()
	cfg := &ssh.ClientConfig{
		User:            "root",
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(n.signer)},
		HostKeyCallback: ssh.FixedHostKey(hostKey),
		// Only the pinned key's type: dropbear -R would otherwise make and
		// offer a fresh key of whatever type the client prefers.
		HostKeyAlgorithms: []string{hostKey.Type()},
		Timeout:           5 * time.Second,
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := ssh.Dial("tcp", net.JoinHostPort(n.guestIP, "22"), cfg)
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh to guest: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func sshRun(t *testing.T, c *ssh.Client, cmd string) string {
	t.Helper()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("ssh session: %v", err)
	}
	defer s.Close()
	out, err := s.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("ssh %q: %v\n%s", cmd, err, out)
	}
	return strings.TrimSpace(string(out))
}

func mustRead(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestCtrlAltDelRebootsCleanly checks the path Firecracker's SendCtrlAltDel
// takes: an i8042 Ctrl-Alt-Del makes busybox init run its ctrlaltdel entry,
// which syncs, unmounts /work, remounts / read-only and reboots at once.
// microvm has no i8042, so this boots "-M pc" (virtio-pci, also covered by the
// initramfs); with -no-reboot the reboot ends QEMU.
func TestCtrlAltDelRebootsCleanly(t *testing.T) {
	requireRoot(t)
	if !system.InPrivateNetNS() {
		t.Skip("boot test runs only in a private network namespace (TestMain re-exec as root)")
	}
	qemu, err := system.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	res := minimalImage(t)
	accel := "tcg" // see TestBootMinimalQEMU: nested KVM may not boot at all
	if a := os.Getenv("BANGER_TEST_ACCEL"); a != "" {
		accel = a
	}
	a := bootMinimal(t, qemu, res, "pc", accel, nil)
	if a.qmp == nil {
		t.Fatal("QEMU did not start")
	}
	if log, ok := waitForConsole(a.console, "rcS done", 60*time.Second); !ok {
		t.Fatalf("no \"rcS done\" within 60 s on -M pc:\n%s", log)
	}
	// busybox init installs its signal handlers before running rcS, so
	// the key press is not lost now.
	if err := a.qmp.sendKeys("ctrl", "alt", "delete"); err != nil {
		t.Fatal(err)
	}
	if !a.proc.WaitExit(30 * time.Second) {
		t.Fatalf("QEMU still running 30 s after Ctrl-Alt-Del\nconsole:\n%s", mustRead(a.console))
	}
	if log := mustRead(a.console); !strings.Contains(log, "halt: reboot") {
		t.Errorf("Ctrl-Alt-Del did not go through /etc/init.d/halt reboot:\n%s", log)
	}
	r := system.ExecRunner{}
	for _, disk := range []string{a.rootfs, a.work} {
		if out, err := r.Run(context.Background(), "e2fsck", "-fn", disk); err != nil {
			t.Errorf("%s not clean after Ctrl-Alt-Del: %v\n%s", filepath.Base(disk), err, out)
		}
	}
}
