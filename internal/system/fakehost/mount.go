package fakehost

import (
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// mountPoint is a mounted ext4 filesystem. The fake shows its files by
// writing them into the (empty, real) target directory, and removes them at
// unmount.
type mountPoint struct {
	source string // as given: an image file or a device
	loop   string // loop device the mount set up (-o loop), or ""
	opts   string
	placed []string // top-level names written into the directory
}

func (h *Host) mount(args []string) (string, *exitError) {
	opts := ""
	var pos []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-o":
			i++
			if i == len(args) {
				return "", fail(1, "mount: option requires an argument -- 'o'\n")
			}
			opts = args[i]
		default:
			if strings.HasPrefix(a, "-") {
				return "", unsupported("mount option %q", a)
			}
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return "", unsupported("mount %s (want -o OPTS SOURCE DIR)", strings.Join(args, " "))
	}
	source, dir := pos[0], filepath.Clean(pos[1])
	loop, readOnly := false, false
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "loop":
			loop = true
		case "ro":
			readOnly = true
		case "rw", "noload", "norecovery", "nodev", "nosuid", "noexec", "":
		default:
			return "", unsupported("mount option -o %s", o)
		}
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return "", fail(32, "mount: %s: mount point does not exist.\n", dir)
	}
	if h.mounts[dir] != nil {
		return "", fail(32, "mount: %s: %s already mounted or mount point busy.\n", dir, source)
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		return "", unsupported("mount on a non-empty directory %s", dir)
	}
	if _, err := os.Stat(source); err != nil && !strings.HasPrefix(source, "/dev/") {
		return "", fail(32, "mount: %s: special device %s does not exist.\n", dir, source)
	}
	f, _, err := h.fsFor(source)
	if err != nil {
		return "", fail(32, "mount: %s: wrong fs type, bad option, bad superblock on %s, missing codepage or helper program, or other error.\n", dir, source)
	}
	mp := &mountPoint{source: source, opts: opts}
	if strings.HasPrefix(source, "/dev/") {
		if h.openCount(source) > 0 || h.loopUsers(source) != "" {
			return "", fail(32, "mount: %s: %s already mounted or mount point busy.\n", dir, source)
		}
	} else {
		if !loop {
			return "", fail(32, "mount: %s: %s is not a block device.\n", dir, source)
		}
		dev, ee := h.attachLoop(source, readOnly, true)
		if ee != nil {
			return "", fail(32, "mount: %s: failed to setup loop device for %s.\n", dir, source)
		}
		mp.loop = dev
	}
	// Show the files: parents before children.
	paths := sortedKeys(f.entries)
	for _, p := range paths {
		if p == "/" {
			continue
		}
		e := f.entries[p]
		real := filepath.Join(dir, filepath.FromSlash(p))
		var err error
		if e.dir {
			err = os.Mkdir(real, os.FileMode(e.mode&0o777)|0o700)
		} else {
			err = os.WriteFile(real, e.data, os.FileMode(e.mode&0o777))
		}
		if err != nil {
			return "", unsupported("showing %s in %s: %v", p, dir, err)
		}
		if path.Dir(p) == "/" {
			mp.placed = append(mp.placed, path.Base(p))
		}
	}
	sort.Strings(mp.placed)
	h.mounts[dir] = mp
	return "", nil
}

func (h *Host) umount(args []string) (string, *exitError) {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return "", unsupported("umount %s (want DIR)", strings.Join(args, " "))
	}
	dir := filepath.Clean(args[0])
	mp := h.mounts[dir]
	if mp == nil {
		return "", fail(32, "umount: %s: not mounted.\n", dir)
	}
	if h.holds[dir] > 0 {
		return "", fail(32, "umount: %s: target is busy.\n", dir)
	}
	for _, name := range mp.placed {
		os.RemoveAll(filepath.Join(dir, name))
	}
	if mp.loop != "" {
		if i, ok := loopIndex(mp.loop); ok && h.loops[i] != nil && h.loops[i].autoclear {
			delete(h.loops, i)
		}
	}
	delete(h.mounts, dir)
	return "", nil
}
