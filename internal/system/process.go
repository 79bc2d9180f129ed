package system

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DetachedSpec describes a long-lived process (a VMM, a daemon) started in its
// own session so it outlives the process that started it.
type DetachedSpec struct {
	Argv    []string
	Env     []string // nil: inherit
	Dir     string
	LogPath string // stdout and stderr are appended here; "" means /dev/null
	// ExtraFiles are inherited as fd 3, 4, ...
	ExtraFiles []*os.File
	// Cloneflags start the process in new namespaces (CLONE_NEWNS,
	// CLONE_NEWPID...); root only.
	Cloneflags uintptr
	// Output, when set, takes stdout and stderr instead of LogPath.
	Output *os.File
	// Chroot and Credential (root only) make the process chroot there
	// (Argv[0] and Dir are then inside it) and run as that user.
	Chroot     string
	Credential *syscall.Credential
}

// Process identifies one process for life: a PID alone is not enough because
// PIDs are reused, so the start time from /proc/PID/stat goes with it.
type Process struct {
	PID   int
	Start uint64
}

// StartDetached starts spec in a new session with stdin on /dev/null and
// returns its identity. The caller need not wait: a goroutine reaps it so it
// never lingers as a zombie while this process lives.
func StartDetached(spec DetachedSpec) (Process, error) {
	if len(spec.Argv) == 0 {
		return Process{}, errors.New("start detached: empty argv")
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return Process{}, err
	}
	defer devnull.Close()
	out := devnull
	if spec.LogPath != "" {
		f, err := os.OpenFile(spec.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return Process{}, fmt.Errorf("open log %s: %w", spec.LogPath, err)
		}
		defer f.Close()
		out = f
	}
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	cmd.Stdin = devnull
	if spec.Output != nil {
		out = spec.Output
	}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.ExtraFiles = spec.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Cloneflags: spec.Cloneflags, Chroot: spec.Chroot, Credential: spec.Credential}
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("start %s: %w", spec.Argv[0], err)
	}
	pid := cmd.Process.Pid
	go cmd.Wait() //nolint:errcheck // reaping only
	st, err := ProcStartTime(pid)
	if err != nil {
		return Process{PID: pid}, nil
	}
	return Process{PID: pid, Start: st}, nil
}

// ProcStartTime returns field 22 of /proc/PID/stat (start time in clock ticks
// since boot). It fails with os.ErrNotExist when the process is gone.
func ProcStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("parse /proc/%d/stat: short", pid)
	}
	// A zombie thread group leader whose other threads still run (a
	// multithreaded program exec'ing from another thread, for a moment) is
	// alive: num_threads (field 20) says so.
	if (fields[0] == "Z" || fields[0] == "X") && !(fields[0] == "Z" && len(fields) > 17 && fields[17] != "1" && fields[17] != "0") {
		return 0, fmt.Errorf("process %d is a zombie: %w", pid, os.ErrNotExist)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// ProcStatus returns the fields of /proc/PID/status by name, values
// trimmed ("VmRSS" -> "1234 kB").
func ProcStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, nil
}

// ProcCmdline returns the argv of pid.
func ProcCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	b = []byte(strings.TrimRight(string(b), "\x00"))
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// ArgvHasPair reports whether argv holds flag immediately followed by value,
// compared exactly (never as a pattern).
func ArgvHasPair(argv []string, flag, value string) bool {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag && argv[i+1] == value {
			return true
		}
	}
	return false
}

// ListPIDs returns every PID in /proc.
func ListPIDs() ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// FindProcess returns the process whose argv satisfies match, or false.
func FindProcess(match func(argv []string) bool) (Process, bool) {
	pids, err := ListPIDs()
	if err != nil {
		return Process{}, false
	}
	for _, pid := range pids {
		argv, err := ProcCmdline(pid)
		if err != nil || len(argv) == 0 || !match(argv) {
			continue
		}
		st, err := ProcStartTime(pid)
		if err != nil {
			continue
		}
		return Process{PID: pid, Start: st}, true
	}
	return Process{}, false
}

// Alive reports whether p still names the same live process (PID and start time).
func (p Process) Alive() bool {
	if p.PID <= 0 {
		return false
	}
	st, err := ProcStartTime(p.PID)
	return err == nil && (p.Start == 0 || st == p.Start)
}

// ErrNotSameProcess is returned when a PID now belongs to another process.
var ErrNotSameProcess = errors.New("process identity changed (pid reused)")

// Signal sends sig to p through a pidfd, after verifying that the pidfd names
// the recorded process: open the pidfd first, then check the start time, so a
// PID reused between the check and the signal cannot be hit.
func (p Process) Signal(sig syscall.Signal) error {
	if p.PID <= 0 {
		return fmt.Errorf("signal: invalid pid %d", p.PID)
	}
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return fmt.Errorf("pidfd_open %d: %w", p.PID, err)
	}
	defer unix.Close(fd)
	st, err := ProcStartTime(p.PID)
	if err != nil {
		return os.ErrProcessDone
	}
	if p.Start != 0 && st != p.Start {
		return ErrNotSameProcess
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return fmt.Errorf("signal %d: %w", p.PID, err)
	}
	return nil
}

// WaitExit polls until p is gone or timeout passes; it reports whether p exited.
func (p Process) WaitExit(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if !p.Alive() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits up to timeout for p to go. A process that is
// already gone is success.
func (p Process) Kill(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		return err
	}
	if !p.WaitExit(timeout) {
		return fmt.Errorf("process %d did not exit after SIGKILL", p.PID)
	}
	return nil
}

// ExecReplace replaces the calling process with argv (execve): the last
// step of a helper such as banger-jail. It returns only on failure.
func ExecReplace(argv, env []string) error {
	if len(argv) == 0 {
		return errors.New("exec: empty argv")
	}
	return syscall.Exec(argv[0], argv, env)
}
