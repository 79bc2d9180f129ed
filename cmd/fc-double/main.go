// Command fc-double is a stand-in for the firecracker binary in tests: same
// flags, API socket and behaviour, no KVM. Run through a link named
// "jailer" it is a stand-in for Firecracker's jailer instead. The logic is
// in internal/vmm/firecracker/fcdouble.
package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

// The jailer joins a network namespace on the calling thread and starts
// the VMM from it: everything runs on the main thread.
func init() { runtime.LockOSThread() }

func main() {
	if filepath.Base(os.Args[0]) == "jailer" {
		os.Exit(fcdouble.JailerMain(os.Args[1:], os.Stdout, os.Stderr))
	}
	// Only SIGHUP is handled, as in Firecracker (exit 156). SIGTERM and
	// SIGINT are deliberately not caught: Firecracker dies by them.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGHUP)
	code := fcdouble.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
