package fakehost

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// extfs models the files inside one ext4 filesystem.
//
// Which real file holds a filesystem is decided by the real file: the fake's
// mkfs writes an ext4 superblock magic, UUID and label into it, at the
// offsets real ext4 uses, and images made by the real mkfs carry them too.
// Contents live in memory, keyed by path; a file whose UUID matches a known
// filesystem at another path is a copy of it (cp, reflink) and starts with a
// copy of its contents.
type extfs struct {
	uuid     [16]byte
	label    string
	snapshot bool // seen through a dm snapshot, keyed by the COW's backing file
	entries  map[string]*entry
	nextIno  int
}

type entry struct {
	dir      bool
	mode     uint32 // permission and setuid/setgid/sticky bits
	uid, gid int
	data     []byte
	ino      int
}

func newExtfs(uuid [16]byte, label string, rootUID, rootGID int) *extfs {
	return &extfs{
		uuid:  uuid,
		label: label,
		entries: map[string]*entry{
			"/":           {dir: true, mode: 0o755, uid: rootUID, gid: rootGID, ino: 2},
			"/lost+found": {dir: true, mode: 0o700, ino: 11},
		},
		nextIno: 12, // the first non-reserved inode, as in ext4
	}
}

func (f *extfs) clone() *extfs {
	c := *f
	c.entries = make(map[string]*entry, len(f.entries))
	for p, e := range f.entries {
		ec := *e
		ec.data = bytes.Clone(e.data)
		c.entries[p] = &ec
	}
	return &c
}

func (f *extfs) add(p string, e *entry) {
	e.ino = f.nextIno
	f.nextIno++
	f.entries[p] = e
}

// Superblock fields, at their ext4 offsets from the start of the device.
const (
	sbMagicOff = 1024 + 56
	sbUUIDOff  = 1024 + 104
	sbLabelOff = 1024 + 120
)

var ext4Magic = []byte{0x53, 0xef}

// Errors worded as the tools print them (strerror and libext2fs messages).
var (
	errNoFile   = errors.New("No such file or directory")
	errNoDev    = errors.New("No such device or address")
	errBadMagic = errors.New("Bad magic number in super-block")
)

func readSuper(p string) (uuid [16]byte, label string, ok bool, err error) {
	f, err := os.Open(p)
	if err != nil {
		if os.IsNotExist(err) {
			err = errNoFile
		}
		return uuid, "", false, err
	}
	defer f.Close()
	buf := make([]byte, 2+16+16)
	if _, err := f.ReadAt(buf[:2], sbMagicOff); err != nil || !bytes.Equal(buf[:2], ext4Magic) {
		return uuid, "", false, nil
	}
	f.ReadAt(buf[2:], sbUUIDOff)
	copy(uuid[:], buf[2:18])
	return uuid, string(bytes.TrimRight(buf[18:], "\x00")), true, nil
}

func writeSuper(p string, uuid [16]byte, label string) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	lab := make([]byte, 16)
	copy(lab, label)
	for _, w := range []struct {
		off int64
		b   []byte
	}{{sbMagicOff, ext4Magic}, {sbUUIDOff, uuid[:]}, {sbLabelOff, lab}} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return err
		}
	}
	return nil
}

// fsFor returns the filesystem on ref (a file, a loop device or a dm
// device) and the key it is kept under, or errNoFile, errNoDev or
// errBadMagic.
func (h *Host) fsFor(ref string) (*extfs, string, error) {
	if i, ok := loopIndex(ref); ok {
		l := h.loops[i]
		if l == nil {
			return nil, "", errNoDev
		}
		return h.fsForFile(l.file)
	}
	if name, ok := strings.CutPrefix(ref, "/dev/mapper/"); ok {
		d := h.dms[name]
		if d == nil {
			return nil, "", errNoFile
		}
		if d.target == "linear" {
			return h.fsFor(d.origin)
		}
		key, ok := h.snapshotImageKey(d)
		if !ok {
			return nil, "", errNoDev
		}
		if f := h.images[key]; f != nil && f.snapshot {
			return f, key, nil
		}
		orig, _, err := h.fsFor(d.origin)
		if err != nil {
			return nil, "", err
		}
		c := orig.clone()
		c.snapshot = true
		h.images[key] = c
		return c, key, nil
	}
	if strings.HasPrefix(ref, "/dev/") {
		return nil, "", errNoFile
	}
	return h.fsForFile(ref)
}

func (h *Host) fsForFile(p string) (*extfs, string, error) {
	p, _ = filepath.Abs(p)
	uuid, label, ok, err := readSuper(p)
	if err != nil {
		return nil, "", err
	}
	if cur := h.images[p]; cur != nil && cur.snapshot {
		return cur, p, nil // a COW file: its filesystem shows only through dm
	}
	if !ok {
		delete(h.images, p)
		return nil, "", errBadMagic
	}
	if cur := h.images[p]; cur != nil && cur.uuid == uuid {
		return cur, p, nil
	}
	var src *extfs
	for _, k := range sortedKeys(h.images) {
		if f := h.images[k]; k != p && !f.snapshot && f.uuid == uuid {
			src = f
			break
		}
	}
	var f *extfs
	if src != nil {
		f = src.clone()
	} else {
		f = newExtfs(uuid, label, 0, 0)
	}
	h.images[p] = f
	return f, p, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// parseMkfsSize reads mke2fs's fs-size argument: a count of blocks, or a
// size with a k/m/g/t suffix.
func parseMkfsSize(s string, blockSize int64) (int64, bool) {
	mult := blockSize
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult, s = 1<<10, s[:n-1]
		case 'm', 'M':
			mult, s = 1<<20, s[:n-1]
		case 'g', 'G':
			mult, s = 1<<30, s[:n-1]
		case 't', 'T':
			mult, s = 1<<40, s[:n-1]
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 {
		return 0, false
	}
	return v * mult, true
}

func (h *Host) mkfs(args []string) (string, *exitError) {
	label, seed := "", ""
	rootUID, rootGID := os.Getuid(), os.Getgid()
	blockSize := int64(1024)
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		needArg := func() (string, *exitError) {
			i++
			if i == len(args) {
				return "", fail(1, "mkfs.ext4: option requires an argument -- '%s'\n", strings.TrimPrefix(a, "-"))
			}
			return args[i], nil
		}
		switch a {
		case "-q", "-F":
		case "-L", "-d", "-E", "-O", "-b", "-m", "-t":
			v, ee := needArg()
			if ee != nil {
				return "", ee
			}
			switch a {
			case "-L":
				if len(v) > 16 {
					return "", fail(1, "mkfs.ext4: Warning: label too long; will be truncated to '%s'\n", v[:16])
				}
				label = v
			case "-d":
				seed = v
			case "-b":
				b, err := strconv.ParseInt(v, 10, 64)
				if err != nil || b < 1024 || b > 65536 || b&(b-1) != 0 {
					return "", fail(1, "mkfs.ext4: invalid block size - %s\n", v)
				}
				blockSize = b
			case "-t":
				if v != "ext4" {
					return "", unsupported("mkfs.ext4 -t %s", v)
				}
			case "-E":
				for _, opt := range strings.Split(v, ",") {
					key, val, _ := strings.Cut(opt, "=")
					switch key {
					case "root_owner":
						u, g, ok := strings.Cut(val, ":")
						uid, err1 := strconv.Atoi(u)
						gid, err2 := strconv.Atoi(g)
						if !ok || err1 != nil || err2 != nil {
							return "", fail(1, "\nBad option(s) specified: %s\n", opt)
						}
						rootUID, rootGID = uid, gid
					case "lazy_itable_init", "lazy_journal_init", "nodiscard", "discard":
					default:
						return "", fail(1, "\nBad option(s) specified: %s\n", opt)
					}
				}
			}
		default:
			if strings.HasPrefix(a, "-") {
				return "", unsupported("mkfs.ext4 option %q", a)
			}
			pos = append(pos, a)
		}
	}
	if len(pos) < 1 || len(pos) > 2 {
		return "", fail(1, "Usage: mkfs.ext4 [-c|-l filename] [-b block-size] ... device [fs-size]\n")
	}
	dev := pos[0]
	var size int64 = -1
	if len(pos) == 2 {
		s, ok := parseMkfsSize(pos[1], blockSize)
		if !ok {
			return "", fail(1, "mkfs.ext4: invalid blocks '%s' on device '%s'\n", pos[1], dev)
		}
		size = s
	}
	var uuid [16]byte
	rand.Read(uuid[:])
	f := newExtfs(uuid, label, rootUID, rootGID)
	if seed != "" {
		if err := importSeed(f, seed); err != nil {
			return "", fail(1, "__populate_fs: %v while populating file system\nmkfs.ext4: %v while populating file system\n", err, err)
		}
	}

	if strings.HasPrefix(dev, "/dev/") {
		if h.loopUsers(dev) != "" || h.openCount(dev) > 0 {
			return "", fail(1, "mkfs.ext4: Device or resource busy while setting up superblock\n")
		}
		if i, ok := loopIndex(dev); ok && h.loops[i] != nil {
			if h.loops[i].readOnly {
				return "", fail(1, "mkfs.ext4: Read-only file system while setting up superblock\n")
			}
			dev = h.loops[i].file
		} else if name, ok := strings.CutPrefix(dev, "/dev/mapper/"); ok && h.dms[name] != nil && h.dms[name].target == "snapshot" {
			key, _ := h.snapshotImageKey(h.dms[name])
			f.snapshot = true
			h.images[key] = f
			return "", nil
		} else {
			return "", fail(1, "mkfs.ext4: The file %s does not exist and no size was specified.\n", pos[0])
		}
	}
	abs, _ := filepath.Abs(dev)
	st, err := os.Stat(abs)
	switch {
	case os.IsNotExist(err) && size < 0:
		return "", fail(1, "mkfs.ext4: The file %s does not exist and no size was specified.\n", dev)
	case os.IsNotExist(err):
		fh, err := os.OpenFile(abs, os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			return "", fail(1, "mkfs.ext4: %v while trying to create %s\n", err, dev)
		}
		fh.Close()
		st, _ = os.Stat(abs)
	case err != nil:
		return "", fail(1, "mkfs.ext4: %v while trying to determine filesystem size\n", err)
	}
	if size > st.Size() {
		if err := os.Truncate(abs, size); err != nil {
			return "", fail(1, "mkfs.ext4: %v while setting up superblock\n", err)
		}
	} else if size < 0 {
		size = st.Size()
	}
	if size < 64<<10 {
		return "", fail(1, "mkfs.ext4: Device size reported to be zero or too small.\n")
	}
	if err := writeSuper(abs, uuid, label); err != nil {
		return "", fail(1, "mkfs.ext4: %v while writing superblocks\n", err)
	}
	h.images[abs] = f
	return "", nil
}

// importSeed copies a real directory tree into f, as mkfs -d does, keeping
// modes and owners.
func importSeed(f *extfs, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := &entry{mode: uint32(info.Mode().Perm())}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			e.mode = st.Mode & 0o7777
			e.uid, e.gid = int(st.Uid), int(st.Gid)
		}
		switch {
		case d.IsDir():
			e.dir = true
		case info.Mode().IsRegular():
			if e.data, err = os.ReadFile(p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("fakehost models only files and directories, not %s", p)
		}
		f.add("/"+filepath.ToSlash(rel), e)
		return nil
	})
}

func (h *Host) resize2fs(args []string) (string, *exitError) {
	var pos []string
	for _, a := range args {
		switch a {
		case "-f", "-F", "-p":
		default:
			if strings.HasPrefix(a, "-") {
				return "", unsupported("resize2fs option %q", a)
			}
			pos = append(pos, a)
		}
	}
	if len(pos) < 1 || len(pos) > 2 {
		return "", fail(1, "Usage: resize2fs [-d debug_flags] [-f] [-F] [-M] [-P] [-p] device [-b|-s|new_size] [-z undo_file]\n")
	}
	if _, _, err := h.fsFor(pos[0]); err != nil {
		return "", fail(1, "resize2fs: %v while trying to open %s\nCouldn't find valid filesystem superblock.\n", err, pos[0])
	}
	if len(pos) == 2 {
		return "", unsupported("resize2fs with an explicit size")
	}
	return fmt.Sprintf("The filesystem on %s is now as large as the device.\n", pos[0]), nil
}

func (h *Host) e2fsck(args []string) (string, *exitError) {
	var pos []string
	modes := 0
	for _, a := range args {
		switch a {
		case "-f":
		case "-n", "-p", "-y", "-fn", "-fp", "-fy":
			modes++
		default:
			if strings.HasPrefix(a, "-") {
				return "", unsupported("e2fsck option %q", a)
			}
			pos = append(pos, a)
		}
	}
	if modes > 1 {
		return "", fail(16, "e2fsck: Only one of the options -p/-a, -n or -y may be specified.\n")
	}
	if len(pos) != 1 {
		return "", fail(16, "Usage: e2fsck [-panyrcdfktvDFV] [-b superblock] [-B blocksize] device\n")
	}
	f, _, err := h.fsFor(pos[0])
	if err != nil {
		return "", &exitError{code: 8, stderr: fmt.Sprintf("e2fsck: %v while trying to open %s\n", err, pos[0])}
	}
	return fmt.Sprintf("%s: clean, %d files\n", f.label, len(f.entries)), nil
}

// debugfs runs debugfs's commands against the model. Like the real tool it
// exits 0 when its commands fail, reporting them on stderr only, and exits
// 1 when a command is unknown.
func (h *Host) debugfs(args []string) (string, *exitError) {
	write := false
	script, request := "", ""
	var pos []string
	for i := 0; i < len(args); i++ {
		switch a := args[i]; a {
		case "-w":
			write = true
		case "-f", "-R":
			i++
			if i == len(args) {
				return "", fail(1, "debugfs: option requires an argument -- '%s'\n", a[1:])
			}
			if a == "-f" {
				script = args[i]
			} else {
				request = args[i]
			}
		default:
			if strings.HasPrefix(a, "-") {
				return "", unsupported("debugfs option %q", a)
			}
			pos = append(pos, a)
		}
	}
	if len(pos) != 1 || (script == "") == (request == "") {
		return "", unsupported("debugfs %s (want [-w] -f FILE|-R REQUEST DEVICE)", strings.Join(args, " "))
	}
	var lines []string
	echo := false
	if script != "" {
		b, err := os.ReadFile(script)
		if err != nil {
			return "", fail(1, "debugfs: %v while opening %s\n", err, script)
		}
		lines, echo = strings.Split(string(b), "\n"), true
	} else {
		lines = []string{request}
	}

	var stdout, stderr strings.Builder
	stderr.WriteString("debugfs 1.47.0 (5-Feb-2023)\n")
	dev := pos[0]
	f, _, err := h.fsFor(dev)
	if err == nil && write {
		if i, ok := loopIndex(dev); ok && h.loops[i].readOnly {
			f, err = nil, errors.New("Read-only file system")
		}
	}
	if err != nil {
		fmt.Fprintf(&stderr, "debugfs: %v while trying to open %s\n", err, dev)
	}
	code := 0
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if echo {
			fmt.Fprintf(&stdout, "debugfs: %s\n", line)
		}
		w := strings.Fields(line)
		if !knownDebugfsCommand(w[0]) {
			fmt.Fprintf(&stderr, "debugfs: Command not found %s\n", w[0])
			code = 1
			continue
		}
		if f == nil {
			fmt.Fprintf(&stderr, "%s: Filesystem not open\n", w[0])
			continue
		}
		out, msg := debugfsCommand(f, write, w)
		stdout.WriteString(out)
		if msg != "" {
			stderr.WriteString(msg + "\n")
		}
	}
	if code != 0 {
		return "", &exitError{code: code, stderr: stderr.String(), stdout: stdout.String()}
	}
	return stdout.String(), nil
}

func knownDebugfsCommand(c string) bool {
	switch c {
	case "stat", "mkdir", "rm", "write", "set_inode_field", "sif", "dump", "cat":
		return true
	}
	return false
}

// debugfsCommand applies one command to f and returns its stdout and its
// error message (for stderr), if any.
func debugfsCommand(f *extfs, write bool, w []string) (string, string) {
	abs := func(p string) string { return path.Clean(path.Join("/", p)) }
	readOnly := func() string { return w[0] + ": Filesystem opened read/only" }
	switch w[0] {
	case "stat":
		if len(w) != 2 {
			return "", "stat: Usage: stat <file>"
		}
		e := f.entries[abs(w[1])]
		if e == nil {
			return "", w[1] + ": File not found by ext2_lookup "
		}
		typ := "regular"
		if e.dir {
			typ = "directory"
		}
		return fmt.Sprintf("Inode: %d   Type: %s    Mode:  %04o   Flags: 0x80000\n"+
			"Generation: 0    Version: 0x00000000:00000000\n"+
			"User: %5d   Group: %5d   Project:     0   Size: %d\n"+
			"File ACL: 0\nLinks: 1   Blockcount: %d\n",
			e.ino, typ, e.mode, e.uid, e.gid, len(e.data), (len(e.data)+511)/512), ""
	case "mkdir":
		if len(w) != 2 {
			return "", "mkdir: Usage: mkdir <filename>"
		}
		if !write {
			return "", readOnly()
		}
		p := abs(w[1])
		if f.entries[p] != nil {
			return "", fmt.Sprintf("ext2fs_mkdir: Ext2 directory already exists while creating directory %q", path.Base(p))
		}
		if parent := f.entries[path.Dir(p)]; parent == nil || !parent.dir {
			return "", "mkdir: Ext2 inode is not a directory"
		}
		f.add(p, &entry{dir: true, mode: 0o755})
		return "", ""
	case "rm":
		if len(w) != 2 {
			return "", "rm: Usage: rm <filename>"
		}
		if !write {
			return "", readOnly()
		}
		p := abs(w[1])
		e := f.entries[p]
		switch {
		case e == nil:
			return "", "rm: File not found by ext2_lookup while trying to resolve filename"
		case e.dir:
			return "", "rm: file is a directory"
		}
		delete(f.entries, p)
		return "", ""
	case "write":
		if len(w) != 3 {
			return "", "write: Usage: write <native file> <new file>"
		}
		if !write {
			return "", readOnly()
		}
		p := abs(w[2])
		if f.entries[p] != nil {
			return "", fmt.Sprintf("write: The file '%s' already exists", w[2])
		}
		if parent := f.entries[path.Dir(p)]; parent == nil || !parent.dir {
			return "", "write: Ext2 inode is not a directory"
		}
		data, err := os.ReadFile(w[1])
		if err != nil {
			return "", fmt.Sprintf("write: %v while opening %s", err, w[1])
		}
		mode := uint32(0o644)
		if st, err := os.Stat(w[1]); err == nil {
			mode = uint32(st.Mode().Perm())
		}
		e := &entry{mode: mode, data: data}
		f.add(p, e)
		return fmt.Sprintf("Allocated inode: %d\n", e.ino), ""
	case "set_inode_field", "sif":
		if len(w) != 4 {
			return "", w[0] + ": Usage: set_inode_field <inode> <field> <value>"
		}
		if !write {
			return "", readOnly()
		}
		e := f.entries[abs(w[1])]
		if e == nil {
			return "", w[1] + ": File not found by ext2_lookup "
		}
		v, err := strconv.ParseUint(w[3], 0, 32)
		if err != nil {
			return "", fmt.Sprintf("%s: Couldn't parse '%s' for field %s.", w[0], w[3], w[2])
		}
		switch w[2] {
		case "mode":
			typ := uint32(0o100000)
			if e.dir {
				typ = 0o040000
			}
			if uint32(v)&0o170000 != typ {
				return "", "fakehost: set_inode_field changing the file type is not modelled"
			}
			e.mode = uint32(v) & 0o7777
		case "uid":
			e.uid = int(v)
		case "gid":
			e.gid = int(v)
		default:
			return "", fmt.Sprintf("%s: invalid field specifier: %s", w[0], w[2])
		}
		return "", ""
	case "dump", "cat":
		rest := w[1:]
		if w[0] == "dump" && len(rest) > 0 && rest[0] == "-p" {
			rest = rest[1:]
		}
		want := 2
		if w[0] == "cat" {
			want = 1
		}
		if len(rest) != want {
			return "", w[0] + ": Usage: " + w[0] + " <file>"
		}
		e := f.entries[abs(rest[0])]
		if e == nil {
			return "", rest[0] + ": File not found by ext2_lookup "
		}
		if w[0] == "cat" {
			return string(e.data), ""
		}
		if err := os.WriteFile(rest[1], e.data, 0o666); err != nil {
			return "", fmt.Sprintf("dump: %v while opening %s for dump_inode", err, rest[1])
		}
		return "", ""
	}
	return "", "fakehost: unreachable debugfs command " + w[0]
}

// WriteImageFile puts a file into the ext4 filesystem on image (a file made
// by mkfs, real or fake, or a fake device), making parent directories: a
// test's way to seed an image without debugfs.
func (h *Host) WriteImageFile(image, p string, data []byte, mode os.FileMode, uid, gid int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, _, err := h.fsFor(image)
	if err != nil {
		return fmt.Errorf("fakehost: %s: %w", image, err)
	}
	p = path.Clean(path.Join("/", p))
	var dirs []string
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		if e := f.entries[d]; e == nil {
			f.add(d, &entry{dir: true, mode: 0o755})
		} else if !e.dir {
			return fmt.Errorf("fakehost: %s in %s is not a directory", d, image)
		}
	}
	if e := f.entries[p]; e != nil && e.dir {
		return fmt.Errorf("fakehost: %s in %s is a directory", p, image)
	}
	f.add(p, &entry{mode: uint32(mode.Perm()), uid: uid, gid: gid, data: bytes.Clone(data)})
	return nil
}

// ReadImageFile returns a file from the ext4 filesystem on image, or an
// error matching fs.ErrNotExist.
func (h *Host) ReadImageFile(image, p string) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f, _, err := h.fsFor(image)
	if err != nil {
		return nil, fmt.Errorf("fakehost: %s: %w", image, err)
	}
	e := f.entries[path.Clean(path.Join("/", p))]
	if e == nil || e.dir {
		return nil, fmt.Errorf("fakehost: %s in %s: %w", p, image, fs.ErrNotExist)
	}
	return bytes.Clone(e.data), nil
}
