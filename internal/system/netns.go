package system

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// NetNSEnv is set to "1" in the environment of a test binary that
// ReexecInNewNetNS re-ran inside a fresh network namespace.
const NetNSEnv = "BANGER_TEST_NETNS"

// ReexecInNewNetNS lets privileged tests create taps and bridges without ever
// touching the host's network. Call it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(system.ReexecInNewNetNS(m)) }
//
// As root, and unless NetNSEnv is already set, it re-runs the current test
// binary with the same arguments in a new, anonymous network namespace
// (clone with CLONE_NEWNET), stdio passed through, and returns the child's
// exit code. The namespace vanishes with its last process, so nothing is left
// behind. In the child it brings up loopback and returns m.Run(). When not
// root, or when the kernel refuses a new namespace, it returns m.Run() in
// place and InPrivateNetNS reports false, so netns tests skip.
func ReexecInNewNetNS(m interface{ Run() int }) int {
	if os.Getenv(NetNSEnv) == "1" {
		if !InPrivateNetNS() {
			// Set by hand outside a re-exec: never touch the host's loopback.
			return m.Run()
		}
		if err := bringUpLoopback(); err != nil {
			fmt.Fprintf(os.Stderr, "netns re-exec: %v\n", err)
			return 1
		}
		return m.Run()
	}
	if os.Geteuid() != 0 {
		return m.Run()
	}
	code, err := runInNewNetNS()
	if err != nil {
		fmt.Fprintf(os.Stderr, "netns re-exec unavailable, running tests in place (netns tests will skip): %v\n", err)
		return m.Run()
	}
	return code
}

// runInNewNetNS re-runs this binary in a new network namespace and waits for
// it. An error means the child could not start; a started child's failure is
// reported through the exit code.
func runInNewNetNS() (int, error) {
	parent, err := netNSInode("/proc/self/ns/net")
	if err != nil {
		return 0, err
	}
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Env = append(os.Environ(), NetNSEnv+"=1", netNSParentEnv+"="+formatNetNSID(parent))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL, // never outlive the parent
	}
	// Forward the signals `go test` uses (SIGQUIT on timeout: the child's
	// goroutine dump is the useful one).
	// Pdeathsig fires when the forking thread exits; keep it for the wait.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s in new network namespace: %w", os.Args[0], err)
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	if err == nil {
		return 0, nil
	}
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		fmt.Fprintf(os.Stderr, "netns re-exec: wait: %v\n", err)
		return 1, nil
	}
	if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		fmt.Fprintf(os.Stderr, "netns re-exec: child killed by %v\n", ws.Signal())
		return 128 + int(ws.Signal()), nil
	}
	return exitErr.ExitCode(), nil
}

// bringUpLoopback sets IFF_UP on "lo" in the current network namespace; a new
// namespace starts with loopback down.
func bringUpLoopback() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up loopback: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring up loopback: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up loopback: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up loopback: set flags: %w", err)
	}
	return nil
}

// InPrivateNetNS reports whether this process runs in a namespace made by
// ReexecInNewNetNS: NetNSEnv is "1" and the network namespace differs from
// init's and from the one the re-exec started in. Tests that create links
// assert it before touching anything.
func InPrivateNetNS() bool {
	if os.Getenv(NetNSEnv) != "1" {
		return false
	}
	self, err := netNSInode("/proc/self/ns/net")
	if err != nil {
		return false
	}
	compared := false
	// Some sandboxes deny even root access to /proc/1/ns; the parent's
	// namespace, recorded at re-exec, then stands in for the host's.
	if initNS, err := netNSInode("/proc/1/ns/net"); err == nil {
		if self == initNS {
			return false
		}
		compared = true
	}
	if parent, ok := parseNetNSID(os.Getenv(netNSParentEnv)); ok {
		if self == parent {
			return false
		}
		compared = true
	}
	return compared
}

// netNSParentEnv carries the re-exec parent's namespace identity ("dev:ino").
const netNSParentEnv = "BANGER_TEST_NETNS_PARENT"

func formatNetNSID(id [2]uint64) string { return fmt.Sprintf("%d:%d", id[0], id[1]) }

func parseNetNSID(s string) ([2]uint64, bool) {
	var id [2]uint64
	if n, err := fmt.Sscanf(s, "%d:%d", &id[0], &id[1]); err != nil || n != 2 {
		return id, false
	}
	return id, true
}

// netNSInode identifies a namespace by the device and inode of its nsfs file.
func netNSInode(path string) ([2]uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return [2]uint64{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return [2]uint64{st.Dev, st.Ino}, nil
}
