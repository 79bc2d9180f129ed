package image

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// WriteInitramfs writes dir as a gzip-compressed cpio archive in the "newc"
// format the kernel unpacks into its initial rootfs, in pure Go so that no
// cpio tool is needed. Entries are named relative to dir ("bin/busybox"),
// owned by root, with dir's permission bits; symlinks are stored as links.
// The file is written atomically (temporary file, then rename).
func WriteInitramfs(dir, out string) error {
	return writeInitramfs(dir, out, nil)
}

// cpioNode is an entry that does not come from the source tree, such as
// /dev/console, which the kernel opens before running /init and which an
// unprivileged builder could not create with mknod.
type cpioNode struct {
	name         string
	mode         uint32 // full st_mode, type bits included
	major, minor uint32 // device number for character/block nodes
}

// Mode type bits of st_mode as cpio stores them (Linux values).
const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
	sIFIFO = 0o010000
)

func writeInitramfs(dir, out string, extra []cpioNode) (err error) {
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("writing initramfs %s: %w", out, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("writing initramfs %s from %s: %w", out, dir, err)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	zw, err := gzip.NewWriterLevel(bw, gzip.BestCompression)
	if err != nil {
		return err
	}
	cw := &cpioWriter{w: zw}
	seen := map[string]bool{}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		seen[rel] = true
		return cw.addPath(path, rel)
	})
	if err != nil {
		return err
	}
	for _, n := range extra {
		name := strings.TrimPrefix(n.name, "/")
		if seen[name] {
			continue // the tree's own entry wins
		}
		if err := cw.writeEntry(name, n.mode, 1, n.major, n.minor, nil); err != nil {
			return err
		}
	}
	if err := cw.writeEntry("TRAILER!!!", 0, 1, 0, 0, nil); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// cpioWriter emits newc records: a 110-byte ASCII header ("070701" and 13
// 8-digit hex fields), the NUL-terminated name padded to 4 bytes, then the
// data padded to 4 bytes.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	off int64 // bytes written so far, for padding
}

func (c *cpioWriter) addPath(path, name string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	perm := uint32(fi.Mode().Perm())
	if fi.Mode()&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if fi.Mode()&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if fi.Mode()&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch t := fi.Mode().Type(); {
	case t == 0:
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return c.writeEntry(name, sIFREG|perm, 1, 0, 0, data)
	case t == fs.ModeDir:
		return c.writeEntry(name, sIFDIR|perm, 2, 0, 0, nil)
	case t == fs.ModeSymlink:
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		return c.writeEntry(name, sIFLNK|0o777, 1, 0, 0, []byte(target))
	case t == fs.ModeNamedPipe:
		return c.writeEntry(name, sIFIFO|perm, 1, 0, 0, nil)
	default:
		return fmt.Errorf("%s: unsupported file type %v (device nodes are added by the builder)", path, t)
	}
}

// writeEntry writes one record. For device nodes major/minor are the rdev
// fields; the dev fields stay 0.
func (c *cpioWriter) writeEntry(name string, mode, nlink, major, minor uint32, data []byte) error {
	c.ino++
	ino := c.ino
	if name == "TRAILER!!!" {
		ino = 0
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, major, minor, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.off += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}
