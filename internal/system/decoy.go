package system

// Test support. Decoys are processes that look like a VMM to anything reading
// /proc (chosen argv, chosen PID, chosen cgroup) and do nothing; tests use
// them to show that the ownership proof refuses strangers. The daemon never
// calls anything in this file.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// decoyCode is, per GOARCH, a loop around a syscall that blocks until a
// signal arrives: pause(2) on amd64; ppoll(NULL, 0, NULL, NULL) on arm64,
// which has no pause. Encodings checked with `go tool asm` + `go tool objdump`.
var decoyCode = map[string]struct {
	machine uint16
	code    []byte
}{
	"amd64": {0x3e, []byte{
		0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34 (pause)
		0x0f, 0x05, // syscall
		0xeb, 0xf7, // jmp to start
	}},
	"arm64": {0xb7, le32(
		0xaa1f03e0, // mov x0, xzr
		0xaa1f03e1, // mov x1, xzr
		0xaa1f03e2, // mov x2, xzr
		0xaa1f03e3, // mov x3, xzr
		0xd2800928, // mov x8, #73 (ppoll)
		0xd4000001, // svc #0
		0x17fffffa, // b to start
	)},
}

func le32(words ...uint32) []byte {
	b := make([]byte, 0, 4*len(words))
	for _, w := range words {
		b = binary.LittleEndian.AppendUint32(b, w)
	}
	return b
}

// DecoyProgram returns a minimal static ELF executable for this GOARCH that
// ignores its arguments and environment and sleeps until killed. Unlike
// sleep(1) or a shell, it accepts any argv, so a decoy's argv can be exactly
// a VMM's.
func DecoyProgram() ([]byte, error) { return decoyProgramFor(runtime.GOARCH) }

func decoyProgramFor(goarch string) ([]byte, error) {
	arch, ok := decoyCode[goarch]
	if !ok {
		return nil, fmt.Errorf("decoy program: no code for GOARCH %s", goarch)
	}
	const base, ehsize, phsize = 0x400000, 64, 56
	size := uint64(ehsize + phsize + len(arch.code))
	le := binary.LittleEndian
	b := make([]byte, 0, size)
	// ELF header: 64-bit, little endian, version 1, System V ABI.
	b = append(b, 0x7f, 'E', 'L', 'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	b = le.AppendUint16(b, 2) // ET_EXEC
	b = le.AppendUint16(b, arch.machine)
	b = le.AppendUint32(b, 1)                  // EV_CURRENT
	b = le.AppendUint64(b, base+ehsize+phsize) // entry: the code after the headers
	b = le.AppendUint64(b, ehsize)             // program headers right after this one
	b = le.AppendUint64(b, 0)                  // no section headers
	b = le.AppendUint32(b, 0)                  // flags
	b = le.AppendUint16(b, ehsize)             // header size
	b = le.AppendUint16(b, phsize)             // program header entry size
	b = le.AppendUint16(b, 1)                  // one program header
	b = append(b, 0, 0, 0, 0, 0, 0)            // shentsize, shnum, shstrndx
	b = le.AppendUint32(b, 1)                  // PT_LOAD
	b = le.AppendUint32(b, 5)                  // PF_R|PF_X
	b = le.AppendUint64(b, 0)                  // offset: map the whole file
	b = le.AppendUint64(b, base)               // vaddr
	b = le.AppendUint64(b, base)               // paddr
	b = le.AppendUint64(b, size)               // filesz
	b = le.AppendUint64(b, size)               // memsz
	b = le.AppendUint64(b, 0x1000)             // align
	return append(b, arch.code...), nil
}

// WriteDecoyProgram writes DecoyProgram to path, mode 0755, so that a test
// can run decoys from a real file (to test exe checks, symlinks, or a binary
// replaced on disk) with StartDecoyFrom.
func WriteDecoyProgram(path string) error {
	prog, err := DecoyProgram()
	if err != nil {
		return err
	}
	return os.WriteFile(path, prog, 0o755)
}

// memfdDecoy holds the decoy program in a memfd for the life of this process,
// so decoys run even where temporary directories are mounted noexec. The
// kernel shows their exe as "/memfd:banger-decoy (deleted)".
var memfdDecoy struct {
	once sync.Once
	path string
	err  error
}

func decoyExe() (string, error) {
	memfdDecoy.once.Do(func() {
		prog, err := DecoyProgram()
		if err != nil {
			memfdDecoy.err = err
			return
		}
		fd, err := unix.MemfdCreate("banger-decoy", unix.MFD_CLOEXEC|unix.MFD_EXEC)
		if errors.Is(err, unix.EINVAL) { // kernels before 6.3 lack MFD_EXEC
			fd, err = unix.MemfdCreate("banger-decoy", unix.MFD_CLOEXEC)
		}
		if err != nil {
			memfdDecoy.err = fmt.Errorf("memfd_create: %w", err)
			return
		}
		if _, err := unix.Pwrite(fd, prog, 0); err != nil {
			unix.Close(fd)
			memfdDecoy.err = fmt.Errorf("write decoy memfd: %w", err)
			return
		}
		// Children reach the memfd through our /proc entry; it stays open
		// (and close-on-exec) until this process exits.
		memfdDecoy.path = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), fd)
	})
	return memfdDecoy.path, memfdDecoy.err
}

// spawner forks every decoy from one OS thread that never exits: decoys get
// Pdeathsig SIGKILL, which the kernel sends when the forking *thread* exits
// (Go issue 27505), and StartDecoyWithPID changes that thread's PID namespace
// for children for a moment.
var spawner struct {
	mu   sync.Mutex
	reqs chan func() error
}

// errSpawnerTainted makes the spawner thread retire: it stays alive, so its
// decoys keep their parent, but takes no more work.
var errSpawnerTainted = errors.New("decoy spawner thread left in a foreign pid namespace")

func onSpawnerThread(f func() error) error {
	spawner.mu.Lock()
	if spawner.reqs == nil {
		spawner.reqs = make(chan func() error)
		go spawnerLoop(spawner.reqs)
	}
	reqs := spawner.reqs
	spawner.mu.Unlock()
	errc := make(chan error, 1)
	reqs <- func() error {
		err := f()
		errc <- err
		return err
	}
	return <-errc
}

func spawnerLoop(reqs chan func() error) {
	runtime.LockOSThread() // never unlocked: this thread is the decoys' parent
	for f := range reqs {
		if err := f(); errors.Is(err, errSpawnerTainted) {
			spawner.mu.Lock()
			if spawner.reqs == reqs {
				spawner.reqs = nil
			}
			spawner.mu.Unlock()
			select {} // keep the thread, and the decoys' Pdeathsig, alive
		}
	}
}

// decoyCmd returns a command that runs exe with exactly argv, stdio on
// /dev/null, an empty environment, and SIGKILL when this process dies.
func decoyCmd(exe string, argv []string) *exec.Cmd {
	return &exec.Cmd{
		Path:        exe,
		Args:        argv,
		Env:         []string{},
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	}
}

// startReaped starts cmd (on the spawner thread) and reaps it in the
// background, calling after, if not nil, once it has exited.
func startReaped(cmd *exec.Cmd, after func()) (Process, error) {
	if err := cmd.Start(); err != nil {
		return Process{}, fmt.Errorf("start decoy %q: %w", cmd.Args, err)
	}
	pid := cmd.Process.Pid
	go func() {
		cmd.Wait() //nolint:errcheck // reaping only; decoys die by signal
		if after != nil {
			after()
		}
	}()
	st, err := ProcStartTime(pid)
	if err != nil {
		return Process{}, fmt.Errorf("decoy %d exited at once: %w", pid, err)
	}
	// Start returns once the exec has begun (the close-on-exec pipe is
	// closed), before the kernel has laid out the new argv: in between,
	// /proc/PID/cmdline reads empty. Callers read it at once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if argv, err := ProcCmdline(pid); err != nil || len(argv) > 0 || time.Now().After(deadline) {
			break
		}
	}
	return Process{PID: pid, Start: st}, nil
}

func checkArgv(argv []string) error {
	if len(argv) == 0 {
		return errors.New("start decoy: empty argv")
	}
	return nil
}

// StartDecoy starts a process whose argv is exactly argv (argv[0] included)
// and that sleeps until killed, e.g. one with a VM's API socket path in its
// argv. Its executable is the decoy program held in a memfd. It is reaped in
// the background and SIGKILLed if this process dies; kill it with
// Process.Kill.
func StartDecoy(argv []string) (Process, error) {
	exe, err := decoyExe()
	if err != nil {
		return Process{}, err
	}
	return StartDecoyFrom(exe, argv)
}

// StartDecoyFrom is StartDecoy running the program at exe, which must stay
// alive whatever its arguments (e.g. one written by WriteDecoyProgram).
func StartDecoyFrom(exe string, argv []string) (Process, error) {
	if err := checkArgv(argv); err != nil {
		return Process{}, err
	}
	var p Process
	err := onSpawnerThread(func() error {
		var err error
		p, err = startReaped(decoyCmd(exe, argv), nil)
		return err
	})
	return p, err
}

// StartDecoyWithPID starts a decoy with argv that has PID pid inside a new
// PID namespace (root only). The host sees another PID: the returned Process
// holds the host PID, and /proc/HOSTPID/status shows "NSpid: HOSTPID pid".
//
// For pid 1 the decoy is the namespace's init; it is then not killed when
// this process dies (the kernel's parent-death signal cannot be armed across
// a PID namespace boundary), so kill it in t.Cleanup. Otherwise the
// namespace's init is /bin/sh, which writes pid-1 to
// /proc/sys/kernel/ns_last_pid (that file acts on the writer's own PID
// namespace, so no /proc mount is needed) and then waits on a pipe from this
// process; the decoy is forked into the namespace through setns on the
// spawner thread, so it gets pid. When the decoy exits the init is ended, and
// when this process dies the pipe closes, the init exits and the kernel kills
// the decoy with the namespace.
func StartDecoyWithPID(pid int, argv []string) (Process, error) {
	if err := checkArgv(argv); err != nil {
		return Process{}, err
	}
	if os.Geteuid() != 0 {
		return Process{}, errors.New("start decoy in a pid namespace: needs root")
	}
	if pid < 1 {
		return Process{}, fmt.Errorf("start decoy in a pid namespace: invalid pid %d", pid)
	}
	exe, err := decoyExe()
	if err != nil {
		return Process{}, err
	}
	var decoy Process
	err = onSpawnerThread(func() error {
		cmd := decoyCmd(exe, argv)
		// Go's child would see getppid() == 0 across the namespace boundary
		// and kill itself at once: no Pdeathsig here.
		cmd.SysProcAttr.Pdeathsig = 0
		if pid == 1 {
			cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
			var err error
			decoy, err = startReaped(cmd, nil)
			return err
		}
		stopInit, initPID, err := startPIDNSInit(pid - 1)
		if err != nil {
			return err
		}
		decoy, err = startInPIDNS(initPID, cmd, stopInit)
		if err != nil && decoy.PID == 0 {
			stopInit()
		}
		return err
	})
	if err == nil {
		var nspid int
		nspid, err = procNSPID(decoy.PID)
		if err == nil && nspid != pid {
			err = fmt.Errorf("decoy got pid %d in its namespace", nspid)
		}
	}
	if err != nil {
		if decoy.PID != 0 {
			decoy.Kill(time.Second) //nolint:errcheck // the init follows via the reaper
		}
		return Process{}, fmt.Errorf("start decoy with pid %d in a new pid namespace: %w", pid, err)
	}
	return decoy, nil
}

// startPIDNSInit starts /bin/sh as the init of a new PID namespace, sets the
// namespace's last PID to last and leaves the init waiting for EOF on its
// stdin. stop closes that pipe and reaps the init.
func startPIDNSInit(last int) (stop func(), initPID int, err error) {
	const script = `echo "$1" > /proc/sys/kernel/ns_last_pid || exit 1
echo ready
exec >/dev/null 2>&1
while read -r _; do :; done`
	out, outW, err := os.Pipe()
	if err != nil {
		return nil, 0, err
	}
	defer out.Close()
	hold, holdW, err := os.Pipe()
	if err != nil {
		outW.Close()
		return nil, 0, err
	}
	defer hold.Close()
	cmd := &exec.Cmd{
		Path:        "/bin/sh",
		Args:        []string{"sh", "-c", script, "banger-decoy-pidns-init", strconv.Itoa(last)},
		Env:         []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		Stdin:       hold,
		Stdout:      outW,
		Stderr:      outW,
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID},
	}
	err = cmd.Start()
	outW.Close()
	if err != nil {
		holdW.Close()
		return nil, 0, fmt.Errorf("start pid namespace init: %w", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			holdW.Close()
			cmd.Process.Kill() //nolint:errcheck // may be gone already
			cmd.Wait()         //nolint:errcheck // reaping only
		})
	}
	// The pipe reaches EOF when sh exits or redirects its output away;
	// "ready" tells which.
	msg, _ := io.ReadAll(io.LimitReader(out, 4096))
	if strings.TrimSpace(string(msg)) != "ready" {
		stop()
		return nil, 0, fmt.Errorf("pid namespace init: set ns_last_pid to %d: %s", last, bytes.TrimSpace(msg))
	}
	return stop, cmd.Process.Pid, nil
}

// startInPIDNS starts cmd in the PID namespace of nsHolder. It must run on
// the spawner thread: setns(CLONE_NEWPID) changes only the namespace of this
// thread's future children, and is undone before returning.
func startInPIDNS(nsHolder int, cmd *exec.Cmd, after func()) (Process, error) {
	self, err := os.Open("/proc/thread-self/ns/pid")
	if err != nil {
		return Process{}, err
	}
	defer self.Close()
	target, err := os.Open(fmt.Sprintf("/proc/%d/ns/pid", nsHolder))
	if err != nil {
		return Process{}, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWPID); err != nil {
		return Process{}, fmt.Errorf("setns into pid namespace of %d: %w", nsHolder, err)
	}
	p, startErr := startReaped(cmd, after)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWPID); err != nil {
		if startErr == nil {
			return p, fmt.Errorf("%w: %v", errSpawnerTainted, err)
		}
		return p, fmt.Errorf("%w: %v (after %v)", errSpawnerTainted, err, startErr)
	}
	return p, startErr
}

// procNSPID returns the innermost PID of pid, from the NSpid line of
// /proc/PID/status.
func procNSPID(pid int) (int, error) {
	st, err := ProcStatus(pid)
	if err != nil {
		return 0, err
	}
	if f := strings.Fields(st["NSpid"]); len(f) > 0 {
		return strconv.Atoi(f[len(f)-1])
	}
	return 0, fmt.Errorf("/proc/%d/status: no NSpid line", pid)
}

// errHostPIDRace means other forks on the host kept taking the PID.
var errHostPIDRace = errors.New("pid taken by another fork")

// hostPIDTries bounds StartDecoyAtHostPID: each try that loses a race to
// another fork costs one short-lived decoy.
const hostPIDTries = 5

// StartDecoyAtHostPID starts a decoy with argv at PID pid in this process's
// own PID namespace (root only): the threat of a stranger that got a dead
// VMM's PID, made on purpose. It writes pid-1 to
// /proc/sys/kernel/ns_last_pid right before forking (as CRIU does) and
// retries when another fork on the host takes pid first, failing after a few
// tries or at once when pid is in use. The allocation cursor is put back
// when it was ahead of pid, so other processes' PIDs are not recycled sooner.
func StartDecoyAtHostPID(pid int, argv []string) (Process, error) {
	if err := checkArgv(argv); err != nil {
		return Process{}, err
	}
	if os.Geteuid() != 0 {
		return Process{}, errors.New("start decoy at host pid: needs root")
	}
	pidMax, err := readIntFile("/proc/sys/kernel/pid_max")
	if err != nil {
		return Process{}, err
	}
	if pid < 2 || pid >= pidMax {
		return Process{}, fmt.Errorf("start decoy at host pid: pid %d out of range [2, %d)", pid, pidMax)
	}
	exe, err := decoyExe()
	if err != nil {
		return Process{}, err
	}
	f, err := os.OpenFile("/proc/sys/kernel/ns_last_pid", os.O_RDWR, 0)
	if err != nil {
		return Process{}, fmt.Errorf("start decoy at host pid: %w", err)
	}
	defer f.Close()
	old, err := readIntFile(f.Name())
	if err != nil {
		return Process{}, err
	}
	setLast := func(v int) error {
		_, err := unix.Pwrite(int(f.Fd()), []byte(strconv.Itoa(v)), 0)
		return err
	}
	var decoy Process
	err = onSpawnerThread(func() error {
		for try := 0; try < hostPIDTries; try++ {
			if pidInUse(pid) {
				return fmt.Errorf("pid %d is in use", pid)
			}
			if err := setLast(pid - 1); err != nil {
				return fmt.Errorf("write ns_last_pid: %w", err)
			}
			p, err := startReaped(decoyCmd(exe, argv), nil)
			if err != nil {
				return err
			}
			if p.PID == pid {
				decoy = p
				return nil
			}
			p.Kill(time.Second) //nolint:errcheck // lost the race; try again
		}
		return fmt.Errorf("%w %d times in a row", errHostPIDRace, hostPIDTries)
	})
	if old > pid {
		setLast(old) //nolint:errcheck // best effort; PIDs stay unique either way
	}
	if err != nil {
		return Process{}, fmt.Errorf("start decoy at host pid %d: %w", pid, err)
	}
	return decoy, nil
}

// pidInUse reports whether pid names a process or thread (threads have
// /proc/TID entries too, hidden from listings).
func pidInUse(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func readIntFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// DecoyCgroup is a throwaway cgroup for tests, at
// banger-test-RANDOM/decoy under the root of one hierarchy. Ref is its cgroup
// reference, as Identity.Cgroup and Expectation.Cgroup take it.
type DecoyCgroup struct {
	Ref    string
	parent string // .../banger-test-RANDOM
	dir    string // .../banger-test-RANDOM/decoy
	home   string // this process's own cgroup directory, where Remove puts leftovers
}

// NewDecoyCgroup creates a decoy cgroup in the v1 hierarchy of controller
// (e.g. "pids"), or in the v2 hierarchy when controller is "" (membership
// needs no enabled controllers, so this works on hybrid hosts). Call Remove
// when done, e.g. in t.Cleanup.
func NewDecoyCgroup(controller string) (*DecoyCgroup, error) {
	mount, root, err := findCgroupMount(controller)
	if err != nil {
		return nil, err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	name := "banger-test-" + hex.EncodeToString(rnd[:])
	c := &DecoyCgroup{
		Ref:    CgroupRef(controller, filepath.Join(root, name, "decoy")),
		parent: filepath.Join(mount, name),
		dir:    filepath.Join(mount, name, "decoy"),
		home:   mount,
	}
	if self, err := ProcCgroup(os.Getpid()); err == nil {
		if p, ok := self.Path(controller); ok {
			if rel, err := filepath.Rel(root, p); err == nil && !strings.HasPrefix(rel, "..") {
				c.home = filepath.Join(mount, rel)
			}
		}
	}
	if err := os.Mkdir(c.parent, 0o755); err != nil {
		return nil, fmt.Errorf("create decoy cgroup: %w", err)
	}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		os.Remove(c.parent)
		return nil, fmt.Errorf("create decoy cgroup: %w", err)
	}
	return c, nil
}

// Add moves pid into the decoy cgroup and checks that /proc/PID/cgroup now
// says so under Ref.
func (c *DecoyCgroup) Add(pid int) error {
	if err := writeCgroupProcs(c.dir, pid); err != nil {
		return err
	}
	in, err := ProcInCgroup(pid, c.Ref)
	if err != nil {
		return err
	}
	if !in {
		m, _ := ProcCgroup(pid)
		return fmt.Errorf("pid %d moved to %s but /proc/%d/cgroup does not show %s: %+v", pid, c.dir, pid, c.Ref, m)
	}
	return nil
}

// MoveOut moves pid from the decoy cgroup to its parent (banger-test-RANDOM).
func (c *DecoyCgroup) MoveOut(pid int) error {
	return writeCgroupProcs(c.parent, pid)
}

// Remove moves any processes left in the decoy cgroup or its parent back to
// this process's own cgroup and removes both directories.
func (c *DecoyCgroup) Remove() error {
	var errs []error
	for _, dir := range []string{c.dir, c.parent} {
		errs = append(errs, c.empty(dir))
		errs = append(errs, rmdirRetry(dir))
	}
	return errors.Join(errs...)
}

func (c *DecoyCgroup) empty(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		if err := writeCgroupProcs(c.home, pid); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}

// rmdirRetry removes a cgroup directory, retrying for a moment while the
// kernel still counts a process that is exiting.
func rmdirRetry(dir string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func writeCgroupProcs(dir string, pid int) error {
	path := filepath.Join(dir, "cgroup.procs")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strconv.Itoa(pid))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("move pid %d to %s: %w", pid, dir, err)
	}
	return nil
}

// findCgroupMount returns the mount point and mount root of the v1
// hierarchy carrying controller, or of the v2 hierarchy for "", preferring
// mounts under /sys/fs/cgroup.
func findCgroupMount(controller string) (mount, root string, err error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 {
			continue
		}
		fstype, superOpts := g[0], strings.Split(g[2], ",")
		match := fstype == "cgroup2" && controller == "" ||
			fstype == "cgroup" && controller != "" && slices.Contains(superOpts, controller)
		if !match {
			continue
		}
		if mount == "" || strings.HasPrefix(f[4], "/sys/fs/cgroup") && !strings.HasPrefix(mount, "/sys/fs/cgroup") {
			mount, root = f[4], f[3]
		}
	}
	if mount == "" {
		if controller == "" {
			return "", "", errors.New("no cgroup v2 hierarchy mounted")
		}
		return "", "", fmt.Errorf("no cgroup v1 hierarchy with controller %s mounted", controller)
	}
	return mount, root, nil
}
