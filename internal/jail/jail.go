// Package jail confines one VMM process: the daemon describes the jail in a
// Spec, and the banger-jail helper (cmd/banger-jail), started by the daemon
// in a new mount and PID namespace, enters it and execs the VMM. In order:
// join the VM's cgroup, build a root holding only what the VMM needs (the
// system's read-only program directories, a minimal /dev, and the VM's own
// files bound at their usual paths), pivot_root into it, set no_new_privs,
// drop every capability from the bounding set, switch to the VM's own
// uid/gid with no supplementary groups, and exec. The VMM then runs with no
// capabilities (CapEff 0), as a user that owns nothing but its VM's files,
// and sees nothing of the state directory or of other VMs.
package jail

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Spec is everything the helper needs to confine one VMM.
type Spec struct {
	VMID string `json:"vm_id"`
	UID  int    `json:"uid"`
	GID  int    `json:"gid"`
	// Root is the jail's root directory on the host, made by the daemon
	// (empty, root-owned); the helper mounts a tmpfs on it.
	Root string `json:"root"`
	// CgroupProcs are the cgroup.procs files to join (one per hierarchy).
	CgroupProcs []string `json:"cgroup_procs"`
	// Binds are host paths made visible in the jail at the same path.
	Binds []Bind `json:"binds"`
	// Devices are device nodes made visible at the same path.
	Devices []string `json:"devices"`
	// Argv is the VMM's command line; Argv[0] is an absolute path.
	Argv []string `json:"argv"`
}

// Bind is one host path visible in the jail.
type Bind struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// SystemDirs are the host's program and library directories a dynamically
// linked VMM needs, bound read-only where they exist.
var SystemDirs = []string{"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives"}

// UnderSystemDirs reports whether path is already visible in a jail through
// one of SystemDirs.
func UnderSystemDirs(path string) bool {
	for _, d := range SystemDirs {
		if path == d || strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

// DefaultDevices are the device nodes a VMM may open.
var DefaultDevices = []string{"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/kvm", "/dev/net/tun"}

// Validate checks a spec before anything is made.
func (s Spec) Validate() error {
	switch {
	case s.UID <= 0 || s.GID <= 0:
		return fmt.Errorf("jail: uid %d gid %d: a vmm never runs as root", s.UID, s.GID)
	case s.Root == "" || !filepath.IsAbs(s.Root) || filepath.Clean(s.Root) == "/":
		return fmt.Errorf("jail: root %q must be an absolute directory other than /", s.Root)
	case len(s.Argv) == 0 || !filepath.IsAbs(s.Argv[0]):
		return fmt.Errorf("jail: argv %q must start with an absolute path", s.Argv)
	}
	for _, b := range s.Binds {
		if !filepath.IsAbs(b.Path) || filepath.Clean(b.Path) != b.Path || b.Path == "/" {
			return fmt.Errorf("jail: bind %q must be a clean absolute path other than /", b.Path)
		}
	}
	for _, p := range s.CgroupProcs {
		if !strings.HasSuffix(p, "/cgroup.procs") {
			return fmt.Errorf("jail: %q is not a cgroup.procs file", p)
		}
	}
	return nil
}

// Write stores s in path (0600), for the helper to read.
func Write(path string, s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// Read loads a spec written by Write. The file must be a regular file owned
// by root and not writable by others: the helper runs as root.
func Read(path string) (Spec, error) {
	var s Spec
	f, err := os.OpenFile(path, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return s, fmt.Errorf("jail spec: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return s, err
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o022 != 0 || !ownedByRoot(st) {
		return s, errors.New("jail spec " + path + ": must be a regular root-owned file not writable by others")
	}
	if err := json.NewDecoder(f).Decode(&s); err != nil {
		return s, fmt.Errorf("jail spec %s: %w", path, err)
	}
	return s, s.Validate()
}
