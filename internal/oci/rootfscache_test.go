package oci

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/banger-dev/banger/internal/system"
)

// countingRunner runs commands for real and counts mkfs.ext4 runs and apt
// resolutions.
type countingRunner struct {
	mu       sync.Mutex
	mkfs     int
	aptCalls int
}

func (c *countingRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	c.mu.Lock()
	switch {
	case name == "mkfs.ext4":
		c.mkfs++
	case name == "env" && strings.Contains(strings.Join(args, " "), "apt-get"):
		c.aptCalls++
	}
	c.mu.Unlock()
	return system.ExecRunner{}.Run(ctx, name, args...)
}

func (c *countingRunner) counts() (mkfs, apt int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	mkfs, apt = c.mkfs, c.aptCalls
	c.mkfs, c.aptCalls = 0, 0
	return mkfs, apt
}

// convertEnv converts pulled images into fresh outputs with one rootfs
// cache, apt's state pinned to a file the test can touch.
type convertEnv struct {
	t     *testing.T
	dir   string
	cache *RootfsCache
	r     *countingRunner
	apt   string
	n     int
	steps []string
}

func newConvertEnv(t *testing.T) *convertEnv {
	requireRoot(t)
	fetchDebs(t, "busybox-static") // skips without the Debian archive
	dir := t.TempDir()
	apt := filepath.Join(dir, "apt-state")
	os.WriteFile(apt, []byte("1"), 0o644)
	saved := aptState
	aptState = []string{apt}
	t.Cleanup(func() { aptState = saved })
	return &convertEnv{t: t, dir: dir, cache: &RootfsCache{Dir: filepath.Join(dir, "rootfs-cache")}, r: &countingRunner{}, apt: apt}
}

func (e *convertEnv) convert(img *Image, maxSize int64) (*Metadata, error) {
	e.n++
	out := filepath.Join(e.dir, "image", "rootfs.ext4")
	os.RemoveAll(filepath.Dir(out))
	os.MkdirAll(filepath.Dir(out), 0o755)
	e.steps = nil
	return Convert(context.Background(), img, filepath.Join(e.dir, "tree"), out, ConvertOptions{
		BuildOptions: BuildOptions{Runner: e.r, DebCache: debCache, Scratch: e.dir,
			Progress: func(s string) { e.steps = append(e.steps, s) }},
		MaxSize: maxSize,
		Cache:   e.cache,
	})
}

func (e *convertEnv) mustConvert(img *Image) *Metadata {
	e.t.Helper()
	m, err := e.convert(img, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "tree")); !os.IsNotExist(err) {
		e.t.Errorf("unpack tree left behind: %v", err)
	}
	return m
}

// entryDir is the only cache entry for img.
func (e *convertEnv) entryDir() string {
	e.t.Helper()
	des, _ := os.ReadDir(e.cache.Dir)
	var dirs []string
	for _, de := range des {
		if de.IsDir() {
			dirs = append(dirs, de.Name())
		}
	}
	if len(dirs) != 1 {
		e.t.Fatalf("cache entries = %v, want one", dirs)
	}
	return filepath.Join(e.cache.Dir, dirs[0])
}

func (e *convertEnv) wantCounts(what string, mkfs, apt int) {
	e.t.Helper()
	gm, ga := e.r.counts()
	if gm != mkfs || ga != apt {
		e.t.Errorf("%s: %d mkfs.ext4 and %d apt runs, want %d and %d (steps %q)", what, gm, ga, mkfs, apt, e.steps)
	}
}

func cachedImage(t *testing.T, env ...string) *Image {
	return pulled(t, testImage(t, "amd64", v1.Config{Cmd: []string{"/bin/hello"}, Env: append([]string{"PATH=/bin"}, env...)},
		gzLayer(t, layerTar(t, []entry{{name: "bin/", typ: '5'}, {name: "bin/hello", body: "hello", mode: 0o755}}))))
}

func TestConvertReusesCachedRootfs(t *testing.T) {
	e := newConvertEnv(t)
	img := cachedImage(t)
	first := e.mustConvert(img)
	e.wantCounts("first conversion", 1, 1)
	firstSum, _ := fileSHA256(first.Rootfs)

	// Same image again, under another name: copied from the cache, no
	// mkfs, no apt.
	img.Source = "elsewhere/other:tag"
	again := e.mustConvert(img)
	e.wantCounts("second conversion", 0, 0)
	if sum, _ := fileSHA256(again.Rootfs); sum != firstSum {
		t.Errorf("cached rootfs differs from the built one")
	}
	if again.Source != img.Source || again.UnpackedSize != first.UnpackedSize || again.RootfsSize != first.RootfsSize || again.Digest != first.Digest {
		t.Errorf("metadata from the cache = %+v, built %+v", again, first)
	}
	if got, err := ReadMetadata(filepath.Dir(again.Rootfs)); err != nil || got.Source != img.Source {
		t.Errorf("metadata file: %+v %v", got, err)
	}
	if !strings.Contains(strings.Join(e.steps, "\n"), "rootfs from the cache") {
		t.Errorf("steps %q do not say the rootfs came from the cache", e.steps)
	}
	// The image's file is a copy, not the cache's file.
	var a, b syscall.Stat_t
	syscall.Stat(again.Rootfs, &a)
	syscall.Stat(filepath.Join(e.entryDir(), cacheRootfs), &b)
	if a.Ino == b.Ino {
		t.Error("the image shares the cache's file")
	}
	if a.Blocks*512 >= a.Size {
		t.Errorf("copy is not sparse: %d blocks for %d bytes", a.Blocks, a.Size)
	}

	// apt's state changed but resolves to the same packages: apt runs
	// again, the rootfs still comes from the cache.
	os.WriteFile(e.apt, []byte("22"), 0o644)
	e.mustConvert(img)
	e.wantCounts("after apt's lists changed", 0, 1)
	e.mustConvert(img)
	e.wantCounts("after apt's lists changed, again", 0, 0)

	// The cap holds for a cached rootfs too.
	if _, err := e.convert(img, 1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the cap from the cache: %v", err)
	}
	if _, err := os.Stat(again.Rootfs); !os.IsNotExist(err) {
		t.Errorf("refused rootfs left: %v", err)
	}
}

func TestConvertCacheInvalidation(t *testing.T) {
	e := newConvertEnv(t)
	img := cachedImage(t)
	e.mustConvert(img)
	e.wantCounts("first", 1, 1)

	// Another config (ENV) is another image: built.
	e.mustConvert(cachedImage(t, "X=1"))
	e.wantCounts("changed config", 1, 1)

	// A changed guest side (a banger with other guest scripts): the
	// remembered hash no longer matches, apt resolves, the new hash makes
	// a new key: built, and the new tree has the new file.
	saved := ociGuestFiles
	t.Cleanup(func() { ociGuestFiles = saved })
	changed := fstest.MapFS{"VERSION": {Data: []byte("2\n"), Mode: 0o644}}
	fs.WalkDir(saved(), ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := fs.ReadFile(saved(), p)
			changed[p] = &fstest.MapFile{Data: data, Mode: 0o755}
		}
		return err
	})
	ociGuestFiles = func() fs.FS { return changed }
	m := e.mustConvert(img)
	e.wantCounts("changed guest side", 1, 1)
	if out := run(t, "debugfs", "-R", "cat /.banger/VERSION", m.Rootfs); out != "2\n" {
		t.Errorf("/.banger/VERSION in the rebuilt rootfs: %q", out)
	}
	e.mustConvert(img)
	e.wantCounts("changed guest side, again", 0, 0)
	ociGuestFiles = saved
	e.mustConvert(img)
	e.wantCounts("guest side back to the first", 0, 1)

	// A memo whose hash does not match its packages and banger's embedded
	// files (a newer banger) is not used: apt resolves, same key, cached.
	memoPath := guestMemoPath(e.cache.Dir)
	data, _ := os.ReadFile(memoPath)
	var memo guestMemo
	if err := json.Unmarshal(data, &memo); err != nil {
		t.Fatal(err)
	}
	memo.Hash = strings.Repeat("0", 64)
	data, _ = json.Marshal(memo)
	os.WriteFile(memoPath, data, 0o644)
	e.mustConvert(img)
	e.wantCounts("stale memo", 0, 1)
}

func TestConvertRebuildsDamagedCacheEntry(t *testing.T) {
	e := newConvertEnv(t)
	img := cachedImage(t)
	first := e.mustConvert(img)
	e.wantCounts("first", 1, 1)
	want := fileHash(t, first.Rootfs)
	cached := filepath.Join(e.entryDir(), cacheRootfs)
	for _, damage := range []struct {
		name string
		do   func() error
	}{
		{"truncated", func() error { return os.Truncate(cached, 4096) }},
		{"one byte changed", func() error {
			f, err := os.OpenFile(cached, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte{0xff}, 1024) // the ext4 superblock
			return err
		}},
		{"entry.json unreadable", func() error {
			return os.WriteFile(filepath.Join(filepath.Dir(cached), cacheEntryF), []byte("{"), 0o644)
		}},
	} {
		if err := damage.do(); err != nil {
			t.Fatal(err)
		}
		m := e.mustConvert(img)
		e.wantCounts(damage.name, 1, 1)
		if !strings.Contains(strings.Join(e.steps, "\n"), "damaged entry") {
			t.Errorf("%s: steps %q do not report the damaged entry", damage.name, e.steps)
		}
		// Rebuilt into the cache (mkfs makes a new UUID: other bytes):
		// the next conversion copies it.
		cached = filepath.Join(e.entryDir(), cacheRootfs)
		if a, b := fileHash(t, m.Rootfs), fileHash(t, cached); a != b || a == want {
			t.Errorf("%s: rebuilt rootfs %s, cached %s, first build %s", damage.name, a, b, want)
		}
		e.mustConvert(img)
		e.wantCounts(damage.name+", then", 0, 0)
	}
}

func fileHash(t *testing.T, p string) string {
	t.Helper()
	sum, err := fileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func TestRootfsCacheTrimsLeastRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	c := &RootfsCache{Dir: dir, MaxBytes: 3 << 20}
	old := time.Now().Add(-time.Hour)
	for i, k := range []string{"a", "b", "c"} {
		os.MkdirAll(filepath.Join(dir, k), 0o700)
		os.WriteFile(filepath.Join(dir, k, cacheRootfs), make([]byte, 0), 0o644)
		f, _ := os.OpenFile(filepath.Join(dir, k, cacheRootfs), os.O_WRONLY, 0)
		f.Write([]byte(strings.Repeat("x", 1<<20))) // 1 MiB of real blocks
		f.Close()
		os.WriteFile(filepath.Join(dir, k, cacheEntryF), []byte("{}"), 0o644)
		used := old.Add(time.Duration(i) * time.Minute)
		os.Chtimes(filepath.Join(dir, k, cacheEntryF), used, used)
	}
	// "a" is used most recently; "b" is the oldest; "d" is new.
	os.Chtimes(filepath.Join(dir, "a", cacheEntryF), time.Now(), time.Now())
	os.MkdirAll(filepath.Join(dir, "d"), 0o700)
	os.WriteFile(filepath.Join(dir, "d", cacheRootfs), []byte(strings.Repeat("y", 1<<20)), 0o644)
	os.WriteFile(filepath.Join(dir, "d", cacheEntryF), []byte("{}"), 0o644)
	os.Chtimes(filepath.Join(dir, "d", cacheEntryF), old.Add(-time.Hour), old.Add(-time.Hour)) // older, but just stored
	// A temporary entry a crash left long ago, and one in progress.
	os.MkdirAll(filepath.Join(dir, ".tmp-old"), 0o700)
	os.Chtimes(filepath.Join(dir, ".tmp-old"), old.Add(-time.Hour), old.Add(-time.Hour))
	os.MkdirAll(filepath.Join(dir, ".tmp-now"), 0o700)
	if err := c.trim("d"); err != nil {
		t.Fatal(err)
	}
	var left []string
	des, _ := os.ReadDir(dir)
	for _, de := range des {
		left = append(left, de.Name())
	}
	if got := strings.Join(left, " "); got != ".tmp-now a c d" {
		t.Errorf("after trim: %s, want .tmp-now a c d (b least recently used, d kept as just stored)", got)
	}
	if err := c.Clear(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("after Clear: %v", err)
	}
}

func TestCopyHashedKeepsHolesAndHashesContent(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, _ := os.Create(src)
	f.WriteAt([]byte("head"), 0)
	f.WriteAt([]byte("middle"), 5<<20+3)
	f.Truncate(12 << 20)
	f.Close()
	sum, n, err := copyHashed(context.Background(), src, filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := fileSHA256(src)
	if sum != "sha256:"+want || n != 12<<20 {
		t.Errorf("copyHashed = %s %d, want sha256:%s %d", sum, n, want, 12<<20)
	}
	got, _ := fileSHA256(filepath.Join(dir, "dst"))
	if got != want {
		t.Error("copy differs from the source")
	}
	var st syscall.Stat_t
	syscall.Stat(filepath.Join(dir, "dst"), &st)
	if st.Size != 12<<20 || st.Blocks*512 > 256<<10 {
		t.Errorf("copy: %d bytes in %d blocks, want 12 MiB in at most two 64 KiB blocks", st.Size, st.Blocks)
	}
	// An existing destination is never overwritten.
	if _, _, err := copyHashed(context.Background(), src, filepath.Join(dir, "dst")); !os.IsExist(err) {
		t.Errorf("copy over an existing file: %v", err)
	}
}

func TestRootfsCachePrune(t *testing.T) {
	dir := t.TempDir()
	seed := func(key, digest string) string {
		p := filepath.Join(dir, key)
		os.MkdirAll(p, 0o700)
		ent := cacheEntry{Key: key, Digest: digest, ConfigDigest: digest + "c"}
		data, _ := json.Marshal(ent)
		os.WriteFile(filepath.Join(p, cacheEntryF), data, 0o644)
		os.WriteFile(filepath.Join(p, cacheRootfs), bytes.Repeat([]byte{1}, 64<<10), 0o644)
		return p
	}
	kept := seed("k1", "sha256:registered")
	gone := seed("k2", "sha256:deleted")
	legacy := seed("k3", "") // made before entries named their image
	fresh, _ := os.MkdirTemp(dir, ".tmp-")
	stale, _ := os.MkdirTemp(dir, ".tmp-")
	old := time.Now().Add(-2 * staleTmpAge)
	os.Chtimes(stale, old, old)
	os.WriteFile(filepath.Join(dir, ".guest.json"), []byte("{}"), 0o644)
	c := &RootfsCache{Dir: dir}
	removed, left, err := c.Prune(func(digest, config string) bool {
		return digest == "sha256:registered" && config == "sha256:registeredc"
	})
	if err != nil || removed.Count != 3 || left.Count != 1 || left.Bytes < 64<<10 || removed.Bytes < 2*64<<10 {
		t.Fatalf("Prune = removed %+v, kept %+v, %v; want two entries and the stale temporary one removed, one kept", removed, left, err)
	}
	for p, want := range map[string]bool{kept: true, gone: false, legacy: false, fresh: true, stale: false, filepath.Join(dir, ".guest.json"): true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s exists = %v, want %v", filepath.Base(p), err == nil, want)
		}
	}
	if removed, left, err := c.Prune(func(string, string) bool { return false }); err != nil || removed.Count != 1 || left.Count != 0 {
		t.Errorf("Prune of all = removed %+v, kept %+v, %v", removed, left, err)
	}
}

// TestRootfsKeyHasTheAgent: another guest agent binary is another root
// filesystem, so a cached one never carries a stale agent.
func TestRootfsKeyHasTheAgent(t *testing.T) {
	img := &Image{Digest: "sha256:aa", ConfigDigest: "sha256:bb", Platform: Platform, Layers: []Layer{{Digest: "sha256:cc", DiffID: "sha256:dd"}}}
	none, a, b := rootfsKey(img, "guest", ""), rootfsKey(img, "guest", "sum-a"), rootfsKey(img, "guest", "sum-b")
	if none == a || a == b || none == b {
		t.Errorf("keys without an agent and with two agents: %s %s %s", none, a, b)
	}
	if rootfsKey(img, "guest", "sum-a") != a {
		t.Error("the key is not stable")
	}
}
