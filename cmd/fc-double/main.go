// Command fc-double is a stand-in for the firecracker binary in tests: same
// flags, API socket and behaviour, no KVM. The logic is in
// internal/vmm/firecracker/fcdouble.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

func main() {
	// Only SIGHUP is handled, as in Firecracker (exit 156). SIGTERM and
	// SIGINT are deliberately not caught: Firecracker dies by them.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGHUP)
	code := fcdouble.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
