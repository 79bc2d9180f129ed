package crash

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

var (
	seedFlag      = flag.Int64("crash.seed", 0, "seed of TestRandomOps (0: from the clock); every run logs its seed")
	opsFlag       = flag.Int("crash.ops", 200, "operations TestRandomOps runs")
	parallelFlag  = flag.Int("crash.parallel", 6, "chains of crash-point runs that run at once (each run is mostly waiting)")
	knownBugsFlag = flag.Bool("crash.known-bugs", false, "fail on the symptoms of known daemon bugs (each has a failing test of its own in bugs_test.go), and let TestRandomOps run gc and create at once, instead of steering clear of them")
	netFlag       = flag.Bool("crash.net", true, "as root, run each installation with banger's network on, in a namespace of its own (false: network off, as unprivileged)")
	confineFlag   = flag.Bool("crash.confine", true, "as root, confine VMMs (own uid, cgroups under a parent of the installation's own, jail); false: confine = off")
	logsFlag      = flag.Bool("crash.logs", false, "log each daemon's log at the end of its test")
	hitsFlag      = flag.Int("crash.hits", 0, "TestCrashPoints kills bangerd at the first N hits of each point, one run per hit (0: every hit the scenario makes; at least 3 are required)")
)

// As root, the tests run in a private network namespace that vanishes with
// them; each installation then makes a namespace of its own.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == slowJail {
		slowJailMain()
	}
	os.Exit(system.ReexecInNewNetNS(cleanupM{m}))
}

// slowJail is the name under which this test binary stands in for the jail
// helper in TestConfinedVMMInExecIsAlive: its leader thread ends first,
// then, a second later, another thread execs the real banger-jail. In
// between the process is alive and /proc/PID/stat reads "Z" for it, as it
// does for a moment whenever a multithreaded program (banger-jail is one)
// execs from a thread other than its first.
const slowJail = "banger-jail-slow"

func init() {
	if filepath.Base(os.Args[0]) == slowJail {
		runtime.LockOSThread() // main, and so TestMain, on the leader thread
	}
}

func slowJailMain() {
	real := filepath.Join(filepath.Dir(os.Args[0]), "banger-jail")
	go func() {
		runtime.LockOSThread()
		time.Sleep(time.Second)
		err := system.ExecReplace(append([]string{real}, os.Args[1:]...), os.Environ())
		fmt.Fprintln(os.Stderr, "banger-jail-slow:", err)
		os.Exit(1)
	}()
	time.Sleep(20 * time.Millisecond)
	syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0) // the leader thread alone
}

// cleanupM removes the helper binaries once the tests are done.
type cleanupM struct{ m *testing.M }

func (c cleanupM) Run() int {
	code := c.m.Run()
	if helpers.dir != "" {
		os.RemoveAll(helpers.dir)
	}
	return code
}

// Helper binaries and image files, made once per test binary on first use.
var helpers struct {
	once     sync.Once
	err      error
	dir      string
	bangerd  string // built with -tags bangertest: failpoints compiled in; banger-jail next to it
	fcDouble string
	kernel   string // a fake vmlinux the double accepts
	rootfs   string // a small ext4 file
}

// needHelpers builds bangerd and fc-double and writes the image files, or
// skips the test saying why they cannot be made.
func needHelpers(t testing.TB) {
	t.Helper()
	helpers.once.Do(func() { helpers.err = makeHelpers() })
	if helpers.err != nil {
		t.Skipf("cannot build bangerd and fc-double or make the image: %v", helpers.err)
	}
}

func makeHelpers() error {
	dir, err := os.MkdirTemp("", "banger-crash-bin")
	if err != nil {
		return err
	}
	helpers.dir = dir
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	helpers.bangerd = filepath.Join(dir, "bangerd")
	if err := system.GoBuild(ctx, "./cmd/bangerd", helpers.bangerd, "bangertest"); err != nil {
		return err
	}
	// Next to bangerd, where it looks for its jail helper.
	if err := system.GoBuild(ctx, "./cmd/banger-jail", filepath.Join(dir, "banger-jail")); err != nil {
		return err
	}
	helpers.fcDouble = filepath.Join(dir, "fc-double")
	if err := system.GoBuild(ctx, "./cmd/fc-double", helpers.fcDouble); err != nil {
		return err
	}
	helpers.kernel = filepath.Join(dir, "vmlinux")
	if err := fcdouble.WriteFakeKernel(helpers.kernel); err != nil {
		return err
	}
	helpers.rootfs = filepath.Join(dir, "rootfs.ext4")
	f, err := os.Create(helpers.rootfs)
	if err != nil {
		return err
	}
	err = f.Truncate(16 << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if _, err := (system.ExecRunner{}).Run(ctx, "mkfs.ext4", "-q", "-F", helpers.rootfs); err != nil {
		return fmt.Errorf("mkfs.ext4: %w", err)
	}
	return nil
}
