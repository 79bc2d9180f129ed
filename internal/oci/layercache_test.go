package oci

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// seedBlob writes a 64 KiB blob for a made-up digest, last used at used.
func seedBlob(t *testing.T, dir string, n int, used time.Time) string {
	t.Helper()
	digest := fmt.Sprintf("sha256:%064x", n)
	p, err := blobPath(dir, digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, bytes.Repeat([]byte{byte(n)}, 64<<10), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, used, used); err != nil {
		t.Fatal(err)
	}
	return digest
}

// cachedDigests lists the blobs in the cache, sorted.
func cachedDigests(t *testing.T, dir string) []string {
	blobs, _ := cacheFiles(t, dir)
	slices.Sort(blobs)
	return blobs
}

func TestLayerCacheTrimRemovesLeastRecentlyUsedUnpinned(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	oldest := seedBlob(t, dir, 1, now.Add(-4*time.Hour))
	older := seedBlob(t, dir, 2, now.Add(-3*time.Hour))
	old := seedBlob(t, dir, 3, now.Add(-2*time.Hour))
	recent := seedBlob(t, dir, 4, now.Add(-1*time.Hour))
	c := &LayerCache{Dir: dir}
	u, err := c.Usage()
	if err != nil || u.Count != 4 || u.Bytes < 4*64<<10 {
		t.Fatalf("Usage = %+v, %v; want 4 blobs of at least 64 KiB", u, err)
	}
	per := u.Bytes / 4

	// No bound: nothing goes.
	if freed, err := c.Trim(); err != nil || freed.Count != 0 {
		t.Fatalf("Trim without a bound freed %+v, %v", freed, err)
	}
	// Room for two: the oldest is pinned (a pull uses it), so the next two
	// oldest go.
	c.MaxBytes = 2 * per
	release := c.pin([]string{oldest})
	freed, err := c.Trim()
	if err != nil || freed.Count != 2 || freed.Bytes != 2*per {
		t.Fatalf("Trim freed %+v, %v; want 2 blobs", freed, err)
	}
	if got, want := cachedDigests(t, dir), []string{oldest, recent}; !slices.Equal(got, want) {
		t.Errorf("after Trim the cache holds %v, want the pinned %s and the most recent %s (not %s, %s)", got, oldest, recent, older, old)
	}
	// Released, the oldest goes before the recent one once over the bound.
	release()
	release() // twice is harmless
	c.MaxBytes = per
	if _, err := c.Trim(); err != nil {
		t.Fatal(err)
	}
	if got := cachedDigests(t, dir); !slices.Equal(got, []string{recent}) {
		t.Errorf("after the second Trim the cache holds %v, want only %s", got, recent)
	}
	// A cached blob found by a pull is touched: it becomes the most recent.
	a := seedBlob(t, dir, 5, now.Add(-5*time.Hour))
	p, _ := blobPath(dir, a)
	touch(p)
	c.MaxBytes = per
	if _, err := c.Trim(); err != nil {
		t.Fatal(err)
	}
	if got := cachedDigests(t, dir); !slices.Equal(got, []string{a}) {
		t.Errorf("after using %s the cache holds %v, want only it", a, got)
	}
}

func TestLayerCachePrune(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	wanted := seedBlob(t, dir, 1, now)
	pinned := seedBlob(t, dir, 2, now)
	unwanted := seedBlob(t, dir, 3, now)
	// Downloads: one in progress (pinned, fresh), one left by a crash.
	tmp := filepath.Join(dir, "tmp")
	os.MkdirAll(tmp, 0o700)
	inProgress := filepath.Join(tmp, strings.TrimPrefix(pinned, "sha256:")+".123.partial")
	crashed := filepath.Join(tmp, fmt.Sprintf("%064x", 9)+".456.partial")
	os.WriteFile(inProgress, []byte("partial"), 0o644)
	os.WriteFile(crashed, []byte("partial"), 0o644)
	c := &LayerCache{Dir: dir}
	release := c.pin([]string{pinned})
	if !c.Pinned(pinned) || c.Pinned(wanted) {
		t.Fatal("Pinned does not say what pin did")
	}
	removed, kept, err := c.Prune(func(d string) bool { return d == wanted })
	if err != nil || removed.Count != 2 || kept.Count != 2 {
		t.Fatalf("Prune = removed %+v, kept %+v, %v; want the unwanted blob and the crashed download removed, 2 blobs kept", removed, kept, err)
	}
	if got, want := cachedDigests(t, dir), []string{wanted, pinned}; !slices.Equal(got, want) {
		t.Errorf("after Prune the cache holds %v, want %v (not %s)", got, want, unwanted)
	}
	if _, err := os.Stat(inProgress); err != nil {
		t.Errorf("a pinned download in progress was removed: %v", err)
	}
	if _, err := os.Stat(crashed); err == nil {
		t.Error("a download left by a crash was kept")
	}
	// Prune of everything keeps what a pull still uses, until released.
	none := func(string) bool { return false }
	if _, kept, _ := c.Prune(none); kept.Count != 1 {
		t.Errorf("Prune of all kept %d blobs, want the pinned one", kept.Count)
	}
	release()
	if removed, kept, _ := c.Prune(none); removed.Count != 2 || kept.Count != 0 {
		t.Errorf("Prune of all after release: removed %+v, kept %+v; want the blob and the download", removed, kept)
	}
	if got := cachedDigests(t, dir); len(got) != 0 {
		t.Errorf("cache holds %v after pruning all", got)
	}
	// An empty or missing cache prunes to nothing.
	if removed, kept, err := (&LayerCache{Dir: filepath.Join(dir, "none")}).Prune(none); err != nil || removed.Count+kept.Count != 0 {
		t.Errorf("Prune of a missing cache = %+v %+v %v", removed, kept, err)
	}
}

// TestPullPinsLayersUntilRelease: a pull's blobs stay in a cache over its
// bound until the image is released, then the least recently used go.
func TestPullPinsLayersUntilRelease(t *testing.T) {
	reg := newTestRegistry(t)
	imgA, imgB := smallImage(t, "amd64", t.Name()+"a"), smallImage(t, "amd64", t.Name()+"b")
	reg.push(t, reg.ref("a:1"), imgA)
	reg.push(t, reg.ref("b:1"), imgB)
	layersA, layersB := layerDigests(t, imgA), layerDigests(t, imgB)
	c := &LayerCache{Dir: t.TempDir(), MaxBytes: 1} // everything is over it
	ctx := context.Background()
	a, err := Pull(ctx, reg.ref("a:1"), PullOptions{Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	if a.CacheDir != c.Dir {
		t.Errorf("image's cache dir %s, want the LayerCache's %s", a.CacheDir, c.Dir)
	}
	b, err := Pull(ctx, reg.ref("b:1"), PullOptions{Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(layersA), layersB...)
	slices.Sort(all)
	if got := cachedDigests(t, c.Dir); !slices.Equal(got, all) {
		t.Errorf("with both pulls unreleased the cache holds %v, want all of %v", got, all)
	}
	a.Release()
	if _, err := c.Trim(); err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(layersB)
	slices.Sort(want)
	if got := cachedDigests(t, c.Dir); !slices.Equal(got, want) {
		t.Errorf("after releasing a the cache holds %v, want b's %v", got, want)
	}
	b.Release()
	// A pull of a with its layers gone downloads them again.
	before := reg.blobGets(layersA[0])
	a, err = Pull(ctx, reg.ref("a:1"), PullOptions{Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release()
	if reg.blobGets(layersA[0]) != before+1 {
		t.Errorf("a's trimmed layer was not downloaded again")
	}
}

// TestPruneDuringPulls prunes everything in a loop while images are pulled
// again and again: every pull returns with all its blobs in the cache,
// verified, whatever prune removed before or after.
func TestPruneDuringPulls(t *testing.T) {
	reg := newTestRegistry(t)
	img := smallImage(t, "amd64", t.Name())
	reg.push(t, reg.ref("p:1"), img)
	c := &LayerCache{Dir: t.TempDir()}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var prunes int
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := c.Prune(func(string) bool { return false }); err != nil {
				t.Error(err)
				return
			}
			prunes++
		}
	}()
	for i := 0; i < 30; i++ {
		got, err := Pull(context.Background(), reg.ref("p:1"), PullOptions{Cache: c})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range got.Layers {
			p, _ := blobPath(c.Dir, l.Digest)
			data, err := os.ReadFile(p)
			if err != nil || sha256Digest(data) != l.Digest {
				t.Errorf("pull %d: blob %s missing or damaged before release: %v", i, l.Digest, err)
			}
		}
		got.Release()
	}
	close(stop)
	wg.Wait()
	if prunes == 0 {
		t.Error("prune never ran during the pulls")
	}
	t.Logf("%d prunes during 30 pulls, %d downloads of the first layer", prunes, reg.blobGets(layerDigests(t, img)[0]))
}
