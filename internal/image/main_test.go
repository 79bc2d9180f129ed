package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// testCacheDir keeps the .debs between test runs so that repeated privileged
// runs download nothing.
const testCacheDir = "/var/cache/banger/debs"

// prefetchEnv carries the outcome of the package prefetch ("ok" or why not)
// from TestMain's host-side process to its re-executed child.
const prefetchEnv = "BANGER_TEST_IMAGE_PREFETCH"

// prefetchPython3Env is the same for python3 and its dependencies, which
// the extra-package tests build with.
const prefetchPython3Env = "BANGER_TEST_IMAGE_PREFETCH_PYTHON3"

// TestMain fills the package cache while still in the host's network
// namespace (the Debian mirror is not reachable from the private one), then
// re-runs the tests in a private network namespace because the boot test
// starts a guest. Builds in the child find every package cached.
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 && os.Getenv(system.NetNSEnv) != "1" && os.Getenv(prefetchEnv) == "" {
		os.Setenv(prefetchEnv, prefetchDebs())
		os.Setenv(prefetchPython3Env, prefetchPython3())
	}
	code := system.ReexecInNewNetNS(m)
	if testAgent.dir != "" {
		os.RemoveAll(testAgent.dir)
	}
	sharedImage.cleanup()
	if python3Build.base != "" {
		os.RemoveAll(python3Build.base)
	}
	os.Exit(code)
}

// prefetchDebs downloads the minimal base's packages into testCacheDir.
func prefetchDebs() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := system.ExecRunner{}
	kernel, err := resolveKernelPackage(ctx, r)
	if err != nil {
		return fmt.Sprintf("debian packages unavailable: %v", err)
	}
	scratch, err := os.MkdirTemp("", "banger-prefetch-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(scratch)
	names := append([]string{kernel}, minimalPackages...)
	if _, err := fetchDebs(ctx, r, scratch, testCacheDir, names, func() error { return nil }); err != nil {
		return fmt.Sprintf("debian packages unavailable (mirror unreachable?): %v", err)
	}
	return "ok"
}

// prefetchPython3 downloads python3's dependency closure into testCacheDir.
func prefetchPython3() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := system.ExecRunner{}
	deps, err := resolveClosure(ctx, r, []string{"python3"}, minimalPackages)
	if err != nil {
		return fmt.Sprintf("python3's dependencies unresolvable: %v", err)
	}
	scratch, err := os.MkdirTemp("", "banger-prefetch-")
	if err != nil {
		return err.Error()
	}
	defer os.RemoveAll(scratch)
	if _, err := fetchDebs(ctx, r, scratch, testCacheDir, append([]string{"python3"}, deps...), func() error { return nil }); err != nil {
		return fmt.Sprintf("python3's packages unavailable (mirror unreachable?): %v", err)
	}
	return "ok"
}

// requireRoot skips tests that need root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (run as root, e.g. make test)")
	}
}

// sharedImage is one minimal image built for all the integration tests.
var sharedImage builtImage

type builtImage struct {
	once      sync.Once
	dir       string
	res       Result
	steps     []string
	stepTimes []time.Duration // since the build started, per step
	duration  time.Duration
	err       error
}

// minimalImage builds (once) and returns the shared minimal image, or skips
// when the build cannot run here: not root, or packages not downloadable.
func minimalImage(t *testing.T) Result {
	t.Helper()
	requireRoot(t)
	if s := os.Getenv(prefetchEnv); s != "ok" {
		t.Skipf("integration test needs the Debian mirror: %s", s)
	}
	s := &sharedImage
	s.once.Do(func() {
		s.dir, s.err = os.MkdirTemp("", "banger-image-test-")
		if s.err != nil {
			return
		}
		start := time.Now()
		s.res, s.err = Build(context.Background(), BuildOptions{Agent: testAgentBin(),
			Dir:      filepath.Join(s.dir, "minimal"),
			CacheDir: testCacheDir,
			Runner:   system.ExecRunner{},
			Progress: func(step string) {
				s.steps = append(s.steps, step)
				s.stepTimes = append(s.stepTimes, time.Since(start))
			},
		})
		s.duration = time.Since(start)
		if os.Getenv("BANGER_TEST_KEEP_IMAGE") != "" {
			fmt.Fprintf(os.Stderr, "image kept in %s\n", s.dir)
		}
	})
	if s.err != nil {
		t.Fatalf("building minimal image: %v", s.err)
	}
	return s.res
}

func (s *builtImage) cleanup() {
	if s.dir != "" && os.Getenv("BANGER_TEST_KEEP_IMAGE") == "" {
		os.RemoveAll(s.dir)
	}
}

// testAgent is cmd/banger-agent built once per test binary, for the builds
// (a minimal image needs it).
var testAgent struct {
	once sync.Once
	dir  string
	path string
}

// testAgentBin builds the guest agent on first use and returns its path
// ("" when it cannot be built: Build then says it has no agent).
func testAgentBin() string {
	testAgent.once.Do(func() {
		dir, err := os.MkdirTemp("", "banger-image-agent-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "image tests:", err)
			return
		}
		testAgent.dir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		p := filepath.Join(dir, "banger-agent")
		if err := system.GoBuild(ctx, "./cmd/banger-agent", p, "netgo", "osusergo"); err != nil {
			fmt.Fprintln(os.Stderr, "image tests: building the guest agent:", err)
			return
		}
		testAgent.path = p
	})
	return testAgent.path
}
