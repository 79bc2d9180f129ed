// banger-agent is banger's guest agent (see internal/agent): the image
// build installs it as /usr/lib/banger/agent, busybox init respawns it,
// and it answers on the virtio-serial port org.banger.agent.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
)

const portName = "org.banger.agent"

func main() {
	port := findPort()
	if port == "" {
		// No channel here (another VMM): idle rather than be respawned in a
		// loop.
		for {
			time.Sleep(time.Hour)
		}
	}
	f, err := os.OpenFile(port, os.O_RDWR, 0)
	if err != nil {
		// In use or gone: init respawns us.
		fmt.Fprintln(os.Stderr, "banger-agent:", err)
		time.Sleep(5 * time.Second)
		os.Exit(1)
	}
	os.MkdirAll("/dev/virtio-ports", 0o755)
	os.Remove("/dev/virtio-ports/" + portName)
	os.Symlink(port, "/dev/virtio-ports/"+portName)
	// Read the whole program once, so its pages stay in the guest's page
	// cache and so in any state saved from here: a command that never ran
	// before the save then faults its code in from memory, not from the
	// clone's disk.
	os.ReadFile("/proc/self/exe")
	sys := agent.NewLinux()
	sys.WarmUp()
	s := agent.Server{Sys: sys, Wait: portWaiter(f, maxWait)}
	if c, err := os.OpenFile("/dev/console", os.O_WRONLY|os.O_APPEND, 0); err == nil {
		s.Console = c
		fmt.Fprintf(c, "banger-agent: ready on %s\n", port)
	}
	if err := s.Serve(context.Background(), f); err != nil {
		fmt.Fprintln(os.Stderr, "banger-agent:", err)
		os.Exit(1)
	}
}

// findPort returns the device of the virtio-serial port named portName.
func findPort() string {
	ports, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, p := range ports {
		if b, err := os.ReadFile(filepath.Join(p, "name")); err == nil && strings.TrimSpace(string(b)) == portName {
			return "/dev/" + filepath.Base(p)
		}
	}
	return ""
}

// maxWait bounds one wait for the port: should a wake-up be missed, the
// agent reads again this often.
const maxWait = time.Second

// portWaiter waits, after an empty read, until the port is woken up (the
// host end connects or data arrives: virtio_console wakes its readers
// then), instead of reading again every few ms. An idle guest's agent then
// costs nothing: polling every 20 ms was about a third of an idle guest's
// CPU under TCG. The port is in Go's poller (edge-triggered), so a wait
// ends at the next wake-up, or after limit.
//
// Go's RawRead forgets a wake-up that came before it (it resets the
// descriptor's readiness, then calls the function): a request that
// arrived between the empty read and the wait would wait for the limit.
// So the function first asks the port itself (poll, no timeout) whether a
// request is there to read, and waits only when none is. That happened to
// whole snapshots: every clone of one saved in that window waited a
// second for its identity.
func portWaiter(f *os.File, limit time.Duration) func(ctx context.Context) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil // not pollable: Server polls
	}
	return func(ctx context.Context) error {
		f.SetReadDeadline(time.Now().Add(limit))
		defer f.SetReadDeadline(time.Time{})
		waited := false
		err := rc.Read(func(fd uintptr) bool {
			if waited {
				return true
			}
			waited = true
			return hasRequest(fd) // else wait for the port to be woken
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// Not in the poller after all: poll, as Server would.
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	}
}

// hasRequest reports whether a read of fd would return data now. A port
// whose host end is closed polls readable too (a read returns EOF at
// once) and hung up: that is no request, and the wait goes on until the
// host connects.
func hasRequest(fd uintptr) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(p, 0)
	return err == nil && n > 0 && p[0].Revents&unix.POLLIN != 0 && p[0].Revents&unix.POLLHUP == 0
}
