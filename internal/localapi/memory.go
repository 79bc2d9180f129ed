package localapi

import (
	"runtime/debug"
	"sync/atomic"
)

// bigListVMs is the VM count from which a list or a startup reconcile leaves
// enough freed heap behind (about 8 KB per VM) to be worth returning at once.
const bigListVMs = 1000

// releasing is set while a releaseMemory runs; the Go heap is per process.
var releasing atomic.Bool

// releaseMemory returns the heap freed by a large operation to the OS now,
// instead of leaving it to the runtime's background scavenger: the daemon
// idles most of its life and its resident size is what a host sees. It runs
// in the background, after the response went out, at most one at a time.
func releaseMemory() {
	if !releasing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer releasing.Store(false)
		debug.FreeOSMemory()
	}()
}
