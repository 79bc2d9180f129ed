package qemu

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/system"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeQEMUEnv); mode != "" {
		os.Exit(fakeQEMUMain(mode))
	}
	// As root, ReexecInNewNetNS re-runs the tests in a private network
	// namespace where the Debian mirror is out of reach: build the guest
	// image for the boot tests first, out here.
	if os.Geteuid() == 0 && os.Getenv(system.NetNSEnv) != "1" && os.Getenv(guestDirEnv) == "" {
		cleanup := prepareGuest()
		code := system.ReexecInNewNetNS(m)
		cleanup()
		os.Exit(code)
	}
	os.Exit(system.ReexecInNewNetNS(m))
}

// prepareGuest builds a minimal guest image into a temporary directory and
// publishes it to the re-executed tests through guestDirEnv, or records in
// guestSkipEnv why it did not. Downloaded .debs are cached in the user cache
// directory, so later runs need no network. It returns the cleanup.
func prepareGuest() (cleanup func()) {
	cleanup = func() {}
	skip := func(format string, args ...any) { os.Setenv(guestSkipEnv, fmt.Sprintf(format, args...)) }
	flag.Parse()
	if testing.Short() {
		skip("guest image not built in -short mode")
		return cleanup
	}
	if f := flag.Lookup("test.run"); f != nil && !wantsBootTests(f.Value.String()) {
		return cleanup
	}
	if _, err := system.LookPath(defaultBinary); err != nil {
		skip("%s not installed", defaultBinary)
		return cleanup
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	cache = filepath.Join(cache, "banger", "test-debs")
	tmp, err := os.MkdirTemp("", "banger-qemu-guest-")
	if err != nil {
		skip("temp dir for the guest image: %v", err)
		return cleanup
	}
	cleanup = func() { os.RemoveAll(tmp) }
	dir := filepath.Join(tmp, "image")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	agent := filepath.Join(tmp, "banger-agent")
	if err := system.GoBuild(ctx, "./cmd/banger-agent", agent, "netgo", "osusergo"); err != nil {
		skip("building the guest agent failed: %v", err)
		return cleanup
	}
	res, err := image.Build(ctx, image.BuildOptions{Dir: dir, CacheDir: cache, Runner: system.ExecRunner{}, Agent: agent})
	if err != nil {
		skip("building the guest image failed (is the Debian mirror reachable?): %v", err)
		return cleanup
	}
	for file, want := range map[string]string{res.Kernel: "vmlinuz", res.Initrd: "initrd.img", res.Rootfs: "rootfs.ext4"} {
		if file != filepath.Join(dir, want) {
			skip("image.Build wrote %s, the boot tests expect %s", file, want)
			return cleanup
		}
	}
	fmt.Fprintf(os.Stderr, "qemu tests: built guest image (kernel %s) in %s\n", res.KernelVersion, time.Since(start).Round(time.Millisecond))
	os.Setenv(guestDirEnv, dir)
	os.Setenv(guestBootArgsEnv, res.BootArgs)
	return cleanup
}
