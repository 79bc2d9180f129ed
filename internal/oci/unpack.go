package oci

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// UnpackOptions configure Unpack.
type UnpackOptions struct {
	// MaxSize refuses an image whose regular files add up to more than this
	// many bytes once unpacked (0: no limit), against decompression bombs.
	MaxSize int64
	// Progress, when set, is called before each layer is applied.
	Progress func(layer, layers int, digest string)
}

// OCI whiteout names (image-spec layer.md).
const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// euid is a variable so tests can exercise the refusal unprivileged.
var euid = os.Geteuid

// Unpack applies img's layers, bottom first, into dir (created if missing;
// it should be empty and private to the caller). It needs root, to keep
// owners and make device nodes. Each layer's blob is checked against its
// digest and its tar against its diff_id while it is read; a mismatch, a
// truncated layer or an unsafe entry (see the package comment) stops the
// unpack with an error naming the layer and the entry. After an error dir
// holds a partial tree, never anything outside it: the caller removes it.
func Unpack(ctx context.Context, img *Image, dir string, opts UnpackOptions) error {
	if err := unpack(ctx, img, dir, opts); err != nil {
		return fmt.Errorf("unpacking %s into %s: %w", img.Source, dir, err)
	}
	return nil
}

func unpack(ctx context.Context, img *Image, dir string, opts UnpackOptions) error {
	if euid() != 0 {
		return errors.New("needs root (layer files keep their owners and device nodes)")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dir, err)
	}
	defer unix.Close(root)
	var written int64
	for i, l := range img.Layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		if opts.Progress != nil {
			opts.Progress(i, len(img.Layers), l.Digest)
		}
		a := &applier{root: root, layer: layerName(i, len(img.Layers), l.Digest), written: map[string]bool{}, size: &written, max: opts.MaxSize}
		if err := a.applyBlob(ctx, img.CacheDir, l); err != nil {
			return fmt.Errorf("%s: %w", a.layer, err)
		}
	}
	return nil
}

// hashingReader hashes what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashingReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashingReader) digest() string { return "sha256:" + hex.EncodeToString(h.h.Sum(nil)) }

// applyBlob reads one cached layer blob, decompressing by content (gzip,
// zstd or plain tar), applies it, and checks its digest and diff_id.
func (a *applier) applyBlob(ctx context.Context, cacheDir string, l Layer) error {
	p, err := blobPath(cacheDir, l.Digest)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("layer not in the cache: %w", err)
	}
	defer f.Close()
	blob := &hashingReader{r: f, h: sha256.New()}
	br := bufio.NewReaderSize(blob, 1<<16)
	magic, _ := br.Peek(4)
	var stream io.Reader = br
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: gzip: %w", ErrBadImage, err)
		}
		defer gz.Close()
		stream = gz
	case len(magic) == 4 && magic[0] == 0x28 && magic[1] == 0xb5 && magic[2] == 0x2f && magic[3] == 0xfd:
		zr, err := zstd.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: zstd: %w", ErrBadImage, err)
		}
		defer zr.Close()
		stream = zr
	}
	diff := &hashingReader{r: stream, h: sha256.New()}
	if err := a.apply(ctx, tar.NewReader(diff)); err != nil {
		return err
	}
	// The tar reader stops at the end-of-archive blocks; the rest of the
	// stream (padding, the compressor's trailer) counts for the digests.
	if _, err := io.Copy(io.Discard, diff); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %w", ErrTruncated, err)
		}
		return fmt.Errorf("%w: reading layer: %w", ErrBadImage, err) // e.g. a gzip checksum
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fmt.Errorf("reading layer: %w", err)
	}
	if blob.n != l.Size {
		return fmt.Errorf("%w: cached blob has %d bytes, the manifest says %d", ErrTruncated, blob.n, l.Size)
	}
	if got := blob.digest(); got != l.Digest {
		return fmt.Errorf("%w: cached blob has digest %s", ErrDigestMismatch, got)
	}
	if got := diff.digest(); got != l.DiffID {
		return fmt.Errorf("%w: uncompressed layer has diff_id %s, the config says %s", ErrDigestMismatch, got, l.DiffID)
	}
	return nil
}

// applier applies one layer's tar below root.
type applier struct {
	root    int             // O_PATH fd of the unpack directory
	layer   string          // for messages
	written map[string]bool // entries this layer made, for opaque directories
	dirs    []dirTimes      // directory times, set when the layer is done
	size    *int64          // regular-file bytes written so far, all layers
	max     int64
}

type dirTimes struct {
	name         string
	atime, mtime time.Time
}

// entryError names the layer's entry in an error.
func entryError(name string, err error) error {
	return fmt.Errorf("entry %q: %w", name, err)
}

func (a *applier) apply(ctx context.Context, tr *tar.Reader) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: reading tar: %w", ErrTruncated, err)
			}
			return fmt.Errorf("%w: reading tar: %w", ErrBadImage, err)
		}
		if err := a.entry(hdr, tr); err != nil {
			return entryError(hdr.Name, err)
		}
	}
	// Directory times last: creating entries inside changed them.
	for i := len(a.dirs) - 1; i >= 0; i-- {
		d := a.dirs[i]
		pfd, base, err := a.parent(d.name, false)
		if err != nil {
			return entryError(d.name, err)
		}
		err = setTimes(pfd, base, d.atime, d.mtime)
		closeParent(a, pfd)
		if err != nil {
			return entryError(d.name, err)
		}
	}
	return nil
}

// cleanEntryName returns an entry's path relative to the root, or an error
// when it is absolute or climbs out. "" is the root itself.
func cleanEntryName(n string) (string, error) {
	if strings.ContainsRune(n, 0) {
		return "", fmt.Errorf("%w: NUL in name", ErrUnsafeEntry)
	}
	if path.IsAbs(n) {
		return "", fmt.Errorf("%w: absolute path", ErrUnsafeEntry)
	}
	c := path.Clean(n)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("%w: path climbs out of the root", ErrUnsafeEntry)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

func (a *applier) entry(hdr *tar.Header, tr *tar.Reader) error {
	name, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	if name == "" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: the root is not a directory", ErrUnsafeEntry)
		}
		// The root's own entry: its owner and mode apply to the tree.
		if err := unix.Fchownat(a.root, "", hdr.Uid, hdr.Gid, unix.AT_EMPTY_PATH); err != nil {
			return err
		}
		return unix.Fchmodat(a.root, ".", uint32(hdr.Mode&0o7777), 0)
	}
	base := path.Base(name)
	if strings.HasPrefix(base, whiteoutPrefix) {
		return a.whiteout(name, base)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	pfd, base, err := a.parent(name, true)
	if err != nil {
		return err
	}
	defer closeParent(a, pfd)
	a.written[name] = true

	var existing unix.Stat_t
	exists := unix.Fstatat(pfd, base, &existing, unix.AT_SYMLINK_NOFOLLOW) == nil
	isDir := exists && existing.Mode&unix.S_IFMT == unix.S_IFDIR
	if exists && !(hdr.Typeflag == tar.TypeDir && isDir) {
		if err := removeAt(pfd, base, isDir); err != nil {
			return fmt.Errorf("replacing existing entry: %w", err)
		}
	}

	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !isDir {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return err
			}
		}
		a.dirs = append(a.dirs, dirTimes{name, hdr.AccessTime, hdr.ModTime})
		return a.meta(pfd, base, hdr, mode)
	case tar.TypeReg, tar.TypeGNUSparse:
		if err := a.writeFile(pfd, base, hdr, tr); err != nil {
			return err
		}
		return a.meta(pfd, base, hdr, mode)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) {
			return fmt.Errorf("%w: bad symlink target %q", ErrUnsafeEntry, hdr.Linkname)
		}
		// The target is only text: it is never followed here.
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return err
		}
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if err := a.xattrs(pfd, base, hdr); err != nil {
			return err
		}
		return setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)
	case tar.TypeLink:
		return a.hardlink(pfd, base, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		t := uint32(unix.S_IFIFO)
		switch hdr.Typeflag {
		case tar.TypeChar:
			t = unix.S_IFCHR
		case tar.TypeBlock:
			t = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, t|0o600, int(dev)); err != nil {
			return fmt.Errorf("making device node: %w", err)
		}
		return a.meta(pfd, base, hdr, mode)
	default:
		return fmt.Errorf("%w: unsupported entry type %q", ErrBadImage, hdr.Typeflag)
	}
}

// parent opens the directory that holds name, below the root, and returns
// it with name's last component; see openDir.
func (a *applier) parent(name string, create bool) (int, string, error) {
	dir, base := path.Split(name)
	fd, err := a.openDir(strings.TrimSuffix(dir, "/"), create)
	return fd, base, err
}

// openDir opens the directory rel ("" is the root, returned as is) one
// component at a time, refusing symlinks and anything that would leave the
// root; with create, missing directories are made (root-owned, 0755, as
// container runtimes do).
func (a *applier) openDir(rel string, create bool) (int, error) {
	if rel == "" {
		return a.root, nil
	}
	fd := a.root
	for _, comp := range strings.Split(rel, "/") {
		next, err := openDirBeneath(fd, comp)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, comp, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = openDirBeneath(fd, comp)
			}
		}
		if fd != a.root {
			unix.Close(fd)
		}
		if err != nil {
			switch {
			case errors.Is(err, unix.ELOOP):
				return -1, fmt.Errorf("%w: parent %q is a symlink", ErrUnsafeEntry, comp)
			case errors.Is(err, unix.ENOTDIR):
				return -1, fmt.Errorf("%w: parent %q is not a directory", ErrUnsafeEntry, comp)
			case errors.Is(err, unix.EXDEV):
				return -1, fmt.Errorf("%w: parent %q leaves the root", ErrUnsafeEntry, comp)
			}
			return -1, fmt.Errorf("opening parent %q: %w", comp, err)
		}
		fd = next
	}
	return fd, nil
}

func closeParent(a *applier, fd int) {
	if fd != a.root && fd >= 0 {
		unix.Close(fd)
	}
}

// openDirBeneath opens one directory component without following a symlink
// (ELOOP) or leaving dirfd (EXDEV).
func openDirBeneath(dirfd int, comp string) (int, error) {
	return unix.Openat2(dirfd, comp, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// procPath names an entry through its parent's descriptor, for the calls
// that have no *at form (lsetxattr, RemoveAll). The parent is already
// resolved safely and the last component is never followed.
func procPath(pfd int, base string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", pfd, base)
}

func removeAt(pfd int, base string, isDir bool) error {
	if isDir {
		return os.RemoveAll(procPath(pfd, base))
	}
	return unix.Unlinkat(pfd, base, 0)
}

func (a *applier) writeFile(pfd int, base string, hdr *tar.Header, r io.Reader) error {
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	if a.max > 0 && *a.size+hdr.Size > a.max {
		return fmt.Errorf("%w: unpacked files exceed %d bytes", ErrTooLarge, a.max)
	}
	n, err := io.Copy(f, r)
	*a.size += n
	if err != nil {
		return fmt.Errorf("writing file: %w", err)
	}
	return nil
}

// meta sets owner, mode, extended attributes and times, in that order:
// chown clears setuid bits and security.capability.
func (a *applier) meta(pfd int, base string, hdr *tar.Header, mode uint32) error {
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	// Not a symlink (made just now by us), so following is harmless.
	if err := unix.Fchmodat(pfd, base, mode, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := a.xattrs(pfd, base, hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		return nil // set when the layer is done
	}
	return setTimes(pfd, base, hdr.AccessTime, hdr.ModTime)
}

// xattrs sets the entry's PAX "SCHILY.xattr." records.
func (a *applier) xattrs(pfd int, base string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if err := unix.Lsetxattr(procPath(pfd, base), attr, []byte(v), 0); err != nil {
			// A host that cannot hold an attribute (SELinux labels without
			// SELinux, user.* on a symlink) loses it; anything else fails.
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) && strings.HasPrefix(attr, "user.") {
				continue
			}
			return fmt.Errorf("setting xattr %s: %w", attr, err)
		}
	}
	return nil
}

func setTimes(pfd int, base string, atime, mtime time.Time) error {
	if atime.IsZero() {
		atime = mtime
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	if mtime.IsZero() {
		return nil
	}
	if err := unix.UtimesNanoAt(pfd, base, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// hardlink links base to an existing entry of the tree, resolved with the
// same rules as entry names (the target is named from the root).
func (a *applier) hardlink(pfd int, base, linkname string) error {
	target, err := cleanEntryName(linkname)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	if target == "" {
		return fmt.Errorf("%w: hardlink to the root", ErrUnsafeEntry)
	}
	tfd, tbase, err := a.parent(target, false)
	if err != nil {
		return fmt.Errorf("hardlink target %q: %w", linkname, err)
	}
	defer closeParent(a, tfd)
	// Flags 0: a symlink target is linked itself, never followed.
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hardlink to %q: %w", linkname, err)
	}
	return nil
}

// whiteout applies a .wh.NAME (delete NAME) or .wh..wh..opq (hide what
// lower layers put in the directory) entry.
func (a *applier) whiteout(name, base string) error {
	if base == whiteoutOpaque {
		dir := path.Dir(name)
		if dir == "." {
			dir = ""
		}
		return a.opaque(dir)
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil // other AUFS metadata (.wh..wh.plnk, ...) carries nothing
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." || strings.Contains(victim, "/") {
		return fmt.Errorf("%w: bad whiteout", ErrUnsafeEntry)
	}
	target := path.Join(path.Dir(name), victim)
	pfd, vbase, err := a.parent(target, false)
	if errors.Is(err, unix.ENOENT) {
		return nil // its directory is gone already
	}
	if err != nil {
		return err
	}
	defer closeParent(a, pfd)
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, vbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	return removeAt(pfd, vbase, st.Mode&unix.S_IFMT == unix.S_IFDIR)
}

// opaque removes what lower layers left in dir ("" is the root), keeping
// what this layer already wrote there.
func (a *applier) opaque(dir string) error {
	pfd, err := a.openDir(dir, true)
	if err != nil {
		return err
	}
	// Reopen the O_PATH descriptor for reading its entries.
	dfd, err := unix.Openat(pfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	closeParent(a, pfd)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	return a.pruneLower(dfd, dir)
}

// pruneLower removes every entry below the directory dfd (named rel) that
// this layer did not write, descending into the directories it did.
func (a *applier) pruneLower(dfd int, rel string) error {
	dup, err := unix.Dup(dfd)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), rel)
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		child := path.Join(rel, n)
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, n, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !a.written[child] {
			if err := removeAt(dfd, n, isDir); err != nil {
				return err
			}
			continue
		}
		if isDir {
			cfd, err := unix.Openat2(dfd, n, &unix.OpenHow{
				Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
				Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS,
			})
			if err != nil {
				return err
			}
			err = a.pruneLower(cfd, child)
			unix.Close(cfd)
			if err != nil {
				return err
			}
		}
	}
	return nil
}
