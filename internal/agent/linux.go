//go:build linux

package agent

import (
	"debug/elf"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// rndReseedCRNG is RNDRESEEDCRNG, _IO('R', 0x07): reseed the CRNG from
// the input pool now (Linux 4.17 and later; needs CAP_SYS_ADMIN).
const rndReseedCRNG = 0x5207

// Linux is the System of a banger guest: eth0, dropbear's key files and
// the sshd loop's pid file, under Root ("" = /).
type Linux struct {
	Dev  string // the network device, eth0 by default
	Root string // prefix for the files it writes, for tests

	// reexec caches, by the program's device and inode, whether a
	// dropbear re-executes itself for each connection (see reloadsKeys):
	// WarmUp fills it before any state is saved, so that a clone does not
	// read and parse dropbear's ELF (tens of ms of cold code under TCG).
	reexec map[fileID]bool
	// elfReads counts the ELF checks made, for tests.
	elfReads int
}

type fileID struct{ dev, ino uint64 }

// NewLinux returns the System for this guest's eth0.
func NewLinux() *Linux { return &Linux{Dev: "eth0"} }

func (l *Linux) path(p string) string { return filepath.Join(l.Root, p) }

func (l *Linux) link() (netlink.Link, error) {
	dev := l.Dev
	if dev == "" {
		dev = "eth0"
	}
	return netlink.LinkByName(dev)
}

// SetTime sets CLOCK_REALTIME.
func (l *Linux) SetTime(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// SetIP replaces eth0's IPv4 addresses with addr and, when gw is valid,
// the default route with one via gw.
func (l *Linux) SetIP(addr netip.Prefix, gw netip.Addr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	old, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, a := range old {
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("removing %s: %w", a.IPNet, err)
		}
	}
	ipnet := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fmt.Errorf("adding %s: %w", addr, err)
	}
	if gw.IsValid() {
		if err := defaultRoute(link, gw); err != nil {
			return fmt.Errorf("cannot route via %s: %w", gw, err)
		}
	}
	return nil
}

func defaultRoute(link netlink.Link, gw netip.Addr) error {
	return netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
}

// SetMAC gives eth0 mac. virtio-net takes a new address while up;
// otherwise the device goes down for the change and comes back with its
// default route (which the kernel drops with the link).
func (l *Linux) SetMAC(mac net.HardwareAddr) error {
	link, err := l.link()
	if err != nil {
		return err
	}
	if err := netlink.LinkSetHardwareAddr(link, mac); err == nil {
		return nil
	}
	var gw netip.Addr
	if routes, err := netlink.RouteList(link, netlink.FAMILY_V4); err == nil {
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw != nil {
				gw, _ = netip.AddrFromSlice(r.Gw.To4())
			}
		}
	}
	if err := netlink.LinkSetDown(link); err != nil {
		return err
	}
	err = netlink.LinkSetHardwareAddr(link, mac)
	if upErr := netlink.LinkSetUp(link); err == nil {
		err = upErr
	}
	if err == nil && gw.IsValid() {
		err = defaultRoute(link, gw)
	}
	return err
}

// SetHostname sets the kernel's hostname and /etc/hosts, and, without the
// runtime layout, /etc/hostname. With it, /etc/hosts is a link into /run
// and /etc/hostname is left to the host, which writes it before every cold
// boot: no write to the disk's file system (see InstallHostKey).
func (l *Linux) SetHostname(name string) error {
	if l.Root == "" {
		if err := unix.Sethostname([]byte(name)); err != nil {
			return err
		}
	}
	if !l.runtimeLayout() {
		if err := os.WriteFile(l.path("/etc/hostname"), []byte(name+"\n"), 0o644); err != nil {
			return err
		}
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n", name)
	return os.WriteFile(l.path("/etc/hosts"), []byte(hosts), 0o644)
}

// Reseed writes seed to /dev/urandom, which mixes it into the input pool
// but credits no entropy, and then asks the kernel to reseed its CRNG from
// that pool now (it would otherwise on its own schedule, up to a minute
// later).
func (l *Linux) Reseed(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(seed); err != nil {
		return fmt.Errorf("cannot write /dev/urandom: %w", err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), rndReseedCRNG, 0); err != nil {
		return fmt.Errorf("seed mixed in, but the CRNG reseed failed: %w", err)
	}
	return nil
}

const (
	// DiskKeyPath is dropbear's ed25519 host key on the guest's disk.
	DiskKeyPath = "/etc/dropbear/dropbear_ed25519_host_key"
	// RuntimeKeyPath is the host key dropbear serves in images whose boot
	// copies the disk's key there (tmpfs; the sshd loop passes it with -r
	// when it exists). A clone's new key is written there only: the host
	// writes it to the clone's disk before the clone's next cold boot.
	RuntimeKeyPath = "/run/banger/dropbear_ed25519_host_key"
)

const (
	// ServerDropbear and ServerOpenSSH name the SSH server InstallHostKey
	// installed a key for.
	ServerDropbear = "dropbear"
	ServerOpenSSH  = "openssh"
	// OpenSSHDiskKeyPath is the ed25519 host key on the disk of a guest
	// that runs OpenSSH's server (the debian image).
	OpenSSHDiskKeyPath = "/etc/ssh/ssh_host_ed25519_key"
	// OpenSSHRuntimeKeyPath is the copy of it that sshd serves (HostKey in
	// sshd_config.d/banger.conf), made by guest-setup at every boot.
	OpenSSHRuntimeKeyPath = "/run/banger/ssh_host_ed25519_key"
)

// runtimeLayout reports whether this guest's boot keeps its identity
// files on tmpfs: a runtime key for dropbear or for OpenSSH's sshd.
func (l *Linux) runtimeLayout() bool {
	return l.exists(RuntimeKeyPath) || l.exists(OpenSSHRuntimeKeyPath)
}

func (l *Linux) exists(p string) bool {
	_, err := os.Stat(l.path(p))
	return err == nil
}

// installOpenSSHKey replaces the key sshd serves, in OpenSSH's format.
// sshd re-executes itself for every connection, and the new process loads
// its host keys: nothing to restart.
func (l *Linux) installOpenSSHKey(dropbear []byte) error {
	priv, _, err := OpenSSHKey(dropbear)
	if err != nil {
		return err
	}
	return writeKeyFile(l.path(OpenSSHRuntimeKeyPath), priv)
}

// writeKeyFile replaces the host key file key with data (mode 0600)
// through a temporary file beside it, so the SSH server never reads a
// partial key.
func writeKeyFile(key string, data []byte) error {
	tmp := key + ".new"
	os.Remove(tmp)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("cannot write the key: %w", err)
	}
	if err := os.Rename(tmp, key); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cannot write the key: %w", err)
	}
	return nil
}

// InstallHostKey replaces dropbear's ed25519 host key, then restarts the
// listening server if it would keep serving the key it read at its start.
// With a runtime key (RuntimeKeyPath exists) only that file is replaced: in
// a clone just restored under TCG, the first write to an ext4 file system
// costs hundreds of ms of CPU. Without one, the key file on disk is
// replaced and dropbear's other keys, which the clone would share with its
// source, are removed.
//
// A guest whose boot made OpenSSH's runtime key (and no dropbear one) gets
// the key in OpenSSH's format there instead (installOpenSSHKey).
func (l *Linux) InstallHostKey(dropbear []byte) (string, error) {
	runtime := l.exists(RuntimeKeyPath)
	if !runtime && l.exists(OpenSSHRuntimeKeyPath) {
		return ServerOpenSSH, l.installOpenSSHKey(dropbear)
	}
	return ServerDropbear, l.installDropbearKey(dropbear, runtime)
}

func (l *Linux) installDropbearKey(dropbear []byte, runtime bool) error {
	key := l.path(RuntimeKeyPath)
	if !runtime {
		key = l.path(DiskKeyPath)
	}
	if err := writeKeyFile(key, dropbear); err != nil {
		return err
	}
	if !runtime {
		for _, k := range []string{"rsa", "ecdsa", "dss"} {
			os.Remove(l.path("/etc/dropbear/dropbear_" + k + "_host_key"))
		}
	}
	return l.restartSSHD()
}

// WarmUp does, before any state of the guest is saved, the checks a
// clone's InstallHostKey would otherwise make cold: whether the guest's
// dropbear re-executes itself for each connection.
func (l *Linux) WarmUp() {
	l.reexecs(l.path("/usr/sbin/dropbear"))
}

// restartSSHD has the SSH server serve the new key: it ends the listening
// dropbear unless that one already loads its keys afresh for every
// connection. The sshd loop (/usr/lib/banger/sshd) starts an ended
// listener again at once, and open sessions, its children, stay. SIGKILL:
// the listener holds nothing to save, and its SIGTERM handler costs tens of
// ms in a guest just restored.
func (l *Linux) restartSSHD() error {
	for _, pid := range l.listeners() {
		if l.reloadsKeys(pid) {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
	}
	return nil
}

// listeners are the listening dropbear: the one the sshd loop recorded,
// else each dropbear whose parent is init or the loop (never a session's).
func (l *Linux) listeners() []int {
	if b, err := os.ReadFile(l.path("/run/banger-sshd.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && l.comm(pid) == "dropbear" {
			return []int{pid}
		}
	}
	dirs, err := os.ReadDir(l.path("/proc"))
	if err != nil {
		return nil
	}
	var out []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || l.comm(pid) != "dropbear" {
			continue
		}
		stat, err := os.ReadFile(l.path(fmt.Sprintf("/proc/%d/stat", pid)))
		if err != nil {
			continue
		}
		// The parent is the fourth field, after the ")" that ends comm.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 2 {
			continue
		}
		cmdline, _ := os.ReadFile(l.path("/proc/" + f[1] + "/cmdline"))
		if f[1] == "1" || strings.Contains(string(cmdline), "banger/sshd") {
			out = append(out, pid)
		}
	}
	return out
}

// reloadsKeys reports whether the listening dropbear pid loads its host
// keys afresh for every connection, so that a new key file needs no
// restart. Since 2022.82, on Linux, dropbear re-executes itself for each
// connection (fexecve of its own program, opened by its argv[0]), and the
// new process loads the keys; it falls back to a plain fork, which keeps
// the listener's keys, when it cannot open argv[0]. So: an absolute argv[0]
// and a program that imports fexecve. Skipping the restart spares a clone
// an exec of dropbear (hundreds of ms under TCG just after a restore) and
// its SSH server is never down.
func (l *Linux) reloadsKeys(pid int) bool {
	cmdline, err := os.ReadFile(l.path(fmt.Sprintf("/proc/%d/cmdline", pid)))
	argv0, _, _ := strings.Cut(string(cmdline), "\x00")
	if err != nil || !filepath.IsAbs(argv0) {
		return false
	}
	return l.reexecs(l.path(fmt.Sprintf("/proc/%d/exe", pid)))
}

// reexecs reports whether the program at exe imports fexecve, from the
// cache when the same file was checked before.
func (l *Linux) reexecs(exe string) bool {
	var st unix.Stat_t
	if err := unix.Stat(exe, &st); err != nil {
		return false
	}
	id := fileID{uint64(st.Dev), st.Ino}
	if v, ok := l.reexec[id]; ok {
		return v
	}
	l.elfReads++
	v := importsFexecve(exe)
	if l.reexec == nil {
		l.reexec = map[fileID]bool{}
	}
	l.reexec[id] = v
	return v
}

func importsFexecve(exe string) bool {
	f, err := elf.Open(exe)
	if err != nil {
		return false
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return false
	}
	for _, s := range syms {
		if s.Name == "fexecve" && s.Section == elf.SHN_UNDEF {
			return true
		}
	}
	return false
}

func (l *Linux) comm(pid int) string {
	b, _ := os.ReadFile(l.path(fmt.Sprintf("/proc/%d/comm", pid)))
	return strings.TrimSpace(string(b))
}
