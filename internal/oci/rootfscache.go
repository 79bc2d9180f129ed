package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// RootfsCache keeps built root filesystems, so that converting the same
// image again (a second pull after `image delete`, or the same image under
// another name) copies an ext4 instead of unpacking and running mkfs.
//
// Dir/<key>/rootfs.ext4 is the filesystem and Dir/<key>/entry.json records
// the key, the file's size and SHA-256, and what the build found. The key
// is a hash of everything that decides the ext4's content (see rootfsKey).
// An entry is made in a temporary directory and renamed into place whole;
// on use it is copied (never shared: the image's file is its own) while
// its hash is checked, and an entry whose size or hash does not match is
// removed and the image rebuilt. The least recently used entries are
// removed when the entries' disk usage passes MaxBytes.
type RootfsCache struct {
	Dir string
	// MaxBytes bounds the disk blocks the entries use (0: no bound). The
	// entry just stored is always kept.
	MaxBytes int64
}

// cacheEntry is entry.json.
type cacheEntry struct {
	Key          string   `json:"key"`
	Size         int64    `json:"size"`   // of rootfs.ext4
	SHA256       string   `json:"sha256"` // of rootfs.ext4, holes read as zeros
	UnpackedSize int64    `json:"unpacked_size"`
	Notes        []string `json:"notes,omitempty"`
	Source       string   `json:"source"` // the first image it was built for (information only)
	// The image it was built from (Prune keeps entries of registered images).
	Digest       string `json:"digest,omitempty"`
	ConfigDigest string `json:"config_digest,omitempty"`
}

const (
	cacheRootfs = "rootfs.ext4"
	cacheEntryF = "entry.json"
	// A temporary entry older than this was left by a crash.
	staleTmpAge = time.Hour
)

// errCacheMiss says there is no usable entry.
var errCacheMiss = errors.New("not cached")

// use copies the entry for key to out and returns it, or errCacheMiss
// (having removed a damaged entry and anything written to out).
func (c *RootfsCache) use(ctx context.Context, key, out string) (*cacheEntry, error) {
	dir := filepath.Join(c.Dir, key)
	data, err := os.ReadFile(filepath.Join(dir, cacheEntryF))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errCacheMiss
	}
	var ent cacheEntry
	if err == nil {
		err = json.Unmarshal(data, &ent)
	}
	if err == nil && ent.Key != key {
		err = fmt.Errorf("entry is for key %s", ent.Key)
	}
	if err == nil {
		var st os.FileInfo
		if st, err = os.Stat(filepath.Join(dir, cacheRootfs)); err == nil && st.Size() != ent.Size {
			err = fmt.Errorf("%s has %d bytes, the entry says %d", cacheRootfs, st.Size(), ent.Size)
		}
	}
	if err == nil {
		var sum string
		if sum, _, err = copyHashed(ctx, filepath.Join(dir, cacheRootfs), out); err == nil && sum != ent.SHA256 {
			err = fmt.Errorf("%s has SHA-256 %s, the entry says %s", cacheRootfs, sum, ent.SHA256)
		}
	}
	if err != nil {
		os.Remove(out)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		os.RemoveAll(dir)
		return nil, fmt.Errorf("%w: damaged entry %s removed: %v", errCacheMiss, key[:12], err)
	}
	now := time.Now()
	os.Chtimes(filepath.Join(dir, cacheEntryF), now, now) // least recently used goes first
	return &ent, nil
}

// store copies the rootfs at src into a new entry for key (an existing
// entry is kept), then trims the cache to MaxBytes.
func (c *RootfsCache) store(ctx context.Context, key, src string, ent cacheEntry) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	final := filepath.Join(c.Dir, key)
	if _, err := os.Stat(filepath.Join(final, cacheEntryF)); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp(c.Dir, ".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	sum, size, err := copyHashed(ctx, src, filepath.Join(tmp, cacheRootfs))
	if err != nil {
		return err
	}
	ent.Key, ent.Size, ent.SHA256 = key, size, sum
	data, err := json.MarshalIndent(ent, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(tmp, cacheEntryF), append(data, '\n')); err != nil {
		return err
	}
	os.RemoveAll(final) // a damaged leftover without entry.json
	if err := os.Rename(tmp, final); err != nil {
		if _, serr := os.Stat(filepath.Join(final, cacheEntryF)); serr == nil {
			return nil // a concurrent conversion stored it first
		}
		return err
	}
	syncDir(c.Dir)
	return c.trim(key)
}

// trim removes the least recently used entries (never keep) until the
// entries use at most MaxBytes, and temporary entries left by a crash.
func (c *RootfsCache) trim(keep string) error {
	des, err := os.ReadDir(c.Dir)
	if err != nil {
		return err
	}
	type usage struct {
		key   string
		bytes int64
		used  time.Time
	}
	var all []usage
	var total int64
	for _, de := range des {
		p := filepath.Join(c.Dir, de.Name())
		if strings.HasPrefix(de.Name(), ".tmp-") {
			if st, err := os.Stat(p); err == nil && time.Since(st.ModTime()) > staleTmpAge {
				os.RemoveAll(p)
			}
			continue
		}
		if !de.IsDir() {
			continue
		}
		u := usage{key: de.Name()}
		if st, err := os.Stat(filepath.Join(p, cacheEntryF)); err == nil {
			u.used = st.ModTime()
		}
		if st, err := os.Stat(filepath.Join(p, cacheRootfs)); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				u.bytes = sys.Blocks * 512
			} else {
				u.bytes = st.Size()
			}
		}
		total += u.bytes
		all = append(all, u)
	}
	if c.MaxBytes <= 0 || total <= c.MaxBytes {
		return nil
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.Before(all[j].used) })
	for _, u := range all {
		if total <= c.MaxBytes {
			break
		}
		if u.key == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(c.Dir, u.key)); err != nil {
			return err
		}
		total -= u.bytes
	}
	return nil
}

// Prune removes every entry keep does not want, given the digest and
// config digest of the image it was built from (empty for an entry made
// before they were recorded), and temporary entries left by a crash. It
// returns what it removed and what is left.
func (c *RootfsCache) Prune(keep func(digest, configDigest string) bool) (removed, kept CacheUsage, err error) {
	des, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return removed, kept, nil
	}
	if err != nil {
		return removed, kept, err
	}
	for _, de := range des {
		p := filepath.Join(c.Dir, de.Name())
		if !de.IsDir() {
			continue // the guest hash memo
		}
		bytes := treeDiskBytes(p)
		if strings.HasPrefix(de.Name(), ".tmp-") {
			// A store in progress is younger than this.
			if st, err := os.Stat(p); err == nil && time.Since(st.ModTime()) > staleTmpAge && os.RemoveAll(p) == nil {
				removed.add(bytes)
			}
			continue
		}
		var ent cacheEntry
		if data, err := os.ReadFile(filepath.Join(p, cacheEntryF)); err == nil {
			json.Unmarshal(data, &ent) //nolint:errcheck // a damaged entry matches nothing
		}
		if ent.Digest != "" && keep(ent.Digest, ent.ConfigDigest) {
			kept.add(bytes)
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			return removed, kept, err
		}
		removed.add(bytes)
	}
	return removed, kept, nil
}

// Usage counts the entries (temporary ones too) and their disk blocks.
func (c *RootfsCache) Usage() (CacheUsage, error) {
	var u CacheUsage
	des, err := os.ReadDir(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return u, nil
	}
	for _, de := range des {
		if de.IsDir() {
			u.add(treeDiskBytes(filepath.Join(c.Dir, de.Name())))
		}
	}
	return u, err
}

// treeDiskBytes sums the disk blocks of the files under dir.
func treeDiskBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += diskBytes(info)
			}
		}
		return nil
	})
	return n
}

// Clear removes every entry (and leftovers); the cache is empty after it.
func (c *RootfsCache) Clear() error {
	err := os.RemoveAll(c.Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// copyBlock is the unit copyHashed leaves as a hole when it is all zeros.
const copyBlock = 64 << 10

var zeroBlock = make([]byte, copyBlock)

// copyHashed copies src to a new file dst (0644), leaving holes where src
// has whole zero blocks (an ext4 image is mostly unwritten), and returns
// the SHA-256 of src's content ("sha256:<hex>") and its length. On error
// dst is removed.
func copyHashed(ctx context.Context, src, dst string) (sum string, n int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	h := sha256.New()
	buf := make([]byte, 16*copyBlock)
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, err
		}
		m, rerr := io.ReadFull(in, buf)
		if m > 0 {
			h.Write(buf[:m])
			for off := 0; off < m; off += copyBlock {
				b := buf[off:min(off+copyBlock, m)]
				if bytes.Equal(b, zeroBlock[:len(b)]) {
					continue
				}
				if _, err := out.WriteAt(b, n+int64(off)); err != nil {
					return "", 0, err
				}
			}
			n += int64(m)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return "", 0, rerr
		}
	}
	// No fsync: a copy torn by a crash fails its hash check on use.
	if err := out.Truncate(n); err != nil {
		return "", 0, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
