package system

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Identity is what banger records about a VMM process at launch so that it
// can later prove, from the kernel's own view, that a PID still names that
// process before signalling it. It is plain data: the daemon stores it in the
// VM's scratch directory as JSON.
type Identity struct {
	PID   int      `json:"pid"`
	Start uint64   `json:"start"` // field 22 of /proc/PID/stat, clock ticks since boot
	Exe   string   `json:"exe"`   // readlink /proc/PID/exe, without " (deleted)"
	Argv  []string `json:"argv"`
	// Cgroup is a cgroup reference (see ParseCgroupRef): "/a/b" for the v2
	// hierarchy or "CONTROLLER:/a/b" for the v1 hierarchy that carries
	// CONTROLLER. Membership of the VM's own cgroup is the strongest proof.
	Cgroup string `json:"cgroup,omitempty"`
}

// Expectation holds what the caller knows independently of a stored Identity,
// so that a forged or stale record cannot steer a signal to another program:
// the process must match the record and the expectation. Zero fields are not
// checked.
type Expectation struct {
	// Exe is the executable banger launches (e.g. the configured firecracker
	// path). It is resolved with filepath.EvalSymlinks, as the kernel reports
	// the resolved path; if the path no longer exists it is compared as given.
	// A symlink switched to a new version after launch makes the proof fail:
	// that errs on the side of not signalling.
	Exe string
	// Cgroup is the VM's own cgroup reference; the process must be in it.
	Cgroup string
}

// ErrProcessGone is returned when the recorded PID names no live process (it
// exited, or is a zombie). It wraps os.ErrProcessDone.
var ErrProcessGone = fmt.Errorf("process gone: %w", os.ErrProcessDone)

// ErrIdentityMismatch is returned when a live process under the recorded PID
// (with the recorded start time) differs in executable, argv or cgroup, or
// when the record itself is unusable or contradicts the caller's Expectation.
// A start-time difference is reported as ErrNotSameProcess instead.
var ErrIdentityMismatch = errors.New("process identity mismatch")

// IdentityMismatchError says which fact differs and how. errors.Is matches it
// against ErrNotSameProcess when Fact is "start", else ErrIdentityMismatch.
type IdentityMismatchError struct {
	PID  int
	Fact string // "start", "exe", "argv", "cgroup" or "record"
	Want string // the recorded (or expected) value, rendered for humans
	Got  string // the kernel's (or the record's) value, rendered for humans

	wantLabel, gotLabel string
}

func (e *IdentityMismatchError) Error() string {
	if e.Fact == "record" {
		return fmt.Sprintf("pid %d not proven ours: unusable identity record: %s", e.PID, e.Want)
	}
	wl, gl := e.wantLabel, e.gotLabel
	if wl == "" {
		wl = "recorded"
	}
	if gl == "" {
		gl = "now"
	}
	return fmt.Sprintf("pid %d not proven ours: %s differs: %s %s, %s %s", e.PID, e.Fact, wl, e.Want, gl, e.Got)
}

func (e *IdentityMismatchError) Unwrap() error {
	if e.Fact == "start" {
		return ErrNotSameProcess
	}
	return ErrIdentityMismatch
}

// CaptureIdentity records what the kernel says about pid now: start time,
// executable, exact argv and a cgroup. The cgroup is a best guess at the most
// specific membership (see preferredCgroup); when the daemon put the VMM in
// the VM's own cgroup it should set Cgroup to that reference instead, which
// Prove then checks. Kernel threads (no executable) are refused.
func CaptureIdentity(pid int) (Identity, error) {
	if pid <= 0 {
		return Identity{}, fmt.Errorf("capture identity: invalid pid %d", pid)
	}
	id, _, err := readIdentity(pid)
	if err != nil {
		return Identity{}, fmt.Errorf("capture identity of pid %d: %w", pid, err)
	}
	if id.Exe == "" || len(id.Argv) == 0 {
		return Identity{}, fmt.Errorf("capture identity of pid %d: no executable or argv (kernel thread?)", pid)
	}
	return id, nil
}

// readIdentity reads the kernel's facts about pid, bracketed by two reads of
// the start time so that all facts come from one process.
func readIdentity(pid int) (Identity, CgroupMembership, error) {
	start, err := procStart(pid)
	if err != nil {
		return Identity{}, CgroupMembership{}, err
	}
	exe, exeErr := procExe(pid)
	argv, argvErr := procArgv(pid)
	cg, cgErr := ProcCgroup(pid)
	// Re-read the start time before looking at the errors: a process that
	// exited meanwhile makes them all ENOENT, and that is "gone".
	again, err := procStart(pid)
	if err != nil {
		return Identity{}, CgroupMembership{}, err
	}
	if again != start {
		return Identity{}, CgroupMembership{}, &IdentityMismatchError{PID: pid, Fact: "start",
			Want: strconv.FormatUint(start, 10), Got: strconv.FormatUint(again, 10),
			wantLabel: "first read", gotLabel: "second read"}
	}
	if err := errors.Join(exeErr, argvErr, cgErr); err != nil {
		return Identity{}, CgroupMembership{}, err
	}
	return Identity{PID: pid, Start: start, Exe: exe, Argv: argv, Cgroup: preferredCgroup(cg)}, cg, nil
}

// procStart is ProcStartTime with "gone" mapped to ErrProcessGone.
func procStart(pid int) (uint64, error) {
	st, err := ProcStartTime(pid)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return 0, fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
	}
	return st, err
}

const deletedSuffix = " (deleted)"

// procExe returns the executable of pid. The kernel appends " (deleted)"
// when the file was unlinked or replaced on disk (a package upgrade renames a
// new binary over the old one); that suffix is dropped.
func procExe(pid int) (string, error) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(exe, deletedSuffix), nil
}

// procArgv returns argv exactly, empty arguments included: the kernel
// terminates each argument with NUL, so only the last NUL is removed
// (ProcCmdline trims them all, losing trailing empty arguments).
func procArgv(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return splitCmdline(b), nil
}

func splitCmdline(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	s := strings.TrimSuffix(string(b), "\x00")
	return strings.Split(s, "\x00")
}

// Prove checks that want.PID still names the recorded process: same start
// time, same executable, same argv element by element, and membership of
// want.Cgroup when recorded; and that the record agrees with expect. It
// returns nil, or an error matching ErrProcessGone, ErrNotSameProcess or
// ErrIdentityMismatch (as *IdentityMismatchError). Prove alone leaves a window
// between proof and action; use SignalProven or KillProven to act.
func (want Identity) Prove(expect Expectation) error {
	if err := want.checkRecord(expect); err != nil {
		return err
	}
	got, cgroups, err := readIdentity(want.PID)
	if err != nil {
		return err
	}
	if got.Start != want.Start {
		return &IdentityMismatchError{PID: want.PID, Fact: "start",
			Want: strconv.FormatUint(want.Start, 10), Got: strconv.FormatUint(got.Start, 10)}
	}
	if got.Exe != strings.TrimSuffix(want.Exe, deletedSuffix) {
		return &IdentityMismatchError{PID: want.PID, Fact: "exe", Want: strconv.Quote(want.Exe), Got: strconv.Quote(got.Exe)}
	}
	if i := firstDifference(want.Argv, got.Argv); i >= 0 {
		return &IdentityMismatchError{PID: want.PID, Fact: "argv",
			Want: renderArgv(want.Argv, i), Got: renderArgv(got.Argv, i)}
	}
	for _, ref := range []string{want.Cgroup, expect.Cgroup} {
		if ref != "" && !cgroups.In(ref) {
			return &IdentityMismatchError{PID: want.PID, Fact: "cgroup",
				Want: strconv.Quote(ref), Got: strconv.Quote(cgroups.describe(ref))}
		}
	}
	return nil
}

// checkRecord refuses a record that cannot prove anything, or that
// contradicts what the caller knows.
func (want Identity) checkRecord(expect Expectation) error {
	bad := func(why string) error {
		return &IdentityMismatchError{PID: want.PID, Fact: "record", Want: why}
	}
	switch {
	case want.PID <= 0:
		return bad(fmt.Sprintf("invalid pid %d", want.PID))
	case want.Start == 0:
		return bad("no start time")
	case want.Exe == "":
		return bad("no executable")
	case len(want.Argv) == 0:
		return bad("no argv")
	}
	for _, ref := range []string{want.Cgroup, expect.Cgroup} {
		if ref == "" {
			continue
		}
		if _, _, err := ParseCgroupRef(ref); err != nil {
			return bad(err.Error())
		}
	}
	if expect.Exe != "" {
		exe := expect.Exe
		if resolved, err := filepath.EvalSymlinks(exe); err == nil {
			exe = resolved
		}
		exe = filepath.Clean(exe)
		if exe != strings.TrimSuffix(want.Exe, deletedSuffix) {
			return &IdentityMismatchError{PID: want.PID, Fact: "exe",
				Want: strconv.Quote(exe), Got: strconv.Quote(want.Exe),
				wantLabel: "expected", gotLabel: "record has"}
		}
	}
	return nil
}

// firstDifference returns the first index where a and b differ (len of the
// shorter one when one is a prefix of the other), or -1 when equal.
func firstDifference(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// renderArgv renders argv compactly for an error message: quoted elements,
// long ones cut in the middle, and only the head plus the elements around
// index focus when argv is long.
func renderArgv(argv []string, focus int) string {
	const head, around, maxElem = 4, 1, 60
	var parts []string
	last := -1
	for i, a := range argv {
		if i >= head && (i < focus-around || i > focus+around) {
			continue
		}
		if last >= 0 && i != last+1 {
			parts = append(parts, "…")
		}
		q := strconv.Quote(a)
		if len(q) > maxElem {
			q = q[:maxElem/2-1] + "…" + q[len(q)-maxElem/2+1:]
		}
		parts = append(parts, q)
		last = i
	}
	if last >= 0 && last != len(argv)-1 {
		parts = append(parts, "…")
	}
	return fmt.Sprintf("[%s] (%d args)", strings.Join(parts, " "), len(argv))
}

// SignalProven sends sig to the recorded process only if it is proven ours.
// It opens a pidfd first, then proves the identity through /proc, then
// signals through the pidfd: a pidfd names one process for life, and if the
// signal reaches it, that process existed throughout, so the PID could not
// have been reused while the proof read /proc. A process not proven ours is
// never signalled. A process that exits before the signal gives ErrProcessGone.
func SignalProven(want Identity, expect Expectation, sig syscall.Signal) error {
	fd, err := openProven(want, expect)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return pidfdSignal(fd, want.PID, sig)
}

// KillProven sends SIGKILL to the recorded process if it is proven ours and
// waits up to timeout for it to exit. A process already gone is success
// (nil); one not proven ours is left alone and the proof's error returned.
func KillProven(want Identity, expect Expectation, timeout time.Duration) error {
	fd, err := openProven(want, expect)
	if errors.Is(err, ErrProcessGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := pidfdSignal(fd, want.PID, syscall.SIGKILL); err != nil {
		if errors.Is(err, ErrProcessGone) {
			return nil
		}
		return err
	}
	exited, err := waitPidfd(fd, timeout)
	if err != nil {
		return fmt.Errorf("wait for pid %d: %w", want.PID, err)
	}
	if !exited {
		return fmt.Errorf("pid %d still running %s after SIGKILL (uninterruptible sleep?)", want.PID, timeout)
	}
	return nil
}

// openProven returns a pidfd for want.PID opened before the proof.
func openProven(want Identity, expect Expectation) (int, error) {
	if err := want.checkRecord(expect); err != nil {
		return -1, err
	}
	fd, err := unix.PidfdOpen(want.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, fmt.Errorf("pid %d: %w", want.PID, ErrProcessGone)
		}
		// EINVAL: a thread ID, not a process; never ours.
		return -1, fmt.Errorf("pidfd_open %d: %w", want.PID, err)
	}
	if err := want.Prove(expect); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func pidfdSignal(fd, pid int, sig syscall.Signal) error {
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
		}
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return nil
}

// waitPidfd waits for the pidfd to become readable, which the kernel reports
// once the process has exited (zombie or reaped), for children and others.
func waitPidfd(fd int, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left < 0 {
			left = 0
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds()))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return false, err
		}
		if n > 0 {
			return true, nil
		}
		if left == 0 {
			return false, nil
		}
	}
}

// CgroupMembership is a process's place in each cgroup hierarchy, as listed
// in /proc/PID/cgroup. Paths are relative to the reader's cgroup namespace.
type CgroupMembership struct {
	// Unified is the path in the v2 hierarchy (the "0::PATH" line), "" if absent.
	Unified string
	// V1 maps each v1 controller, and each named hierarchy as "name=NAME",
	// to the path in its hierarchy. Co-mounted controllers ("cpu,cpuacct")
	// each get an entry.
	V1 map[string]string
}

// ProcCgroup reads and parses /proc/PID/cgroup.
func ProcCgroup(pid int) (CgroupMembership, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return CgroupMembership{}, err
	}
	m, err := ParseCgroupFile(string(b))
	if err != nil {
		return CgroupMembership{}, fmt.Errorf("/proc/%d/cgroup: %w", pid, err)
	}
	return m, nil
}

// ParseCgroupFile parses the text of /proc/PID/cgroup: one
// "HIERARCHY-ID:CONTROLLERS:PATH" line per hierarchy, where v2 is
// "0::PATH" and v1 lines name comma-separated controllers or "name=NAME".
func ParseCgroupFile(text string) (CgroupMembership, error) {
	var m CgroupMembership
	for _, line := range strings.Split(text, "\n") {
		if line == "" {
			continue
		}
		id, controllers, path, ok := splitCgroupLine(line)
		if !ok {
			return CgroupMembership{}, fmt.Errorf("malformed cgroup line %q", line)
		}
		if controllers == "" {
			if id != 0 {
				return CgroupMembership{}, fmt.Errorf("cgroup line %q: v1 hierarchy without controllers", line)
			}
			if m.Unified != "" {
				return CgroupMembership{}, fmt.Errorf("cgroup line %q: second v2 line", line)
			}
			m.Unified = path
			continue
		}
		for _, c := range strings.Split(controllers, ",") {
			if c == "" {
				return CgroupMembership{}, fmt.Errorf("cgroup line %q: empty controller", line)
			}
			if m.V1 == nil {
				m.V1 = make(map[string]string)
			}
			if _, dup := m.V1[c]; dup {
				return CgroupMembership{}, fmt.Errorf("cgroup line %q: controller %s listed twice", line, c)
			}
			m.V1[c] = path
		}
	}
	return m, nil
}

func splitCgroupLine(line string) (id int, controllers, path string, ok bool) {
	// The path is last and may itself contain ':'.
	f := strings.SplitN(line, ":", 3)
	if len(f) != 3 || !strings.HasPrefix(f[2], "/") {
		return 0, "", "", false
	}
	id, err := strconv.Atoi(f[0])
	if err != nil || id < 0 {
		return 0, "", "", false
	}
	return id, f[1], f[2], true
}

// Path returns the path in the hierarchy of controller ("" for v2).
func (m CgroupMembership) Path(controller string) (string, bool) {
	if controller == "" {
		return m.Unified, m.Unified != ""
	}
	p, ok := m.V1[controller]
	return p, ok
}

// In reports whether the membership includes the cgroup ref (exact path
// match in the hierarchy the ref names). An invalid ref is never matched.
func (m CgroupMembership) In(ref string) bool {
	controller, path, err := ParseCgroupRef(ref)
	if err != nil {
		return false
	}
	p, ok := m.Path(controller)
	return ok && p == path
}

// describe renders where m is in the hierarchy ref names, for errors.
func (m CgroupMembership) describe(ref string) string {
	controller, _, _ := ParseCgroupRef(ref)
	p, ok := m.Path(controller)
	if !ok {
		if controller == "" {
			return "(not in a v2 hierarchy)"
		}
		return "(no " + controller + " hierarchy)"
	}
	return CgroupRef(controller, p)
}

// CgroupRef formats a cgroup reference: path alone for v2 (controller ""),
// "CONTROLLER:path" for the v1 hierarchy carrying controller.
func CgroupRef(controller, path string) string {
	if controller == "" {
		return path
	}
	return controller + ":" + path
}

// ParseCgroupRef splits a cgroup reference into controller ("" for v2) and
// an absolute, clean path.
func ParseCgroupRef(ref string) (controller, path string, err error) {
	path = ref
	if !strings.HasPrefix(ref, "/") {
		var ok bool
		controller, path, ok = strings.Cut(ref, ":")
		if !ok || controller == "" || strings.ContainsAny(controller, ",/") {
			return "", "", fmt.Errorf("cgroup ref %q: want /PATH or CONTROLLER:/PATH", ref)
		}
	}
	if !strings.HasPrefix(path, "/") || filepath.Clean(path) != path {
		return "", "", fmt.Errorf("cgroup ref %q: path must be absolute and clean", ref)
	}
	return controller, path, nil
}

// ProcInCgroup reports whether pid is in the cgroup ref.
func ProcInCgroup(pid int, ref string) (bool, error) {
	if _, _, err := ParseCgroupRef(ref); err != nil {
		return false, err
	}
	m, err := ProcCgroup(pid)
	if err != nil {
		return false, err
	}
	return m.In(ref), nil
}

// preferredCgroup picks the membership worth recording: on a v2-only host
// the unified path; otherwise the first non-root path among the v1 pids,
// memory and cpu hierarchies, then the v2 and systemd ones. The root proves
// nothing (every process can be there), so it gives "".
func preferredCgroup(m CgroupMembership) string {
	if len(m.V1) == 0 {
		if m.Unified != "/" {
			return m.Unified
		}
		return ""
	}
	for _, c := range []string{"pids", "memory", "cpu", ""} {
		if p, ok := m.Path(c); ok && p != "/" {
			return CgroupRef(c, p)
		}
	}
	names := make([]string, 0, len(m.V1))
	for c := range m.V1 {
		if strings.HasPrefix(c, "name=") {
			names = append(names, c)
		}
	}
	slices.Sort(names)
	for _, c := range names {
		if p := m.V1[c]; p != "/" {
			return CgroupRef(c, p)
		}
	}
	return ""
}
