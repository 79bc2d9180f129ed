//go:build linux

package agent

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, links, the CRNG ioctl")
	}
}

// inNetNS runs f on a thread of its own in a new network namespace with an
// eth0 (a veth); the thread is dropped afterwards.
func inNetNS(t *testing.T, f func(link netlink.Link)) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			return
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
			t.Errorf("veth eth0: %v", err)
			return
		}
		link, err := netlink.LinkByName("eth0")
		if err == nil {
			err = netlink.LinkSetUp(link)
		}
		if err != nil {
			t.Errorf("eth0: %v", err)
			return
		}
		f(link)
	}()
	<-done
}

func TestLinuxSetIPAndMAC(t *testing.T) {
	needRoot(t)
	inNetNS(t, func(link netlink.Link) {
		l := &Linux{Dev: "eth0"}
		gw := netip.MustParseAddr("10.9.0.1")
		for _, addr := range []string{"10.9.0.5/24", "10.9.0.6/24"} {
			if err := l.SetIP(netip.MustParsePrefix(addr), gw); err != nil {
				t.Errorf("SetIP %s: %v", addr, err)
				return
			}
			addrs, _ := netlink.AddrList(link, netlink.FAMILY_V4)
			if len(addrs) != 1 || addrs[0].IPNet.String() != addr {
				t.Errorf("after SetIP %s: addresses %v, want that one only", addr, addrs)
			}
			routes, _ := netlink.RouteList(link, netlink.FAMILY_V4)
			found := false
			for _, r := range routes {
				if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(net.ParseIP("10.9.0.1")) {
					found = true
				}
			}
			if !found {
				t.Errorf("after SetIP %s: no default route via %s in %v", addr, gw, routes)
			}
		}
		mac, _ := net.ParseMAC("02:00:00:aa:bb:cc")
		if err := l.SetMAC(mac); err != nil {
			t.Errorf("SetMAC: %v", err)
			return
		}
		got, _ := netlink.LinkByName("eth0")
		if got.Attrs().HardwareAddr.String() != mac.String() {
			t.Errorf("eth0's MAC is %s, want %s", got.Attrs().HardwareAddr, mac)
		}
		if err := (&Linux{Dev: "eth9"}).SetIP(netip.MustParsePrefix("10.9.0.7/24"), gw); err == nil {
			t.Error("SetIP on a missing device succeeded")
		}
	})
}

// sleeper starts a process of the test's own to stand for a dropbear.
func sleeper(t *testing.T) system.Process {
	t.Helper()
	p, err := system.StartDecoy([]string{"dropbear", "-F"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(time.Second) })
	return p
}

// fakeProc writes what restartSSHD reads of pid under root's /proc.
func fakeProc(t *testing.T, root string, pid int, comm string, ppid int) {
	t.Helper()
	dir := filepath.Join(root, "proc", strconv.Itoa(pid))
	os.MkdirAll(dir, 0o755)
	os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "stat"), []byte(strconv.Itoa(pid)+" ("+comm+") S "+strconv.Itoa(ppid)+" 1 1 0"), 0o644)
}

// InstallHostKey replaces the key file (mode 0600), drops the other key
// types, and ends the listening dropbear only: the one the sshd loop's pid
// file names, else one whose parent is init; never a session's.
func TestLinuxInstallHostKey(t *testing.T) {
	for _, withPidFile := range []bool{true, false} {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "etc/dropbear"), 0o700)
		os.MkdirAll(filepath.Join(root, "run"), 0o755)
		for _, k := range []string{"rsa", "ecdsa", "ed25519"} {
			os.WriteFile(filepath.Join(root, "etc/dropbear/dropbear_"+k+"_host_key"), []byte("old"), 0o600)
		}
		listener, session := sleeper(t), sleeper(t)
		fakeProc(t, root, listener.PID, "dropbear", 1)
		fakeProc(t, root, session.PID, "dropbear", listener.PID)
		if withPidFile {
			os.WriteFile(filepath.Join(root, "run/banger-sshd.pid"), []byte(strconv.Itoa(listener.PID)+"\n"), 0o644)
		}
		k, _ := NewHostKey()
		if _, err := (&Linux{Root: root}).InstallHostKey(k.Dropbear); err != nil {
			t.Fatal(err)
		}
		key := filepath.Join(root, DiskKeyPath)
		if b, err := os.ReadFile(key); err != nil || string(b) != string(k.Dropbear) {
			t.Errorf("pid file %v: key file %q, %v", withPidFile, b, err)
		}
		if st, _ := os.Stat(key); st == nil || st.Mode().Perm() != 0o600 {
			t.Errorf("pid file %v: key file mode %v", withPidFile, st)
		}
		if _, err := os.Stat(filepath.Join(root, "etc/dropbear/dropbear_rsa_host_key")); !os.IsNotExist(err) {
			t.Errorf("pid file %v: the rsa key is still there", withPidFile)
		}
		if !listener.WaitExit(2 * time.Second) {
			t.Errorf("pid file %v: the listener was not ended", withPidFile)
		}
		if !session.Alive() {
			t.Errorf("pid file %v: a session's dropbear was ended", withPidFile)
		}
	}
}

// With a runtime key, only that file is replaced (mode 0600): the keys on
// disk stay as they are, and the listener is still restarted when needed.
func TestLinuxInstallHostKeyRuntime(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/dropbear"), 0o700)
	os.MkdirAll(filepath.Join(root, "run/banger"), 0o755)
	for _, k := range []string{"rsa", "ed25519"} {
		os.WriteFile(filepath.Join(root, "etc/dropbear/dropbear_"+k+"_host_key"), []byte("old"), 0o600)
	}
	os.WriteFile(filepath.Join(root, RuntimeKeyPath), []byte("old"), 0o644)
	listener := sleeper(t)
	fakeProc(t, root, listener.PID, "dropbear", 1)
	os.WriteFile(filepath.Join(root, "run/banger-sshd.pid"), []byte(strconv.Itoa(listener.PID)), 0o644)
	k, _ := NewHostKey()
	if _, err := (&Linux{Root: root}).InstallHostKey(k.Dropbear); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(root, RuntimeKeyPath)
	if b, err := os.ReadFile(key); err != nil || string(b) != string(k.Dropbear) {
		t.Errorf("runtime key %q, %v", b, err)
	}
	if st, _ := os.Stat(key); st == nil || st.Mode().Perm() != 0o600 {
		t.Errorf("runtime key mode %v", st)
	}
	for _, k := range []string{"rsa", "ed25519"} {
		if b, _ := os.ReadFile(filepath.Join(root, "etc/dropbear/dropbear_"+k+"_host_key")); string(b) != "old" {
			t.Errorf("the %s key on disk was changed: %q", k, b)
		}
	}
	if !listener.WaitExit(2 * time.Second) {
		t.Error("the listener (no fexecve) was not ended")
	}
}

// A dropbear that re-executes itself for each connection (it imports
// fexecve, and its argv[0] is absolute) loads the new key by itself: the
// listener is left running. Any other is restarted.
func TestLinuxInstallHostKeyKeepsReexecListener(t *testing.T) {
	// A program that imports fexecve stands for dropbear 2022.83; Python
	// does (os.fexecve).
	reexec, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil {
		t.Skip("no /usr/bin/python3 to stand for a program importing fexecve")
	}
	plain, err := filepath.EvalSymlinks("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		exe, argv0 string
		kept       bool
	}{{reexec, "/usr/sbin/dropbear", true}, {reexec, "dropbear", false}, {plain, "/usr/sbin/dropbear", false}} {
		root := t.TempDir()
		os.MkdirAll(filepath.Join(root, "etc/dropbear"), 0o700)
		os.MkdirAll(filepath.Join(root, "run"), 0o755)
		listener := sleeper(t)
		fakeProc(t, root, listener.PID, "dropbear", 1)
		dir := filepath.Join(root, "proc", strconv.Itoa(listener.PID))
		os.WriteFile(filepath.Join(dir, "cmdline"), []byte(tc.argv0+"\x00-F\x00-R\x00"), 0o644)
		os.Symlink(tc.exe, filepath.Join(dir, "exe"))
		os.WriteFile(filepath.Join(root, "run/banger-sshd.pid"), []byte(strconv.Itoa(listener.PID)), 0o644)
		// WarmUp checks the guest's dropbear (here the same program as
		// the listener's) once; InstallHostKey then uses what it found.
		os.MkdirAll(filepath.Join(root, "usr/sbin"), 0o755)
		os.Symlink(tc.exe, filepath.Join(root, "usr/sbin/dropbear"))
		l := &Linux{Root: root}
		l.WarmUp()
		k, _ := NewHostKey()
		if _, err := l.InstallHostKey(k.Dropbear); err != nil {
			t.Fatal(err)
		}
		if ended := listener.WaitExit(500 * time.Millisecond); ended == tc.kept {
			t.Errorf("exe %s, argv[0] %s: listener ended %v, want kept %v", tc.exe, tc.argv0, ended, tc.kept)
		}
		if l.elfReads != 1 {
			t.Errorf("exe %s, argv[0] %s: %d ELF reads, want the warm-up's only", tc.exe, tc.argv0, l.elfReads)
		}
	}
}

func TestLinuxSetHostnameFiles(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	if err := (&Linux{Root: root}).SetHostname("web-2"); err != nil {
		t.Fatal(err)
	}
	h, _ := os.ReadFile(filepath.Join(root, "etc/hostname"))
	hosts, _ := os.ReadFile(filepath.Join(root, "etc/hosts"))
	if string(h) != "web-2\n" || string(hosts) != "127.0.0.1\tlocalhost\n127.0.1.1\tweb-2\n::1\tlocalhost ip6-localhost ip6-loopback\n" {
		t.Errorf("hostname %q, hosts %q", h, hosts)
	}
}

// With the runtime layout (a runtime key, /etc/hosts a link into /run),
// SetHostname writes /etc/hosts through its link and leaves /etc/hostname
// to the host.
func TestLinuxSetHostnameRuntimeLayout(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "run/banger"), 0o755)
	os.WriteFile(filepath.Join(root, RuntimeKeyPath), []byte("key"), 0o600)
	os.WriteFile(filepath.Join(root, "etc/hostname"), []byte("source\n"), 0o644)
	os.Symlink("../run/banger/hosts", filepath.Join(root, "etc/hosts"))
	if err := (&Linux{Root: root}).SetHostname("web-2"); err != nil {
		t.Fatal(err)
	}
	h, _ := os.ReadFile(filepath.Join(root, "etc/hostname"))
	hosts, _ := os.ReadFile(filepath.Join(root, "run/banger/hosts"))
	if string(h) != "source\n" || !strings.Contains(string(hosts), "127.0.1.1\tweb-2\n") {
		t.Errorf("hostname %q, hosts %q", h, hosts)
	}
	if fi, err := os.Lstat(filepath.Join(root, "etc/hosts")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("/etc/hosts is no longer a link: %v %v", fi, err)
	}
}

// Reseed's ioctl is RNDRESEEDCRNG: as root it succeeds (an unknown ioctl
// would be ENOTTY); it reseeds this host's CRNG, which is harmless.
func TestLinuxReseed(t *testing.T) {
	needRoot(t)
	if err := (&Linux{}).Reseed([]byte("banger test seed")); err != nil {
		t.Fatal(err)
	}
}

// A guest whose boot made OpenSSH's runtime key (the debian image) gets the
// key there in OpenSSH's format, mode 0600, and "openssh" back; its disk
// key and the dropbear paths stay untouched, and no process is signalled
// (sshd loads its keys for every connection).
func TestLinuxInstallHostKeyOpenSSH(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/ssh"), 0o755)
	os.MkdirAll(filepath.Join(root, "run/banger"), 0o755)
	os.WriteFile(filepath.Join(root, OpenSSHDiskKeyPath), []byte("old"), 0o600)
	os.WriteFile(filepath.Join(root, OpenSSHRuntimeKeyPath), []byte("old"), 0o600)
	listener := sleeper(t)
	fakeProc(t, root, listener.PID, "dropbear", 1) // would be ended if taken for dropbear's
	l := &Linux{Root: root}
	if !l.runtimeLayout() {
		t.Error("OpenSSH's runtime key is not taken for the runtime layout")
	}
	k, _ := NewHostKey()
	server, err := l.InstallHostKey(k.Dropbear)
	if err != nil || server != ServerOpenSSH {
		t.Fatalf("InstallHostKey = %q, %v; want openssh", server, err)
	}
	b, err := os.ReadFile(filepath.Join(root, OpenSSHRuntimeKeyPath))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatalf("the runtime key is not an OpenSSH key: %v\n%s", err, b)
	}
	if got := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))); got != k.Public {
		t.Errorf("runtime key's public half %q, want %q", got, k.Public)
	}
	if st, _ := os.Stat(filepath.Join(root, OpenSSHRuntimeKeyPath)); st == nil || st.Mode().Perm() != 0o600 {
		t.Errorf("runtime key mode %v", st)
	}
	if b, _ := os.ReadFile(filepath.Join(root, OpenSSHDiskKeyPath)); string(b) != "old" {
		t.Errorf("the key on disk was changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(root, DiskKeyPath)); err == nil {
		t.Error("a dropbear key was written in an OpenSSH guest")
	}
	if listener.WaitExit(200 * time.Millisecond) {
		t.Error("a process was ended for an OpenSSH key change")
	}
}
