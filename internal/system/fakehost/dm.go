package fakehost

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// dmDev is a device-mapper device with its one-target table.
type dmDev struct {
	name   string
	minor  int
	table  string   // as given to create
	target string   // "snapshot" or "linear"
	deps   []string // devices the table opens, as named in it ("/dev/loop0")
	// For snapshot: origin and COW device; for linear: deps[0].
	origin, cow string
	sectors     int64
}

const dmMajor = 253

const noDMDriver = "/dev/mapper/control: open failed: No such device\n" +
	"Failure to communicate with kernel device-mapper driver.\n" +
	"Check that device-mapper is available in the kernel.\n" +
	"Command failed.\n"

func (h *Host) dmsetup(args []string) (string, *exitError) {
	if len(args) == 0 {
		return "", unsupported("dmsetup without a command")
	}
	if !h.dmAvailable {
		ee := fail(1, "%s", noDMDriver)
		if args[0] == "version" {
			ee.stdout = "Library version:   1.02.185 (2022-05-18)\n"
		}
		return "", ee
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "version":
		if len(rest) != 0 {
			return "", unsupported("dmsetup version %v", rest)
		}
		return "Library version:   1.02.185 (2022-05-18)\nDriver version:    4.48.0\n", nil
	case "ls":
		if len(rest) != 0 {
			return "", unsupported("dmsetup ls %v", rest)
		}
		if len(h.dms) == 0 {
			return "No devices found\n", nil
		}
		names := h.dmNames()
		var b strings.Builder
		for _, n := range names {
			fmt.Fprintf(&b, "%s\t(%d:%d)\n", n, dmMajor, h.dms[n].minor)
		}
		return b.String(), nil
	case "create":
		if len(rest) != 3 || rest[1] != "--table" {
			return "", unsupported("dmsetup create %v (want NAME --table TABLE)", rest)
		}
		return "", h.dmCreate(rest[0], rest[2])
	case "remove":
		if len(rest) != 1 {
			return "", unsupported("dmsetup remove %v", rest)
		}
		return "", h.dmRemove(rest[0])
	case "table", "info":
		if len(rest) != 1 {
			return "", unsupported("dmsetup %s %v", cmd, rest)
		}
		d := h.dms[rest[0]]
		if d == nil {
			return "", fail(1, "Device does not exist.\nCommand failed.\n")
		}
		if cmd == "table" {
			return h.dmTableText(d) + "\n", nil
		}
		return fmt.Sprintf("Name:              %s\nState:             ACTIVE\nRead Ahead:        256\n"+
			"Tables present:    LIVE\nOpen count:        %d\nEvent number:      0\n"+
			"Major, minor:      %d, %d\nNumber of targets: 1\n\n",
			d.name, h.openCount("/dev/mapper/"+d.name), dmMajor, d.minor), nil
	}
	return "", unsupported("dmsetup %s", cmd)
}

func (h *Host) dmNames() []string {
	names := make([]string, 0, len(h.dms))
	for n := range h.dms {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// openCount is how many users hold a device: Hold, mounts and other dm
// tables built on it.
func (h *Host) openCount(dev string) int {
	n := h.holds[dev]
	for _, d := range h.dms {
		for _, dep := range d.deps {
			if dep == dev {
				n++
			}
		}
	}
	for _, mp := range h.mounts {
		if mp.source == dev {
			n++
		}
	}
	return n
}

// dmTableText renders a table as the kernel reports it, devices as major:minor.
func (h *Host) dmTableText(d *dmDev) string {
	f := strings.Fields(d.table)
	for i, w := range f {
		if i > 2 && strings.HasPrefix(w, "/dev/") {
			f[i] = h.majMin(w)
		}
	}
	return strings.Join(f, " ")
}

func (h *Host) majMin(dev string) string {
	if i, ok := loopIndex(dev); ok {
		return fmt.Sprintf("7:%d", i)
	}
	if d := h.dms[strings.TrimPrefix(dev, "/dev/mapper/")]; d != nil {
		return fmt.Sprintf("%d:%d", dmMajor, d.minor)
	}
	return dev
}

// blockDev resolves a device named in a table ("/dev/loop0", "7:0",
// "/dev/mapper/x", "253:1") to its canonical path, size in sectors and
// whether it is read-only. ok is false when no such device is set up.
func (h *Host) blockDev(ref string) (path string, sectors int64, readOnly, ok bool) {
	if maj, min, found := strings.Cut(ref, ":"); found {
		mi, err := strconv.Atoi(min)
		if err != nil {
			return "", 0, false, false
		}
		switch maj {
		case "7":
			ref = loopName(mi)
		case strconv.Itoa(dmMajor):
			for _, d := range h.dms {
				if d.minor == mi {
					ref = "/dev/mapper/" + d.name
				}
			}
		}
	}
	if i, isLoop := loopIndex(ref); isLoop {
		l := h.loops[i]
		if l == nil {
			return "", 0, false, false
		}
		return ref, l.size / 512, l.readOnly, true
	}
	if name, isDM := strings.CutPrefix(ref, "/dev/mapper/"); isDM {
		d := h.dms[name]
		if d == nil {
			return "", 0, false, false
		}
		return ref, d.sectors, false, true
	}
	return "", 0, false, false
}

func (h *Host) dmCreate(name, table string) *exitError {
	if name == "" || len(name) > 127 || strings.ContainsAny(name, "/ \t\n") {
		return fail(1, "Invalid device name: %q\nCommand failed.\n", name)
	}
	if h.dms[name] != nil {
		return fail(1, "device-mapper: create ioctl on %s  failed: Device or resource busy\nCommand failed.\n", name)
	}
	// Every later refusal happens at table load; dmsetup then removes the
	// device it created, so nothing is left behind.
	reload := func(reason string) *exitError {
		return fail(1, "device-mapper: reload ioctl on %s  failed: %s\nCommand failed.\n", name, reason)
	}
	if strings.Contains(strings.TrimSpace(table), "\n") {
		return unsupported("dm tables with more than one target")
	}
	f := strings.Fields(table)
	if len(f) < 3 {
		return reload("Invalid argument")
	}
	start, err1 := strconv.ParseInt(f[0], 10, 64)
	length, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || start != 0 || length <= 0 {
		return reload("Invalid argument")
	}
	d := &dmDev{name: name, table: strings.Join(f, " "), target: f[2], sectors: length}
	args := f[3:]
	switch d.target {
	case "snapshot":
		if len(args) != 4 {
			return reload("Invalid argument")
		}
		origin, originSectors, _, ok := h.blockDev(args[0])
		if !ok {
			return reload("No such device or address")
		}
		cow, _, cowRO, ok := h.blockDev(args[1])
		if !ok {
			return reload("No such device or address")
		}
		// The origin is opened read-only, the COW read-write (dm-snap.c).
		if cowRO {
			return reload("Permission denied")
		}
		if origin == cow {
			return reload("Invalid argument")
		}
		if args[2] != "P" && args[2] != "N" {
			return reload("Invalid argument")
		}
		chunk, err := strconv.ParseInt(args[3], 10, 64)
		if err != nil || chunk < 8 || chunk&(chunk-1) != 0 {
			return reload("Invalid argument")
		}
		if length > originSectors {
			return reload("Invalid argument") // "device too small for target"
		}
		for _, dev := range []string{origin, cow} {
			if h.mountedDev(dev) {
				return reload("Device or resource busy")
			}
		}
		d.origin, d.cow, d.deps = origin, cow, []string{origin, cow}
	case "linear":
		if len(args) != 2 {
			return reload("Invalid argument")
		}
		dev, sectors, _, ok := h.blockDev(args[0])
		if !ok {
			return reload("No such device or address")
		}
		off, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || off < 0 || off+length > sectors {
			return reload("Invalid argument")
		}
		if h.mountedDev(dev) {
			return reload("Device or resource busy")
		}
		d.origin, d.deps = dev, []string{dev}
	default:
		return unsupported("dm target %q", d.target)
	}
	used := map[int]bool{}
	for _, o := range h.dms {
		used[o.minor] = true
	}
	for used[d.minor] {
		d.minor++
	}
	h.dms[name] = d
	return nil
}

func (h *Host) mountedDev(dev string) bool {
	for _, mp := range h.mounts {
		if mp.source == dev || mp.loop == dev {
			return true
		}
	}
	return false
}

func (h *Host) dmRemove(name string) *exitError {
	d := h.dms[name]
	if d == nil {
		return fail(1, "device-mapper: remove ioctl on %s  failed: No such device or address\nCommand failed.\n", name)
	}
	if h.openCount("/dev/mapper/"+name) > 0 {
		return fail(1, "device-mapper: remove ioctl on %s  failed: Device or resource busy\nCommand failed.\n", name)
	}
	delete(h.dms, name)
	return nil
}

// snapshotImageKey is where the fake keeps the filesystem seen through a
// snapshot device: under the COW's backing file, as the real changes are.
func (h *Host) snapshotImageKey(d *dmDev) (string, bool) {
	i, ok := loopIndex(d.cow)
	if !ok || h.loops[i] == nil {
		return "", false
	}
	return h.loops[i].file, true
}
