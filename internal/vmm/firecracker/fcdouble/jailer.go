package fcdouble

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
)

// The jailer double: Firecracker's jailer contract as docs/jailer.md and
// src/jailer describe it, enough to run banger's driver through it. It
// validates the command line as the jailer does, makes the chroot
// <base>/<exec name>/<id>/root with a copy of the exec file owned by the
// uid, /dev/net/tun, /dev/kvm, /dev/urandom and /run, applies the --cgroup
// settings to <hierarchy>/<parent>/<id> and joins it, joins --netns, caps
// RLIMIT_NOFILE at 2048, clears the environment, and runs the copy in the
// chroot as uid:gid with "--id <id> --start-time-us .. --start-time-cpu-us
// .. --parent-cpu-time-us .." and the args after "--". With --new-pid-ns
// the copy runs in a new PID namespace and the jailer writes its PID to
// <chroot>/<exec name>.pid and exits 0; without, it writes its own PID and
// execs in place. It differs from the jailer in that it chroots in a new
// mount namespace instead of pivot_root (the same view for the VMM), and
// keeps the FC_DOUBLE_* variables (the double's test knobs); a
// FC_DOUBLE_REQUEST_LOG host path is opened before the chroot and passed
// as an inherited descriptor. It needs root, as the jailer does.

var jailerValueFlags = map[string]bool{
	"id": true, "exec-file": true, "uid": true, "gid": true, "chroot-base-dir": true,
	"netns": true, "cgroup-version": true, "parent-cgroup": true,
}

var jailerMultiFlags = map[string]bool{"cgroup": true, "resource-limit": true}

var jailerBoolFlags = map[string]bool{"daemonize": true, "new-pid-ns": true, "version": true, "help": true}

// jailerArgs is a parsed jailer command line.
type jailerArgs struct {
	single map[string]string
	multi  map[string][]string
	bools  map[string]bool
	extra  []string // after "--", for the exec file
}

// parseJailerArgs follows the jailer's arg_parser: "--flag value" only,
// unknown flags and repeated single flags refused, --cgroup and
// --resource-limit repeatable, everything after "--" forwarded.
func parseJailerArgs(args []string) (jailerArgs, string) {
	a := jailerArgs{single: map[string]string{}, multi: map[string][]string{}, bools: map[string]bool{}}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			a.extra = append([]string{}, args[i+1:]...)
			break
		}
		name, isFlag := strings.CutPrefix(arg, "--")
		known := jailerValueFlags[name] || jailerMultiFlags[name] || jailerBoolFlags[name]
		if !isFlag || !known {
			return a, fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", strings.TrimLeft(arg, "-"))
		}
		if jailerBoolFlags[name] {
			if a.bools[name] {
				return a, fmt.Sprintf("The argument '%s' was provided more than once.", name)
			}
			a.bools[name] = true
			continue
		}
		if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
			return a, fmt.Sprintf("The argument '%s' requires a value but none was supplied", name)
		}
		v := args[i+1]
		i++
		if jailerMultiFlags[name] {
			a.multi[name] = append(a.multi[name], v)
			continue
		}
		if _, dup := a.single[name]; dup {
			return a, fmt.Sprintf("The argument '%s' was provided more than once.", name)
		}
		a.single[name] = v
	}
	if a.bools["help"] || a.bools["version"] {
		return a, ""
	}
	for _, req := range []string{"id", "exec-file", "uid", "gid"} {
		if _, ok := a.single[req]; !ok {
			return a, fmt.Sprintf("Argument '%s' required, but not found.", req)
		}
	}
	if _, ok := a.single["chroot-base-dir"]; !ok {
		a.single["chroot-base-dir"] = "/srv/jailer"
	}
	if _, ok := a.single["cgroup-version"]; !ok {
		a.single["cgroup-version"] = "1"
	}
	return a, ""
}

// jailerEnv is a validated jailer invocation.
type jailerEnv struct {
	id, execFile, execName string
	chroot                 string
	uid, gid               int
	cgroupVersion          int
	parentCgroup           string
	cgroups                [][2]string
	netns                  string
	newPIDNS               bool
	extra                  []string
}

// validateJailer checks a parsed command line in the jailer's order (id,
// exec file, chroot base, uid, gid, parent cgroup, version, cgroups) and
// returns the first error as the jailer words it.
func validateJailer(a jailerArgs) (jailerEnv, error) {
	var e jailerEnv
	e.id = a.single["id"]
	if !instanceID.MatchString(e.id) {
		return e, fmt.Errorf("Invalid instance ID: %s", e.id)
	}
	exec, err := filepath.EvalSymlinks(a.single["exec-file"])
	if err == nil {
		exec, err = filepath.Abs(exec)
	}
	if err != nil {
		return e, fmt.Errorf("Failed to canonicalize path %s: %v", a.single["exec-file"], err)
	}
	if st, err := os.Stat(exec); err != nil || !st.Mode().IsRegular() {
		return e, fmt.Errorf("%s is not a file", exec)
	}
	e.execFile, e.execName = exec, filepath.Base(exec)
	base, err := filepath.EvalSymlinks(a.single["chroot-base-dir"])
	if err == nil {
		base, err = filepath.Abs(base)
	}
	if err != nil {
		return e, fmt.Errorf("Failed to canonicalize path %s: %v", a.single["chroot-base-dir"], err)
	}
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		return e, fmt.Errorf("%s is not a directory", base)
	}
	e.chroot = filepath.Join(base, e.execName, e.id, "root")
	uid, err := strconv.ParseUint(a.single["uid"], 10, 32)
	if err != nil {
		return e, fmt.Errorf("Invalid uid: %s", a.single["uid"])
	}
	gid, err := strconv.ParseUint(a.single["gid"], 10, 32)
	if err != nil {
		return e, fmt.Errorf("Invalid gid: %s", a.single["gid"])
	}
	e.uid, e.gid = int(uid), int(gid)
	e.parentCgroup = e.execName
	if p, ok := a.single["parent-cgroup"]; ok {
		e.parentCgroup = p
	}
	if filepath.IsAbs(e.parentCgroup) || hasDotComponent(e.parentCgroup) {
		return e, fmt.Errorf("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'")
	}
	v, err := strconv.ParseUint(a.single["cgroup-version"], 10, 8)
	if err != nil || (v != 1 && v != 2) {
		return e, fmt.Errorf("Cgroup version not supported: %s", a.single["cgroup-version"])
	}
	e.cgroupVersion = int(v)
	for _, c := range a.multi["cgroup"] {
		parts := strings.Split(c, "=")
		if len(parts) != 2 || parts[1] == "" {
			return e, fmt.Errorf("Invalid format for cgroups: %s", c)
		}
		if filepath.IsAbs(parts[0]) || hasDotComponent(parts[0]) || strings.Contains(parts[0], "/") {
			return e, fmt.Errorf("Invalid cgroup file: %s", c)
		}
		if !strings.Contains(parts[0], ".") {
			return e, fmt.Errorf("Invalid format for cgroups: %s", c)
		}
		e.cgroups = append(e.cgroups, [2]string{parts[0], parts[1]})
	}
	for _, r := range a.multi["resource-limit"] {
		k, val, ok := strings.Cut(r, "=")
		if _, err := strconv.ParseUint(val, 10, 64); !ok || err != nil || (k != "fsize" && k != "no-file") {
			return e, fmt.Errorf("Invalid resource argument: %s", r)
		}
	}
	e.netns = a.single["netns"]
	e.newPIDNS = a.bools["new-pid-ns"]
	e.extra = a.extra
	return e, nil
}

func hasDotComponent(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if c == "." || c == ".." {
			return true
		}
	}
	return false
}

// JailerMain runs the jailer double with args (without the program name)
// and returns its exit code: 0 when the exec file runs (with --new-pid-ns
// the double exits 0 once the child is started); on success without
// --new-pid-ns it never returns. It must run on the process's main thread
// (the namespace it joins is the calling thread's).
func JailerMain(args []string, stdout, stderr io.Writer) int {
	start := time.Now()
	a, msg := parseJailerArgs(args)
	if msg != "" {
		fmt.Fprintf(stderr, "Arguments parsing error: %s\n\nFor more information try --help.\n", msg)
		return exitGeneric
	}
	if a.bools["version"] {
		fmt.Fprintln(stdout, "Jailer v"+Version)
		return exitOK
	}
	if a.bools["help"] {
		fmt.Fprintln(stdout, "jailer v"+Version+" (fc-double)\n\nUsage: jailer --id <id> --exec-file <file> --uid <uid> --gid <gid> [--chroot-base-dir <dir>] [--cgroup-version 1|2] [--cgroup <file>=<value>]... [--parent-cgroup <path>] [--netns <path>] [--new-pid-ns] -- <firecracker args>")
		return exitOK
	}
	e, err := validateJailer(a)
	if err == nil {
		err = e.run(start)
	}
	fmt.Fprintf(stderr, "Jailer error: %v\n", err)
	return exitGeneric
}

// run does the jailer's work and starts the exec file; it returns only on
// failure (success exits or execs).
func (e jailerEnv) run(start time.Time) error {
	if err := os.MkdirAll(e.chroot, 0o755); err != nil {
		return fmt.Errorf("Failed to create directory %s: %v", e.chroot, err)
	}
	if err := e.copyExec(); err != nil {
		return err
	}
	if e.netns != "" {
		f, err := os.Open(e.netns)
		if err != nil {
			return fmt.Errorf("Failed to open file %s: %v", e.netns, err)
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			return fmt.Errorf("Failed to join network namespace: netns: %v", err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 2048, Max: 2048}); err != nil {
		return fmt.Errorf("Failed to set resource limit: %v", err)
	}
	if err := e.setupCgroups(); err != nil {
		return err
	}
	for _, d := range []string{"", "dev", "dev/net", "run"} {
		p := filepath.Join(e.chroot, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("Failed to create directory %s: %v", p, err)
		}
		if err := os.Chown(p, e.uid, e.gid); err != nil {
			return fmt.Errorf("Failed to change owner for %s: %v", p, err)
		}
	}
	for _, n := range []struct {
		path         string
		major, minor uint32
		optional     bool
	}{{"dev/net/tun", 10, 200, false}, {"dev/kvm", 10, 232, false}, {"dev/urandom", 1, 9, true}} {
		p := filepath.Join(e.chroot, n.path)
		err := unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(n.major, n.minor)))
		if err == nil {
			err = os.Chown(p, e.uid, e.gid)
		}
		if err != nil && !n.optional {
			return fmt.Errorf("Failed to create %s via mknod inside the jail: %v", "/"+n.path, err)
		}
	}
	env, files, err := jailEnv()
	if err != nil {
		return err
	}
	elapsed := strconv.FormatInt(time.Since(start).Microseconds(), 10)
	argv := append([]string{"/" + e.execName, "--id", e.id, "--start-time-us", strconv.FormatInt(start.UnixMicro(), 10),
		"--start-time-cpu-us", "0", "--parent-cpu-time-us", elapsed}, e.extra...)
	pidFile := filepath.Join(e.chroot, e.execName+".pid")
	if !e.newPIDNS {
		if err := writePIDFile(pidFile, os.Getpid()); err != nil {
			return err
		}
		for i, f := range files { // as fd 3, 4, ... across the exec
			if err := unix.Dup3(int(f.Fd()), 3+i, 0); err != nil {
				return err
			}
		}
		if err := syscall.Chroot(e.chroot); err != nil {
			return fmt.Errorf("Failed to chroot into %s: %v", e.chroot, err)
		}
		if err := os.Chdir("/"); err != nil {
			return err
		}
		if err := syscall.Setgroups(nil); err != nil {
			return err
		}
		if err := syscall.Setgid(e.gid); err != nil {
			return err
		}
		if err := syscall.Setuid(e.uid); err != nil {
			return err
		}
		return fmt.Errorf("Failed to exec into %s: %v", argv[0], system.ExecReplace(argv, env))
	}
	p, err := system.StartDetached(system.DetachedSpec{
		Argv: argv, Env: env, Dir: "/", Output: os.Stdout, ExtraFiles: files,
		Cloneflags: unix.CLONE_NEWPID | unix.CLONE_NEWNS,
		Chroot:     e.chroot,
		Credential: &syscall.Credential{Uid: uint32(e.uid), Gid: uint32(e.gid), Groups: []uint32{}},
	})
	if err != nil {
		return fmt.Errorf("Failed to clone into a new pid namespace: %v", err)
	}
	if err := writePIDFile(pidFile, p.PID); err != nil {
		return err
	}
	os.Exit(exitOK)
	return nil
}

// jailEnv is the exec file's environment: the jailer clears it; the
// double keeps its own FC_DOUBLE_* knobs and turns a request-log path
// into an inherited descriptor (fd 3), as the chroot hides host paths.
func jailEnv() ([]string, []*os.File, error) {
	var env []string
	var files []*os.File
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "FC_DOUBLE_") {
			continue
		}
		if k == EnvRequestLog && v != "" && !strings.HasPrefix(v, "fd:") {
			f, err := os.OpenFile(v, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return nil, nil, err
			}
			files = append(files, f)
			kv = k + "=fd:3"
		}
		env = append(env, kv)
	}
	return env, files, nil
}

func writePIDFile(path string, pid int) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("Failed to open file %s: %v", path, err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%d", pid); err != nil {
		return fmt.Errorf("Failed to write to %s: %v", path, err)
	}
	return nil
}

// copyExec copies the exec file into the chroot (never through a link,
// never onto a file with other links) owned by uid:gid.
func (e jailerEnv) copyExec() error {
	src, err := os.Open(e.execFile)
	if err != nil {
		return fmt.Errorf("Failed to open %s: %v", e.execFile, err)
	}
	defer src.Close()
	st, err := src.Stat()
	if err != nil {
		return err
	}
	dstPath := filepath.Join(e.chroot, e.execName)
	dst, err := os.OpenFile(dstPath, os.O_WRONLY|os.O_CREATE|unix.O_NOFOLLOW, st.Mode().Perm())
	if err != nil {
		return fmt.Errorf("Failed to open %s: %v", dstPath, err)
	}
	defer dst.Close()
	if dst, err := dst.Stat(); err == nil && dst.Sys().(*syscall.Stat_t).Nlink > 1 {
		return fmt.Errorf("Invalid hard link: %s", dstPath)
	}
	if err := dst.Chown(e.uid, e.gid); err != nil {
		return fmt.Errorf("Failed to change owner for %s: %v", dstPath, err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		return fmt.Errorf("Failed to copy %s to %s: %v", e.execFile, dstPath, err)
	}
	return nil
}

// setupCgroups writes each --cgroup setting in <hierarchy>/<parent>/<id>
// and joins it; on v2 without settings the jailer joins an existing
// <parent> instead.
func (e jailerEnv) setupCgroups() error {
	if len(e.cgroups) == 0 {
		if e.cgroupVersion == 2 {
			root, err := cgroupMount(2, "")
			if err != nil {
				return err
			}
			parent := filepath.Join(root, e.parentCgroup)
			if _, err := os.Stat(parent); err == nil {
				if err := writeCgroup(filepath.Join(parent, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
					return fmt.Errorf("Failed to move process to cgroup %s: %v", parent, err)
				}
			}
		}
		return nil
	}
	joined := map[string]bool{}
	for _, c := range e.cgroups {
		controller, _, _ := strings.Cut(c[0], ".")
		root, err := cgroupMount(e.cgroupVersion, controller)
		if err != nil {
			return err
		}
		dir := filepath.Join(root, e.parentCgroup, e.id)
		if e.cgroupVersion == 2 {
			// Enable the controller down to the VM's cgroup.
			cur := root
			for _, part := range strings.Split(e.parentCgroup, "/") {
				_ = writeCgroup(filepath.Join(cur, "cgroup.subtree_control"), "+"+controller)
				cur = filepath.Join(cur, part)
				if err := os.MkdirAll(cur, 0o755); err != nil {
					return fmt.Errorf("Failed to create directory %s: %v", cur, err)
				}
			}
			_ = writeCgroup(filepath.Join(cur, "cgroup.subtree_control"), "+"+controller)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("Failed to create directory %s: %v", dir, err)
		}
		if err := writeCgroup(filepath.Join(dir, c[0]), c[1]); err != nil {
			return fmt.Errorf("Failed to write to %s: %v", filepath.Join(dir, c[0]), err)
		}
		if joined[dir] {
			continue
		}
		procs := "tasks"
		if e.cgroupVersion == 2 {
			procs = "cgroup.procs"
		}
		if err := writeCgroup(filepath.Join(dir, procs), strconv.Itoa(os.Getpid())); err != nil {
			return fmt.Errorf("Failed to write to %s: %v", filepath.Join(dir, procs), err)
		}
		joined[dir] = true
	}
	return nil
}

func writeCgroup(path, value string) error {
	return os.WriteFile(path, []byte(value), 0)
}

// cgroupMount finds, in /proc/mounts, the v1 hierarchy holding controller
// or the v2 unified hierarchy.
func cgroupMount(version int, controller string) (string, error) {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 {
			continue
		}
		switch {
		case version == 2 && fields[2] == "cgroup2":
			return fields[1], nil
		case version == 1 && fields[2] == "cgroup":
			for _, o := range strings.Split(fields[3], ",") {
				if o == controller {
					return fields[1], nil
				}
			}
		}
	}
	if version == 2 {
		return "", fmt.Errorf("Cgroup hierarchy was not found: cgroup2")
	}
	return "", fmt.Errorf("Controller %s is unavailable", controller)
}
