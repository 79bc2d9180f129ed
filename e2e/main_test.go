package e2e

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// Settings handed from the preparing parent to the re-executed tests.
const (
	binEnv   = "BANGER_E2E_BIN"   // directory holding banger and bangerd
	skipEnv  = "BANGER_E2E_SKIP"  // why the suite cannot run, when set
	stateEnv = "BANGER_STATE_DIR" // read by banger and bangerd themselves
	runEnv   = "BANGER_RUN_DIR"
)

// suiteTests are the top-level tests, so that a -run filter excluding all of
// them does not pay for building binaries and an image.
var suiteTests = []string{"TestRun", "TestTwoVMs", "TestExecSSHCopy", "TestSessions", "TestPortForward", "TestRestartAndRm", "TestDaemonKilled", "TestVMMKilledWhileDaemonDown", "TestGuestPoweroff", "TestBadInput", "TestConfinement", "TestNetworkPolicy", "TestNetworkPolicyHostAddress", "TestNetworkPolicySpoofing", "TestNetworkPolicyEgress", "TestOCIImage", "TestSuspendResume", "TestForkAndSnapshot", "TestPool"}

// TestMain prepares the suite as root outside any network namespace, then
// re-runs the tests in a private one (see suite.Run).
func TestMain(m *testing.M) {
	if os.Getenv(system.NetNSEnv) == "1" {
		// The re-executed child: tests, then the leak check, in the namespace.
		os.Exit(system.ReexecInNewNetNS(suite{m}))
	}
	if os.Geteuid() != 0 {
		os.Setenv(skipEnv, "end-to-end tests need root (taps, loop devices, QEMU guests): run as root, e.g. make test")
		os.Exit(m.Run())
	}
	cleanup := prepare()
	code := system.ReexecInNewNetNS(suite{m})
	if cleanup != nil {
		cleanup(code == 0)
	}
	os.Exit(code)
}

// suite runs the tests and, inside the private namespace, checks that they
// left nothing behind, then stops the daemon.
type suite struct{ m *testing.M }

func (s suite) Run() int {
	code := s.m.Run()
	if os.Getenv(skipEnv) != "" || !system.InPrivateNetNS() {
		return code
	}
	leaks := findLeaks()
	if len(leaks) > 0 {
		// Reported below; still leave the host clean.
		forceDeleteAll()
	}
	pid := daemonPID()
	out, errOut, rc := runCLI(nil, 30*time.Second, "daemon", "stop")
	if rc != 0 {
		leaks = append(leaks, "banger daemon stop failed: "+out+errOut)
	}
	if pid.Alive() {
		leaks = append(leaks, fmt.Sprintf("bangerd (pid %d) still runs after banger daemon stop", pid.PID))
	}
	if _, err := os.Lstat(filepath.Join(os.Getenv(runEnv), "bangerd.sock")); err == nil {
		leaks = append(leaks, "bangerd.sock remains after banger daemon stop")
	}
	if len(leaks) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: the suite left host objects behind:\n  %s\n", strings.Join(leaks, "\n  "))
		return 1
	}
	return code
}

// prepare runs outside the namespace, where the Debian mirror is reachable:
// build the binaries, then the default image with a private daemon on the
// suite's state directory, and stop that daemon. Reasons not to run go to
// skipEnv. cleanup removes the directories (kept for inspection after a
// failed run).
func prepare() (cleanup func(passed bool)) {
	skip := func(format string, args ...any) func(bool) {
		os.Setenv(skipEnv, fmt.Sprintf(format, args...))
		return cleanup
	}
	flag.Parse()
	if testing.Short() {
		return skip("end-to-end tests do not run in -short mode")
	}
	if f := flag.Lookup("test.run"); f != nil && f.Value.String() != "" && !wantsSuite(f.Value.String()) {
		return skip("no end-to-end test selected by -run")
	}
	if _, err := system.LookPath("qemu-system-x86_64"); err != nil {
		return skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
	}
	tmp, err := os.MkdirTemp("", "banger-e2e-")
	if err != nil {
		return skip("temp dir: %v", err)
	}
	// The run directory holds unix sockets: keep it short (108-byte limit).
	run, err := os.MkdirTemp("/tmp", "be2e")
	if err != nil {
		os.RemoveAll(tmp)
		return skip("run dir: %v", err)
	}
	cleanup = func(passed bool) {
		// A child that died early (a go test timeout) may have left its
		// daemon and guests running: never run the CLI out here (it would
		// start a daemon on the host's network), only kill them.
		killStrays()
		if !passed {
			fmt.Fprintf(os.Stderr, "e2e: kept %s and %s for inspection\n", tmp, run)
			return
		}
		os.RemoveAll(tmp)
		os.RemoveAll(run)
	}
	bin := filepath.Join(tmp, "bin")
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	for k, v := range map[string]string{
		binEnv:                   bin,
		stateEnv:                 filepath.Join(tmp, "state"),
		runEnv:                   run,
		"BANGER_CONFIG":          os.DevNull,
		"BANGER_IMAGE_CACHE_DIR": filepath.Join(cache, "banger", "test-debs"),
		"BANGER_LOG_LEVEL":       "debug",
	} {
		os.Setenv(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	for _, name := range []string{"banger", "bangerd", "banger-jail", "banger-agent"} {
		var tags []string
		if name == "banger-agent" {
			tags = []string{"netgo", "osusergo"} // static, for the guest
		}
		if err := system.GoBuild(ctx, "./cmd/"+name, filepath.Join(bin, name), tags...); err != nil {
			// Not a skip: the tree does not build.
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			os.RemoveAll(tmp)
			os.RemoveAll(run)
			os.Exit(1)
		}
	}
	built := time.Now()
	out, errOut, rc := runCLI(nil, 10*time.Minute, "image", "build")
	if _, _, src := runCLI(nil, 30*time.Second, "daemon", "stop"); src != 0 {
		killStrays() // it must not outlive this step on the host's network
		return skip("stopping the image-building daemon failed")
	}
	if rc != 0 {
		return skip("the default image could not be built (is the Debian mirror reachable?): exit %d: %s", rc, tail(out+errOut, 8))
	}
	// The Python image's packages, for TestOCIImage in the namespace.
	if err := fetchPythonDebs(ctx, tmp); err != nil {
		os.Setenv(pythonDebsEnv, err.Error())
	}
	fmt.Fprintf(os.Stderr, "e2e: built binaries in %s, default image in %s\n", built.Sub(start).Round(time.Millisecond), time.Since(built).Round(time.Millisecond))
	return cleanup
}

func wantsSuite(pattern string) bool {
	top := strings.Split(pattern, "/")[0]
	re, err := regexp.Compile(top)
	if err != nil {
		return true
	}
	for _, n := range suiteTests {
		if re.MatchString(n) {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// findLeaks lists what the tests left on the host; only the daemon and its
// socket may remain.
func findLeaks() []string {
	state, run := os.Getenv(stateEnv), os.Getenv(runEnv)
	var leaks []string
	// Links: only this namespace's, which the daemon alone populates.
	links, err := linkNames()
	if err != nil {
		leaks = append(leaks, err.Error())
	}
	for _, name := range links {
		if strings.HasPrefix(name, "bgr") || name == "banger0" {
			leaks = append(leaks, "link "+name)
		}
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range loops {
		if b, err := os.ReadFile(p); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), state+"/") {
			leaks = append(leaks, fmt.Sprintf("loop device %s backed by %s", filepath.Base(filepath.Dir(filepath.Dir(p))), strings.TrimSpace(string(b))))
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, state) || strings.Contains(l, run) || mountOfStateLoop(l, state) {
				leaks = append(leaks, "mount "+l)
			}
		}
	}
	pids, _ := system.ListPIDs()
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err != nil || len(argv) == 0 || !strings.Contains(filepath.Base(argv[0]), "qemu") {
			continue
		}
		if strings.Contains(strings.Join(argv, " "), run) {
			leaks = append(leaks, fmt.Sprintf("qemu process %d: %s", pid, strings.Join(argv, " ")))
		}
	}
	filepath.WalkDir(run, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type()&fs.ModeSocket != 0 && p != filepath.Join(run, "bangerd.sock") {
			leaks = append(leaks, "socket "+p)
		}
		return nil
	})
	return leaks
}

// killStrays kills the suite's daemon and QEMU processes, if any remain.
func killStrays() {
	if d := daemonPID(); d.PID != 0 {
		fmt.Fprintf(os.Stderr, "e2e: killing leftover bangerd %d\n", d.PID)
		d.Kill(5 * time.Second)
	}
	killQEMUs()
}

// killQEMUs kills every QEMU process naming the suite's run directory.
func killQEMUs() {
	for {
		p, ok := findQEMU(os.Getenv(runEnv))
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "e2e: killing leftover qemu %d\n", p.PID)
		if p.Kill(5*time.Second) != nil {
			return
		}
	}
}

// findQEMU finds a QEMU process whose argv mentions s.
func findQEMU(s string) (system.Process, bool) {
	return system.FindProcess(func(argv []string) bool {
		return strings.Contains(filepath.Base(argv[0]), "qemu") && strings.Contains(strings.Join(argv, "\x00"), s)
	})
}

// forceDeleteAll deletes every VM of the suite's daemon and kills any QEMU
// still naming the run directory.
func forceDeleteAll() {
	out, _, code := runCLI(nil, 30*time.Second, "vm", "list", "-q")
	if names := strings.Fields(out); code == 0 && len(names) > 0 {
		runCLI(nil, 2*time.Minute, append([]string{"vm", "delete", "-f"}, names...)...)
	}
	killQEMUs()
}

// mountOfStateLoop reports whether a mountinfo line mounts a loop device whose
// backing file is under state (the daemon's read-only work disk mounts).
func mountOfStateLoop(line, state string) bool {
	_, after, ok := strings.Cut(line, " - ")
	if !ok {
		return false
	}
	f := strings.Fields(after)
	if len(f) < 2 || !strings.HasPrefix(f[1], "/dev/loop") {
		return false
	}
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(f[1]), "loop", "backing_file"))
	return err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), state+"/")
}
