// Command banger-jail confines one VMM for bangerd: it reads the jail spec
// named by its only argument, enters the jail and execs the VMM. bangerd
// starts it in a new mount and PID namespace. Wiring only: see internal/jail.
package main

import (
	"fmt"
	"os"
	"runtime"

	"github.com/banger-dev/banger/internal/jail"
)

// The whole helper runs on the process's first thread, so the final exec
// comes from the thread group leader: an exec from another thread leaves
// the leader a zombie for a moment, and the daemon, reading /proc/PID/stat
// right then, took the starting VMM for dead.
func init() { runtime.LockOSThread() }

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: banger-jail SPEC-FILE (started by bangerd)")
		os.Exit(2)
	}
	s, err := jail.Read(os.Args[1])
	if err == nil {
		err = jail.Enter(s)
	}
	fmt.Fprintln(os.Stderr, "banger-jail:", err)
	os.Exit(1)
}
