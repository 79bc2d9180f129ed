// Package vmm holds what every VMM driver (Firecracker, QEMU) is given to run a
// VM. Drivers live in subpackages; the daemon declares the interface it needs.
package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/jail"
	"github.com/banger-dev/banger/internal/system"
)

// Machine is everything a driver needs to launch one VM. All paths are absolute
// and owned by the daemon; drivers never derive paths of their own.
type Machine struct {
	ID        string // VM id: lowercase hex, no hyphens; used as the VMM's instance id
	Name      string // VM name (guest hostname)
	VCPUs     int
	MemoryMiB int

	Binary string // VMM executable (firecracker or qemu-system-x86_64)
	Accel  string // qemu only: "kvm" or "tcg"

	Kernel string // kernel image (vmlinux for Firecracker)
	// VMLinux is the image's uncompressed kernel, if any: QEMU boots it
	// through PVH when it has PVH's entry note.
	VMLinux  string
	Initrd   string // optional
	BootArgs string // extra kernel arguments from the image; the driver adds console, ip= etc.

	RootDisk string // path of the root block device or file (read-write)
	WorkDisk string // path of the work disk image (read-write)

	TapDevice string // host tap name ("" = no network)
	GuestMAC  string // aa:bb:cc:dd:ee:ff
	GuestIP   string // e.g. 172.30.0.2
	GatewayIP string // host side of the bridge, e.g. 172.30.0.1
	Netmask   string // e.g. 255.255.255.0
	DNS       string // resolver for the guest, "" = none

	APISock     string // Firecracker API socket, or QEMU's QMP socket
	VSockPath   string // Firecracker hybrid vsock UDS
	VSockCID    uint32
	ConsoleLog  string // guest serial console output
	LogPath     string // VMM's own log (Firecracker logger)
	MetricsPath string // Firecracker metrics

	// Confine, when set, runs the VMM in a jail (see Start).
	Confine *Confinement
	// Jailer, when set (Firecracker only, never with Confine), runs the
	// VMM through Firecracker's own jailer: see docs/firecracker.md.
	Jailer *Jailer

	// AgentSock is the host end of the guest agent's channel (QEMU: a
	// virtio-serial port, see docs/snapshots.md). "" = agent.sock in the
	// directory of APISock.
	AgentSock string
	// Incoming, when set, makes Launch restore the VM from saved state
	// instead of booting it.
	Incoming *Incoming
	// ExtraFiles are inherited by the VMM as fd 3, 4, ... (through the jail
	// helper too). Drivers set them on their own copy of the Machine (QEMU's
	// -incoming fd:3); the daemon leaves this empty.
	ExtraFiles []*os.File
}

// Incoming is saved VM state for Launch to restore instead of booting.
// The machine must have the same memory, vCPUs and devices as when the
// state was saved; disk paths, the tap, the sockets, the VM's id and name
// may differ (a clone).
type Incoming struct {
	// File is the state: QEMU's state file written by qemu.Driver.Save, or
	// Firecracker's VM-state file (snapshot_path).
	File string
	// MemFile is Firecracker's guest-memory file (mem_file_path); unused
	// by QEMU, whose state file holds the memory.
	MemFile string
	// VMMVersion, when set, is the VMM version recorded at save; Launch
	// refuses a VMM of another version (state does not move between
	// versions). QEMU's state file also records its version itself.
	VMMVersion string
	// ShareMemory, for a clone, lets the VMM map the state's guest memory
	// copy-on-write, shared with the other clones of the same state,
	// instead of reading it into memory of the clone's own (QEMU; see
	// docs/snapshots.md). A resume leaves it false.
	ShareMemory bool
}

// Confinement runs a VMM through the banger-jail helper: its own uid/gid,
// cgroup, mount and PID namespaces, no capabilities.
type Confinement struct {
	Helper   string    // the banger-jail executable
	SpecPath string    // where the jail spec is written (a root-only directory)
	Spec     jail.Spec // everything but Argv, which Start fills
}

// Jailer is how a Firecracker VMM is run through Firecracker's jailer
// (firecracker_jailer): the jailer makes a chroot of its own under
// ChrootBase, joins the cgroups, drops to UID/GID and runs ExecFile in a
// new PID namespace.
type Jailer struct {
	Binary     string // the jailer executable
	ExecFile   string // absolute path of the firecracker binary the jailer copies into the chroot
	ChrootBase string // --chroot-base-dir
	UID, GID   int
	// CgroupVersion is 1 or 2; ParentCgroup is the jailer's
	// --parent-cgroup (the VM's cgroup is <hierarchy>/<ParentCgroup>/<id>);
	// Cgroups are "<file>=<value>" settings, one --cgroup each.
	CgroupVersion int
	ParentCgroup  string
	Cgroups       []string
	NetNS         string // --netns: a network namespace file to join; "" = stay in the daemon's
}

// ExecName is the file name of the firecracker binary, which names the
// chroot's parent directory, its copy in the chroot and the pid file.
func (j *Jailer) ExecName() string { return filepath.Base(j.ExecFile) }

// JailDir is <ChrootBase>/<ExecName>/<id>: all the jailer makes for one
// VM lies below it, and removing it removes the jail.
func (j *Jailer) JailDir(id string) string {
	return filepath.Join(j.ChrootBase, j.ExecName(), id)
}

// ChrootDir is the jail's root directory on the host, JailDir/root.
func (j *Jailer) ChrootDir(id string) string { return filepath.Join(j.JailDir(id), "root") }

// HostPath is the host path of a path inside the chroot.
func (j *Jailer) HostPath(id, inJail string) string {
	return filepath.Join(j.ChrootDir(id), filepath.Clean("/"+inJail))
}

// Remove removes the jail dir of VM id. It holds only what the driver and
// the jailer put there (links, nodes, the binary's copy, sockets, the pid
// file), so it goes whole, but never across a mount point: something
// mounted inside is not ours to delete. A jail that is not there is fine.
func (j *Jailer) Remove(id string) error {
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("refusing to remove the jail of id %q", id)
	}
	dir := j.JailDir(id)
	top, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if !top.IsDir() {
		return fmt.Errorf("jail %s is not a directory", dir)
	}
	dev := top.Sys().(*syscall.Stat_t).Dev
	err = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return err
		}
		st, err := os.Lstat(path)
		if err != nil {
			return err
		}
		if st.Sys().(*syscall.Stat_t).Dev != dev {
			return fmt.Errorf("%s is a mount point inside the jail: not removing it", path)
		}
		return nil
	})
	if err == nil {
		err = os.RemoveAll(dir)
	}
	if err != nil {
		return fmt.Errorf("remove jail %s: %w", dir, err)
	}
	return nil
}

// Start starts a VMM process with argv, its stdout and stderr appended to
// logPath: directly, or through the jail helper when m.Confine is set
// (then in new mount and PID namespaces; the returned process is the
// helper, which becomes the VMM when it execs). m.ExtraFiles are inherited
// as fd 3, 4, ... either way.
func Start(m Machine, argv []string, logPath string) (system.Process, error) {
	if m.Confine == nil {
		return system.StartDetached(system.DetachedSpec{Argv: argv, LogPath: logPath, ExtraFiles: m.ExtraFiles})
	}
	bin, err := system.LookPath(argv[0])
	if err != nil {
		return system.Process{}, fmt.Errorf("vmm %s: %w", argv[0], err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return system.Process{}, err
	}
	s := m.Confine.Spec
	s.Argv = append([]string{bin}, argv[1:]...)
	if err := jail.Write(m.Confine.SpecPath, s); err != nil {
		return system.Process{}, err
	}
	return system.StartDetached(system.DetachedSpec{
		Argv:       []string{m.Confine.Helper, m.Confine.SpecPath},
		LogPath:    logPath,
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		// The helper is a Go program: it leaves inherited descriptors open
		// across its exec of the VMM, so they arrive at the same numbers.
		ExtraFiles: m.ExtraFiles,
	})
}

// KernelIPArg renders the kernel ip= argument for m's static address
// (ip=<client>::<gw>:<mask>:<hostname>:eth0:off), or "" without networking.
func (m Machine) KernelIPArg() string {
	if m.GuestIP == "" {
		return ""
	}
	return "ip=" + m.GuestIP + "::" + m.GatewayIP + ":" + m.Netmask + ":" + m.Name + ":eth0:off"
}

// CloneIdentity is what makes a VM restored from another's state its own.
type CloneIdentity struct {
	MAC       string
	IP        string
	PrefixLen int
	Gateway   string
	Hostname  string
}
