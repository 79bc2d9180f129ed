package fakehost

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// loopDev is a bound loop device.
type loopDev struct {
	file      string // absolute backing file
	readOnly  bool
	autoclear bool  // freed when its last user (a mount) goes
	size      int64 // bytes, rounded down to whole sectors as the kernel does
}

func loopName(i int) string { return "/dev/loop" + strconv.Itoa(i) }

func loopIndex(dev string) (int, bool) {
	s, ok := strings.CutPrefix(dev, "/dev/loop")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	return i, err == nil && i >= 0
}

// loopUsers says why a loop device cannot be detached, or "" if nothing
// uses it.
//
// The real kernel is gentler: LOOP_CLR_FD on a device with other openers
// sets autoclear and returns success, detaching later. The fake refuses
// instead, so a teardown that detaches before removing the dm table fails
// in tests rather than leaking quietly.
func (h *Host) loopUsers(dev string) string {
	if h.holds[dev] > 0 {
		return "held"
	}
	for _, d := range h.dms {
		for _, dep := range d.deps {
			if dep == dev {
				return "dm " + d.name
			}
		}
	}
	for _, mp := range h.mounts {
		if mp.loop == dev || mp.source == dev {
			return "mounted"
		}
	}
	return ""
}

// attachLoop binds file to the lowest free loop device.
func (h *Host) attachLoop(file string, readOnly, autoclear bool) (string, *exitError) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return "", fail(1, "losetup: %s: failed to set up loop device: %v", file, err)
	}
	st, err := os.Stat(abs)
	switch {
	case os.IsNotExist(err):
		return "", fail(1, "losetup: %s: failed to set up loop device: No such file or directory", file)
	case err != nil:
		return "", fail(1, "losetup: %s: failed to set up loop device: %v", file, err)
	case st.IsDir():
		return "", fail(1, "losetup: %s: failed to set up loop device: Invalid argument", file)
	}
	i := 0
	for h.loops[i] != nil {
		i++
	}
	h.loops[i] = &loopDev{file: abs, readOnly: readOnly, autoclear: autoclear, size: st.Size() / 512 * 512}
	return loopName(i), nil
}

func (h *Host) losetup(args []string) (string, *exitError) {
	var find, show, readOnly, detach, list, jsonOut, noHeadings bool
	var cols string
	var pos []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-f", "--find":
			find = true
		case "--show":
			show = true
		case "-r", "--read-only":
			readOnly = true
		case "-d", "--detach":
			detach = true
		case "-l", "--list":
			list = true
		case "-J", "--json":
			jsonOut = true
		case "-n", "--noheadings":
			noHeadings = true
		case "--raw":
		case "-O", "--output":
			i++
			if i == len(args) {
				return "", fail(1, "losetup: option requires an argument -- 'O'")
			}
			cols = args[i]
		default:
			if strings.HasPrefix(a, "-") {
				return "", unsupported("losetup option %q", a)
			}
			pos = append(pos, a)
		}
	}
	switch {
	case detach:
		if len(pos) == 0 {
			return "", fail(1, "losetup: option requires an argument -- 'd'")
		}
		for _, dev := range pos {
			i, ok := loopIndex(dev)
			if !ok {
				return "", fail(1, "losetup: %s: failed to use device: No such device", dev)
			}
			if h.loops[i] == nil {
				return "", fail(1, "losetup: %s: detach failed: No such device or address", dev)
			}
			if h.loopUsers(dev) != "" {
				return "", fail(1, "losetup: %s: detach failed: Device or resource busy", dev)
			}
			delete(h.loops, i)
		}
		return "", nil
	case list:
		if len(pos) > 0 {
			return "", unsupported("losetup --list with a device")
		}
		return h.listLoops(cols, jsonOut, noHeadings)
	case find:
		if len(pos) != 1 {
			return "", unsupported("losetup --find needs exactly one file")
		}
		dev, ee := h.attachLoop(pos[0], readOnly, false)
		if ee != nil {
			return "", ee
		}
		if show {
			return dev + "\n", nil
		}
		return "", nil
	}
	return "", unsupported("losetup %s", strings.Join(args, " "))
}

func (h *Host) listLoops(cols string, jsonOut, noHeadings bool) (string, *exitError) {
	if cols == "" {
		cols = "NAME,SIZELIMIT,OFFSET,AUTOCLEAR,RO,BACK-FILE,DIO,LOG-SEC"
	}
	names := strings.Split(strings.ToUpper(cols), ",")
	for _, c := range names {
		switch c {
		case "NAME", "SIZELIMIT", "OFFSET", "AUTOCLEAR", "RO", "BACK-FILE", "DIO", "LOG-SEC":
		default:
			return "", fail(1, "losetup: unknown column: %s", c)
		}
	}
	idx := make([]int, 0, len(h.loops))
	for i := range h.loops {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	// value returns the column as text and as JSON.
	value := func(i int, col string) (string, string) {
		l := h.loops[i]
		q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
		bit := func(b bool) (string, string) {
			if b {
				return "1", "true"
			}
			return "0", "false"
		}
		switch col {
		case "NAME":
			return loopName(i), q(loopName(i))
		case "BACK-FILE":
			f := l.file
			if _, err := os.Stat(f); os.IsNotExist(err) {
				f += " (deleted)"
			}
			return f, q(f)
		case "RO":
			return bit(l.readOnly)
		case "AUTOCLEAR":
			return bit(l.autoclear)
		case "DIO":
			return bit(false)
		case "LOG-SEC":
			return "512", "512"
		}
		return "0", "0" // SIZELIMIT, OFFSET
	}
	var b strings.Builder
	if jsonOut {
		b.WriteString("{\n   \"loopdevices\": [\n")
		for n, i := range idx {
			b.WriteString("      {\n")
			for k, c := range names {
				_, js := value(i, c)
				fmt.Fprintf(&b, "         %q: %s", strings.ToLower(c), js)
				if k < len(names)-1 {
					b.WriteString(",")
				}
				b.WriteString("\n")
			}
			b.WriteString("      }")
			if n < len(idx)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString("   ]\n}\n")
		return b.String(), nil
	}
	if !noHeadings {
		b.WriteString(strings.Join(names, " ") + "\n")
	}
	for _, i := range idx {
		vals := make([]string, len(names))
		for k, c := range names {
			vals[k], _ = value(i, c)
		}
		b.WriteString(strings.Join(vals, " ") + "\n")
	}
	return b.String(), nil
}
