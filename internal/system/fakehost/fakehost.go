// Package fakehost is a simulated Linux host for tests: a Runner that applies
// losetup, dmsetup, mkfs.ext4, debugfs, resize2fs, e2fsck, mount and umount to
// a model of loop devices, device-mapper tables, mounts and the files inside
// ext4 images, and refuses, with the kernel's or the tool's own message, what
// the real host would refuse. Tests compare its State, not the commands it
// saw. Any command or flag it does not model fails loudly.
//
// Files themselves are real: backing files, images, seed and mount
// directories live on the real filesystem (a test's temp dir). The fake
// models what the kernel and the ext4 tools would do with them.
package fakehost

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/banger-dev/banger/internal/system"
)

// Host is the simulated host. Its zero value is not usable; call New. It is
// safe for concurrent use: commands apply one at a time, as if atomic.
type Host struct {
	mu          sync.Mutex
	dmAvailable bool
	loops       map[int]*loopDev       // by loop index
	dms         map[string]*dmDev      // by dm name
	mounts      map[string]*mountPoint // by target dir
	images      map[string]*extfs      // by real path of the file holding the filesystem
	holds       map[string]int         // extra openers (a VMM, a shell) by device or dir
	faults      []*fault
	counts      map[string]int // commands run, by full argv
}

// New returns an empty host with device-mapper available.
func New() *Host {
	return &Host{
		dmAvailable: true,
		loops:       map[int]*loopDev{},
		dms:         map[string]*dmDev{},
		mounts:      map[string]*mountPoint{},
		images:      map[string]*extfs{},
		holds:       map[string]int{},
		counts:      map[string]int{},
	}
}

// SetDMAvailable says whether the host's kernel has device-mapper. Without
// it every dmsetup command fails as it does when the driver is missing.
func (h *Host) SetDMAvailable(ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dmAvailable = ok
}

// fault is an injected failure: the next n commands whose argv (joined by
// spaces) starts with prefix fail with stderr and change nothing.
type fault struct {
	prefix string
	n      int // < 0: forever
	stderr string
}

// FailNext makes the next command starting with cmdPrefix (argv joined by
// spaces, e.g. "dmsetup create") fail with stderr, changing nothing.
func (h *Host) FailNext(cmdPrefix, stderr string) { h.FailTimes(cmdPrefix, 1, stderr) }

// FailTimes makes the next n commands starting with cmdPrefix fail with
// stderr; n < 0 means every one from now on.
func (h *Host) FailTimes(cmdPrefix string, n int, stderr string) {
	if n == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = append(h.faults, &fault{prefix: cmdPrefix, n: n, stderr: stderr})
}

// BusyTimes makes the next n commands starting with cmdPrefix fail with
// "Device or resource busy" (n < 0: forever), as udev or a lingering
// opener causes on a real host.
func (h *Host) BusyTimes(cmdPrefix string, n int) {
	h.FailTimes(cmdPrefix, n, fmt.Sprintf("fakehost: %s: Device or resource busy", cmdPrefix))
}

// ClearFaults drops every injected failure not yet used.
func (h *Host) ClearFaults() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.faults = nil
}

// Count returns how many commands starting with cmdPrefix have been run,
// failed ones included; tests use it to check that retries are bounded.
func (h *Host) Count(cmdPrefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for argv, c := range h.counts {
		if hasPrefix(argv, cmdPrefix) {
			n += c
		}
	}
	return n
}

// hasPrefix matches whole words: "losetup -d" matches "losetup -d /dev/loop0"
// but "dmsetup re" does not match "dmsetup remove".
func hasPrefix(argv, prefix string) bool {
	return argv == prefix || strings.HasPrefix(argv, prefix+" ")
}

// Hold adds an opener to a device ("/dev/loop0", "/dev/mapper/banger-x") or
// a mount directory, as a running VMM or a shell inside the mount would:
// removing, detaching or unmounting it is then refused as busy until Release.
func (h *Host) Hold(target string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holds[target]++
}

// Release drops an opener added by Hold.
func (h *Host) Release(target string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.holds[target] <= 1 {
		delete(h.holds, target)
		return
	}
	h.holds[target]--
}

// exitError is a tool's failure before it becomes a system.CommandError.
type exitError struct {
	code   int
	stderr string
	stdout string
}

func (e *exitError) Error() string { return e.stderr }

func fail(code int, format string, args ...any) *exitError {
	return &exitError{code: code, stderr: fmt.Sprintf(format, args...)}
}

// unsupported is the failure for anything the fake does not model; it has
// no error kind, so no caller can mistake it for a tolerable condition.
func unsupported(format string, args ...any) *exitError {
	return &exitError{code: 127, stderr: "fakehost: unsupported: " + fmt.Sprintf(format, args...)}
}

// Run implements the Runner interfaces of banger's packages.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	if err := ctx.Err(); err != nil {
		return nil, &system.CommandError{Argv: argv, ExitCode: -1, Err: err}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	joined := strings.Join(argv, " ")
	h.counts[joined]++
	for i, f := range h.faults {
		if !hasPrefix(joined, f.prefix) {
			continue
		}
		if f.n > 0 {
			f.n--
			if f.n == 0 {
				h.faults = append(h.faults[:i], h.faults[i+1:]...)
			}
		}
		return nil, commandError(argv, &exitError{code: 1, stderr: f.stderr})
	}
	var out string
	var ee *exitError
	switch name {
	case "losetup":
		out, ee = h.losetup(args)
	case "dmsetup":
		out, ee = h.dmsetup(args)
	case "mkfs.ext4":
		out, ee = h.mkfs(args)
	case "debugfs":
		out, ee = h.debugfs(args)
	case "resize2fs":
		out, ee = h.resize2fs(args)
	case "e2fsck":
		out, ee = h.e2fsck(args)
	case "mount":
		out, ee = h.mount(args)
	case "umount":
		out, ee = h.umount(args)
	default:
		ee = unsupported("command %q", joined)
	}
	if ee != nil {
		return []byte(ee.stdout), commandError(argv, ee)
	}
	return []byte(out), nil
}

func commandError(argv []string, e *exitError) *system.CommandError {
	ce := &system.CommandError{
		Argv:     argv,
		ExitCode: e.code,
		Stderr:   e.stderr,
		Err:      fmt.Errorf("exit status %d", e.code),
	}
	if e.code != 127 {
		ce.Kind = system.Classify(e.stderr)
	}
	return ce
}

// State renders the simulated host as sorted lines, one per loop device,
// dm device, mount, and ext4 image file or directory the fake knows of, for
// golden comparison. Paths are real; tests replace their temp dir.
func (h *Host) State() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var lines []string
	for i, l := range h.loops {
		mode := "rw"
		if l.readOnly {
			mode = "ro"
		}
		extra := ""
		if l.autoclear {
			extra = " autoclear"
		}
		lines = append(lines, fmt.Sprintf("loop %s %s file=%s%s", loopName(i), mode, l.file, extra))
	}
	for name, d := range h.dms {
		lines = append(lines, fmt.Sprintf("dm %s 253:%d table=%q", name, d.minor, d.table))
	}
	for dir, mp := range h.mounts {
		lines = append(lines, fmt.Sprintf("mount %s source=%s loop=%s opts=%s", dir, mp.source, mp.loop, mp.opts))
	}
	for p, fs := range h.images {
		if _, err := os.Stat(p); err != nil {
			continue // file removed since: its filesystem went with it
		}
		lines = append(lines, fmt.Sprintf("image %s label=%q", p, fs.label))
		for fp, e := range fs.entries {
			if fp == "/" {
				continue
			}
			kind := "file"
			size := fmt.Sprintf(" size=%d", len(e.data))
			if e.dir {
				kind, size = "dir", ""
			}
			lines = append(lines, fmt.Sprintf("image %s %s %s mode=%04o uid=%d gid=%d%s", p, kind, fp, e.mode, e.uid, e.gid, size))
		}
	}
	for t, n := range h.holds {
		lines = append(lines, fmt.Sprintf("hold %s %d", t, n))
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}
