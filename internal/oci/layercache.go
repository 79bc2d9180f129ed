package oci

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// LayerCache is the layer blob cache under Dir (blobs/sha256/<hex>, and
// tmp/ for downloads in progress), bounded to MaxBytes by removing the
// least recently used blobs. A blob's mtime is its last use: set when it is
// downloaded and whenever a pull or import finds it cached.
//
// A pull pins its layers' digests before it looks for them in the cache and
// keeps them pinned until Image.Release, after the conversion read them, so
// neither Trim nor Prune removes a blob an unfinished pull or conversion
// needs. Pins live in this value: the daemon, the only user of its state
// dir, keeps one LayerCache for all its pulls.
type LayerCache struct {
	Dir string
	// MaxBytes bounds the blobs' disk blocks (0: no bound). Pinned blobs
	// are never removed, so one image larger than this still pulls.
	MaxBytes int64

	mu   sync.Mutex
	pins map[string]int // "sha256:<hex>" -> pulls using it
}

// CacheUsage counts blobs or root filesystems and their disk blocks.
type CacheUsage struct {
	Count int   `json:"count"`
	Bytes int64 `json:"bytes"`
}

func (u *CacheUsage) add(bytes int64) {
	u.Count++
	u.Bytes += bytes
}

// pin marks digests as in use until the returned func is called (once).
func (c *LayerCache) pin(digests []string) func() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pins == nil {
		c.pins = map[string]int{}
	}
	for _, d := range digests {
		c.pins[d]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, d := range digests {
				if c.pins[d]--; c.pins[d] <= 0 {
					delete(c.pins, d)
				}
			}
		})
	}
}

// Pinned says whether a pull in progress uses the blob with this digest.
func (c *LayerCache) Pinned(digest string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pins[digest] > 0
}

// cachedBlob is one blob file found in the cache.
type cachedBlob struct {
	digest string
	path   string
	bytes  int64 // disk blocks
	used   time.Time
}

// blobsLocked lists the blobs, oldest use first.
func (c *LayerCache) blobsLocked() ([]cachedBlob, error) {
	dir := filepath.Join(c.Dir, "blobs", "sha256")
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []cachedBlob
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, cachedBlob{digest: "sha256:" + de.Name(), path: filepath.Join(dir, de.Name()), bytes: diskBytes(info), used: info.ModTime()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].used.Before(out[j].used) })
	return out, nil
}

// diskBytes is the disk space a file takes (its blocks; its size when the
// filesystem does not say).
func diskBytes(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// Usage is what the blobs take now.
func (c *LayerCache) Usage() (CacheUsage, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	blobs, err := c.blobsLocked()
	var u CacheUsage
	for _, b := range blobs {
		u.add(b.bytes)
	}
	return u, err
}

// Trim removes the least recently used blobs no pull has pinned until the
// blobs take at most MaxBytes, and returns what it removed.
func (c *LayerCache) Trim() (CacheUsage, error) {
	var freed CacheUsage
	if c.MaxBytes <= 0 {
		return freed, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	blobs, err := c.blobsLocked()
	if err != nil {
		return freed, err
	}
	var total int64
	for _, b := range blobs {
		total += b.bytes
	}
	for _, b := range blobs {
		if total <= c.MaxBytes {
			break
		}
		if c.pins[b.digest] > 0 {
			continue
		}
		if err := os.Remove(b.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return freed, err
		}
		total -= b.bytes
		freed.add(b.bytes)
	}
	return freed, nil
}

// Prune removes every blob that keep does not want and no pull has pinned,
// and what a crash left in tmp/: downloads of no pinned blob (or an hour
// old), and extracted archives an hour old. It returns what it removed and
// what is left.
func (c *LayerCache) Prune(keep func(digest string) bool) (removed, kept CacheUsage, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	blobs, err := c.blobsLocked()
	if err != nil {
		return removed, kept, err
	}
	for _, b := range blobs {
		if c.pins[b.digest] > 0 || keep(b.digest) {
			kept.add(b.bytes)
			continue
		}
		if err := os.Remove(b.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return removed, kept, err
		}
		removed.add(b.bytes)
	}
	tmp := filepath.Join(c.Dir, "tmp")
	des, _ := os.ReadDir(tmp)
	for _, de := range des {
		info, err := de.Info()
		if err != nil {
			continue
		}
		fresh := time.Since(info.ModTime()) < staleTmpAge
		p := filepath.Join(tmp, de.Name())
		if !strings.HasSuffix(de.Name(), ".partial") {
			// An archive being extracted by an import, unless a crash
			// left it.
			if !fresh {
				bytes := treeDiskBytes(p)
				if os.RemoveAll(p) == nil {
					removed.add(bytes)
				}
			}
			continue
		}
		// <hex>.<random>.partial, written by fetchLayer for a pinned blob.
		hexPart, _, _ := strings.Cut(de.Name(), ".")
		if fresh && c.pins["sha256:"+hexPart] > 0 {
			continue
		}
		if os.Remove(p) == nil {
			removed.add(diskBytes(info))
		}
	}
	return removed, kept, nil
}

// touch records a use of a cached blob (the LRU order of Trim).
func touch(path string) {
	now := time.Now()
	os.Chtimes(path, now, now)
}
