package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/banger-dev/banger/internal/system"
	"golang.org/x/sys/unix"
)

const noFollow = unix.O_NOFOLLOW

func ownedByRoot(st os.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && sys.Uid == 0
}

// Enter confines the calling process as s says and execs the VMM; it
// returns only on failure. The caller must be root, in a new mount
// namespace (and, ideally, a new PID namespace).
func Enter(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	// 1. The cgroup first: every process the VMM makes stays in it.
	for _, p := range s.CgroupProcs {
		if err := os.WriteFile(p, []byte("0"), 0); err != nil {
			return fmt.Errorf("jail: joining cgroup %s: %w", filepath.Dir(p), err)
		}
	}
	// 2. Nothing mounted here propagates to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("jail: making mounts private: %w", err)
	}
	root := s.Root
	// The root tmpfs holds the jail's own device nodes: not nodev; noexec
	// (programs come from the read-only system dir binds).
	if err := unix.Mount("tmpfs", root, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=16m"); err != nil {
		return fmt.Errorf("jail: tmpfs on %s: %w", root, err)
	}
	bind := func(path string, readOnly bool, flags uintptr) error {
		st, err := os.Stat(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		dst := filepath.Join(root, path)
		if st.IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		} else if _, err := os.Lstat(dst); err != nil {
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o600)
			if err != nil {
				return err
			}
			f.Close()
		}
		if err := unix.Mount(path, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("binding %s: %w", path, err)
		}
		if readOnly || flags != 0 {
			fl := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_NOSUID)
			if readOnly {
				fl |= unix.MS_RDONLY
			}
			fl |= flags
			if err := unix.Mount("", dst, "", fl, ""); err != nil {
				return fmt.Errorf("remounting %s: %w", path, err)
			}
		}
		return nil
	}
	// proc and a private /tmp first: binds below /tmp land inside it.
	for _, d := range []string{"proc", "tmp", "run"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("jail: mounting proc: %w", err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(root, "tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777,size=16m"); err != nil {
		return fmt.Errorf("jail: mounting tmp: %w", err)
	}
	for _, d := range SystemDirs {
		if err := bind(d, true, 0); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	}
	for _, b := range s.Binds {
		if err := bind(b.Path, b.ReadOnly, unix.MS_NODEV); err != nil {
			return fmt.Errorf("jail: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "dev"), 0o755); err != nil {
		return err
	}
	// Device nodes of the jail's own, as the Firecracker jailer makes
	// them: same numbers as the host's, owned by the VM's uid, 0600, so a
	// host whose /dev/net/tun or /dev/kvm is root-only still works and no
	// other user gains them.
	for _, d := range s.Devices {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return fmt.Errorf("jail: device %s: %w", d, err)
		}
		kind := st.Mode & unix.S_IFMT
		if kind != unix.S_IFCHR && kind != unix.S_IFBLK {
			return fmt.Errorf("jail: %s is not a device", d)
		}
		dst := filepath.Join(root, d)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := unix.Mknod(dst, kind|0o600, int(st.Rdev)); err != nil {
			return fmt.Errorf("jail: mknod %s: %w", d, err)
		}
		if err := os.Lchown(dst, s.UID, s.GID); err != nil {
			return fmt.Errorf("jail: chown %s: %w", d, err)
		}
	}
	// 3. Into the jail: pivot_root, then drop the old root entirely.
	old := filepath.Join(root, ".old")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(root, old); err != nil {
		return fmt.Errorf("jail: pivot_root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.old", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("jail: detaching the old root: %w", err)
	}
	os.Remove("/.old")
	// The jail root itself read-only from now on.
	unix.Mount("", "/", "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID, "")
	// 4. No way back to privilege.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("jail: no_new_privs: %w", err)
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("jail: dropping capability %d: %w", c, err)
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fmt.Errorf("jail: setgroups: %w", err)
	}
	if err := syscall.Setgid(s.GID); err != nil {
		return fmt.Errorf("jail: setgid %d: %w", s.GID, err)
	}
	if err := syscall.Setuid(s.UID); err != nil {
		return fmt.Errorf("jail: setuid %d: %w", s.UID, err)
	}
	// 5. The VMM, with a clean environment.
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"}
	return fmt.Errorf("jail: exec %s: %w", s.Argv[0], system.ExecReplace(s.Argv, env))
}
