package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Firecracker through its jailer (m.Jailer set). The jailer makes
// <base>/<exec name>/<id>/root, copies the firecracker binary there, joins
// the cgroups, pivots into that root, drops to the VM's uid/gid and runs
// Firecracker in a new PID namespace, writing its PID (as the host sees it)
// to <root>/<exec name>.pid. Firecracker then only sees the chroot, so the
// driver places every file it names there beforehand (hard links; a node of
// its own for a block device) and gives Firecracker the in-chroot paths
// below. The jail dir exists only while the VMM runs: Launch makes it fresh
// (the jailer refuses an existing pid file) and Shutdown removes it.

// In-chroot paths of what the driver places in the jail.
const (
	jailAPISock = "/run/firecracker.socket"
	jailKernel  = "/vmlinux"
	jailInitrd  = "/initrd"
	jailRootfs  = "/rootfs"
	jailWork    = "/work"
	jailLog     = "/firecracker.log"
	jailMetrics = "/metrics.json"
	jailVSock   = "/vsock.sock"
)

// maxSockPath is the longest unix socket path (sun_path less its NUL).
const maxSockPath = 107

var jailerIDPattern = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// validateJailer checks m's jailer settings before anything is made.
func validateJailer(m vmm.Machine) error {
	j := m.Jailer
	switch {
	case !jailerIDPattern.MatchString(m.ID):
		return fmt.Errorf("jailer id %q: want 1 to 64 letters, digits or hyphens", m.ID)
	case m.Confine != nil:
		return errors.New("a machine runs through banger-jail or the jailer, not both")
	case m.Incoming != nil:
		return errors.New("restoring a snapshot through the jailer is not supported")
	case !filepath.IsAbs(j.Binary) || !filepath.IsAbs(j.ExecFile) || !filepath.IsAbs(j.ChrootBase):
		return fmt.Errorf("jailer %q, exec file %q and chroot base %q must be absolute paths", j.Binary, j.ExecFile, j.ChrootBase)
	case j.UID <= 0 || j.GID <= 0:
		return fmt.Errorf("jailer uid %d gid %d: firecracker never runs as root", j.UID, j.GID)
	case j.CgroupVersion != 1 && j.CgroupVersion != 2:
		return fmt.Errorf("jailer cgroup version %d: want 1 or 2", j.CgroupVersion)
	case j.ParentCgroup != "" && (filepath.IsAbs(j.ParentCgroup) || hasComponent(j.ParentCgroup, "..") || hasComponent(j.ParentCgroup, ".")):
		return fmt.Errorf("jailer parent cgroup %q: want a relative path without . or ..", j.ParentCgroup)
	case len(j.HostPath(m.ID, jailAPISock)) > maxSockPath:
		return fmt.Errorf("jailer api socket %s: longer than %d bytes, the limit of a unix socket path (choose a shorter chroot base)", j.HostPath(m.ID, jailAPISock), maxSockPath)
	}
	for _, c := range j.Cgroups {
		file, value, ok := strings.Cut(c, "=")
		if !ok || value == "" || strings.Contains(value, "=") || file == "" || strings.Contains(file, "/") || !strings.Contains(file, ".") {
			return fmt.Errorf("jailer cgroup setting %q: want <controller>.<file>=<value>", c)
		}
	}
	return nil
}

// hasComponent reports whether a path has elem as one of its components.
func hasComponent(path, elem string) bool {
	for _, c := range strings.Split(path, "/") {
		if c == elem {
			return true
		}
	}
	return false
}

// JailerArgv is the jailer command line that runs m's Firecracker: always
// with --new-pid-ns (the VMM is the init of a PID namespace of its own),
// never --daemonize (its stdout is the guest console) and never --id after
// "--" (the jailer passes it; a duplicate makes Firecracker exit 153).
func JailerArgv(m vmm.Machine) ([]string, error) {
	if m.Jailer == nil {
		return nil, errors.New("machine has no jailer")
	}
	if err := validateJailer(m); err != nil {
		return nil, err
	}
	j := m.Jailer
	argv := []string{j.Binary,
		"--id", m.ID,
		"--exec-file", j.ExecFile,
		"--uid", strconv.Itoa(j.UID),
		"--gid", strconv.Itoa(j.GID),
		"--chroot-base-dir", j.ChrootBase,
		"--cgroup-version", strconv.Itoa(j.CgroupVersion),
	}
	if j.ParentCgroup != "" {
		argv = append(argv, "--parent-cgroup", j.ParentCgroup)
	}
	for _, c := range j.Cgroups {
		argv = append(argv, "--cgroup", c)
	}
	if j.NetNS != "" {
		argv = append(argv, "--netns", j.NetNS)
	}
	return append(argv, "--new-pid-ns", "--", "--api-sock", jailAPISock), nil
}

// jailedView is m as Firecracker sees it from inside the chroot, except
// APISock, which stays the host's path of the chroot's socket (the driver
// dials it; Firecracker is told jailAPISock on its command line).
func jailedView(m vmm.Machine) vmm.Machine {
	jm := m
	j := m.Jailer
	jm.APISock = j.HostPath(m.ID, jailAPISock)
	set := func(p *string, inJail string) {
		if *p != "" {
			*p = inJail
		}
	}
	set(&jm.Kernel, jailKernel)
	set(&jm.Initrd, jailInitrd)
	set(&jm.RootDisk, jailRootfs)
	set(&jm.WorkDisk, jailWork)
	set(&jm.LogPath, jailLog)
	set(&jm.MetricsPath, jailMetrics)
	set(&jm.VSockPath, jailVSock)
	return jm
}

// launchJailed is Launch through the jailer.
func (d *Driver) launchJailed(ctx context.Context, m vmm.Machine) (system.Process, error) {
	argv, err := JailerArgv(m)
	if err != nil {
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: %w", m.ID, err)
	}
	// The jailer names the chroot after the canonical exec file.
	if real, err := filepath.EvalSymlinks(m.Jailer.ExecFile); err != nil || real != m.Jailer.ExecFile {
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: exec file %s must be the binary's real path (resolves to %q, %v)", m.ID, m.Jailer.ExecFile, real, err)
	}
	if p, ok := d.FindProcess(m); ok {
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: it already runs in its jail (pid %d)", m.ID, p.PID)
	}
	// A jail dir left by a crash: no VMM runs in it (just checked).
	if err := removeJail(m); err != nil {
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s: %w", m.ID, err)
	}
	fail := func(err error) (system.Process, error) {
		if rerr := removeJail(m); rerr != nil {
			d.log().Warn("remove jail after failed launch", "vm", m.ID, "err", rerr)
		}
		return system.Process{}, fmt.Errorf("launch firecracker for vm %s through the jailer: %w", m.ID, err)
	}
	if err := prepareJail(m); err != nil {
		return fail(err)
	}
	jp, err := system.StartDetached(system.DetachedSpec{Argv: argv, LogPath: m.ConsoleLog})
	if err != nil {
		return fail(err)
	}
	d.log().Debug("jailer spawned", "vm", m.ID, "pid", jp.PID, "argv", argv)
	p, err := d.waitJailedPID(ctx, m, jp)
	if err != nil {
		if jp.Alive() {
			_ = jp.Kill(killWait)
		}
		return fail(err)
	}
	jm := jailedView(m)
	err = d.configure(ctx, jm, p)
	if err == nil {
		// The process the pid file names must be the jail's Firecracker.
		err = proveJailed(m, p)
	}
	if err != nil {
		if kerr := p.Kill(killWait); kerr != nil {
			d.log().Warn("kill firecracker after failed launch", "vm", m.ID, "pid", p.PID, "err", kerr)
		}
		return fail(err)
	}
	return p, nil
}

// prepareJail makes the chroot and places m's files in it at the paths of
// jailedView. The jailer itself adds /dev, /run and the binary.
func prepareJail(m vmm.Machine) error {
	j := m.Jailer
	if err := os.MkdirAll(j.ChrootBase, 0o755); err != nil {
		return err
	}
	root := j.ChrootDir(m.ID)
	if err := os.MkdirAll(root, 0o700); err != nil {
		return err
	}
	for _, f := range []struct {
		host, jail string
		rw         bool
	}{
		{m.Kernel, jailKernel, false},
		{m.Initrd, jailInitrd, false},
		{m.RootDisk, jailRootfs, true},
		{m.WorkDisk, jailWork, true},
	} {
		if f.host == "" {
			continue
		}
		if err := placeFile(j, f.host, filepath.Join(root, f.jail), f.rw); err != nil {
			return err
		}
	}
	// Firecracker's log and metrics go to files the daemon can read: made
	// on the host, owned by the VM's user, linked into the chroot.
	for _, f := range []struct{ host, jail string }{{m.LogPath, jailLog}, {m.MetricsPath, jailMetrics}} {
		if f.host == "" {
			continue
		}
		if err := createOwnedFile(f.host, j.UID, j.GID); err != nil {
			return err
		}
		if err := placeFile(j, f.host, filepath.Join(root, f.jail), true); err != nil {
			return err
		}
	}
	return nil
}

// placeFile makes host visible at dst in the chroot: a block device gets a
// node of its own (same device number, owned by the VM's user); a regular
// file is hard-linked, or copied when read-only and on another filesystem.
func placeFile(j *vmm.Jailer, host, dst string, rw bool) error {
	st, err := os.Stat(host)
	if err != nil {
		return fmt.Errorf("placing %s in the jail: %w", host, err)
	}
	switch {
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		sys := st.Sys().(*syscall.Stat_t)
		if err := unix.Mknod(dst, unix.S_IFBLK|0o600, int(sys.Rdev)); err != nil {
			return fmt.Errorf("node of %s in the jail: %w", host, err)
		}
		return os.Chown(dst, j.UID, j.GID)
	case !st.Mode().IsRegular():
		return fmt.Errorf("placing %s in the jail: not a regular file or block device", host)
	}
	err = os.Link(host, dst)
	if errors.Is(err, unix.EXDEV) && !rw {
		return copyFile(host, dst)
	}
	if errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("hard-linking %s into the jail %s: they are on different filesystems; the jailer's chroot base must be on the filesystem of the VMs' disks", host, filepath.Dir(dst))
	}
	if err != nil {
		return fmt.Errorf("hard-linking %s into the jail: %w", host, err)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copying %s into the jail: %w", src, err)
	}
	return out.Close()
}

// createOwnedFile makes sure path is a regular file (never through a
// symlink) owned by uid:gid.
func createOwnedFile(path string, uid, gid int) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|unix.O_NOFOLLOW, 0o640)
	if err != nil {
		return fmt.Errorf("preparing %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Chown(uid, gid); err != nil {
		return fmt.Errorf("giving %s to uid %d: %w", path, uid, err)
	}
	return nil
}

// waitJailedPID waits for the jailer jp to write the pid file of the
// Firecracker it cloned into a new PID namespace, and returns that process.
// A jailer that exits without writing it ends the wait with its output.
func (d *Driver) waitJailedPID(ctx context.Context, m vmm.Machine, jp system.Process) (system.Process, error) {
	j := m.Jailer
	pidFile := filepath.Join(j.ChrootDir(m.ID), j.ExecName()+".pid")
	timeout := d.SocketTimeout
	if timeout <= 0 {
		timeout = defaultSockTO
	}
	deadline := time.Now().Add(timeout)
	for {
		jailerGone := !jp.Alive()
		if pid, ok := readPIDFile(pidFile); ok {
			st, err := system.ProcStartTime(pid)
			if err != nil {
				return system.Process{}, fmt.Errorf("firecracker (pid %d from %s) exited at once; output: %s", pid, pidFile, consoleTail(m.ConsoleLog))
			}
			return system.Process{PID: pid, Start: st}, nil
		}
		if jailerGone {
			return system.Process{}, fmt.Errorf("jailer exited without writing %s; output: %s", pidFile, consoleTail(m.ConsoleLog))
		}
		if time.Now().After(deadline) {
			return system.Process{}, fmt.Errorf("jailer wrote no %s within %s", pidFile, timeout)
		}
		select {
		case <-ctx.Done():
			return system.Process{}, ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

// readPIDFile reads a complete pid file: a regular file (not a symlink)
// holding a positive number.
func readPIDFile(path string) (int, bool) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 32))
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, err == nil && pid > 0
}

// matchesJailedArgv reports whether argv is that of the jailer's Firecracker
// for m: the binary's copy at the chroot's root and the exact pairs
// "--id <m.ID>" and "--api-sock <jailAPISock>".
func matchesJailedArgv(m vmm.Machine, argv []string) bool {
	return m.ID != "" && len(argv) > 0 && argv[0] == "/"+m.Jailer.ExecName() &&
		system.ArgvHasPair(argv, "--id", m.ID) && system.ArgvHasPair(argv, "--api-sock", jailAPISock)
}

// proveJailed proves from the kernel that p is the Firecracker of m's jail:
// alive, its argv that of matchesJailedArgv, and its executable the very
// file the jailer copied into m's chroot (same device and inode), which no
// other VM's Firecracker runs.
func proveJailed(m vmm.Machine, p system.Process) error {
	if !p.Alive() {
		return fmt.Errorf("process %d is not running", p.PID)
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		return fmt.Errorf("read argv of %d: %w", p.PID, err)
	}
	if !matchesJailedArgv(m, argv) {
		return fmt.Errorf("process %d is not the jailed firecracker of vm %s (argv %q)", p.PID, m.ID, argv)
	}
	copyPath := m.Jailer.HostPath(m.ID, m.Jailer.ExecName())
	exe, err := os.Stat(fmt.Sprintf("/proc/%d/exe", p.PID))
	if err != nil {
		return fmt.Errorf("executable of %d: %w", p.PID, err)
	}
	want, err := os.Lstat(copyPath)
	if err != nil || !os.SameFile(exe, want) {
		return fmt.Errorf("process %d does not run %s, the firecracker of vm %s's jail", p.PID, copyPath, m.ID)
	}
	if !p.Alive() { // the PID could have been reused while we read
		return fmt.Errorf("process %d is not running", p.PID)
	}
	return nil
}

// jailedAPISock is the host path of m's API socket in its chroot, refused
// when a component below the chroot is not what the driver expects (a
// symlink there, made by a compromised VMM, could point anywhere on the host).
func jailedAPISock(m vmm.Machine) (string, error) {
	root := m.Jailer.ChrootDir(m.ID)
	run := filepath.Join(root, filepath.Dir(jailAPISock))
	if st, err := os.Lstat(run); err != nil || !st.IsDir() {
		return "", fmt.Errorf("jail of vm %s: %s is not a directory", m.ID, run)
	}
	sock := m.Jailer.HostPath(m.ID, jailAPISock)
	if st, err := os.Lstat(sock); err != nil || st.Mode()&os.ModeSocket == 0 {
		return "", fmt.Errorf("jail of vm %s: %s is not a socket", m.ID, sock)
	}
	return sock, nil
}

// removeJail removes m's jail dir (see vmm.Jailer.Remove).
func removeJail(m vmm.Machine) error {
	if !jailerIDPattern.MatchString(m.ID) {
		return fmt.Errorf("refusing to remove the jail of id %q", m.ID)
	}
	return m.Jailer.Remove(m.ID)
}
