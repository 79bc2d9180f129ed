package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// writeLayout writes images into an OCI layout at dir, each with its
// platform in index.json.
func writeLayout(t *testing.T, dir string, imgs ...v1.Image) {
	t.Helper()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		cf, _ := img.ConfigFile()
		if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: cf.OS, Architecture: cf.Architecture})); err != nil {
			t.Fatal(err)
		}
	}
}

// tarDir archives dir's files (an OCI archive), optionally gzipped.
func tarDir(t *testing.T, dir, out string, gz bool) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			return tw.WriteHeader(&tar.Header{Name: rel + "/", Typeflag: tar.TypeDir, Mode: 0o755})
		}
		data, _ := os.ReadFile(p)
		tw.WriteHeader(&tar.Header{Name: rel, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))})
		tw.Write(data)
		return nil
	})
	tw.Close()
	data := buf.Bytes()
	if gz {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(data)
		zw.Close()
		data = z.Bytes()
	}
	if err := os.WriteFile(out, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func checkImported(t *testing.T, got *Image, img v1.Image, wantDigest bool) {
	t.Helper()
	want := layerDigests(t, img)
	var diffs []string
	ls, _ := img.Layers()
	for _, l := range ls {
		d, _ := l.DiffID()
		diffs = append(diffs, d.String())
	}
	if len(got.Layers) != len(want) {
		t.Fatalf("%d layers, want %d", len(got.Layers), len(want))
	}
	for i, l := range got.Layers {
		if wantDigest && l.Digest != want[i] || l.DiffID != diffs[i] {
			t.Errorf("layer %d = %+v, want digest %s diff_id %s", i, l, want[i], diffs[i])
		}
		p, _ := blobPath(got.CacheDir, l.Digest)
		data, err := os.ReadFile(p)
		if err != nil || sha256Digest(data) != l.Digest {
			t.Errorf("layer %d not cached under its digest: %v", i, err)
		}
	}
	if strings.Join(got.Config.Cmd, " ") != "/bin/hello" {
		t.Errorf("config = %+v", got.Config)
	}
	cd, _ := img.ConfigName()
	if got.ConfigDigest != cd.String() {
		t.Errorf("config digest %s, want %s", got.ConfigDigest, cd)
	}
}

func TestImportLayoutChoosesAMD64(t *testing.T) {
	dir := t.TempDir()
	arm := smallImage(t, "arm64", "arm")
	amd := smallImage(t, "amd64", "amd")
	writeLayout(t, dir, arm, amd)
	got, err := ImportLayout(context.Background(), dir, PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	checkImported(t, got, amd, true)
	md, _ := amd.Digest()
	if got.Digest != md.String() || got.Source != dir {
		t.Errorf("digest %s source %s", got.Digest, got.Source)
	}

	armOnly := t.TempDir()
	writeLayout(t, armOnly, arm)
	_, err = ImportLayout(context.Background(), armOnly, PullOptions{CacheDir: t.TempDir()})
	if !errors.Is(err, ErrPlatform) {
		t.Fatalf("arm64-only layout: err = %v, want ErrPlatform", err)
	}
}

func TestImportLayoutRefusesTamperedBlob(t *testing.T) {
	dir := t.TempDir()
	img := smallImage(t, "amd64", t.Name())
	writeLayout(t, dir, img)
	d := layerDigests(t, img)[0]
	p := filepath.Join(dir, "blobs", "sha256", strings.TrimPrefix(d, "sha256:"))
	data, _ := os.ReadFile(p)
	data[len(data)/2] ^= 0xff
	os.WriteFile(p, data, 0o644)
	cache := t.TempDir()
	_, err := ImportLayout(context.Background(), dir, PullOptions{CacheDir: cache})
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "layer 1/2") {
		t.Fatalf("err = %v, want ErrDigestMismatch naming layer 1/2", err)
	}
	if blobs, tmp := cacheFiles(t, cache); len(blobs)+len(tmp) != 0 {
		t.Errorf("cache holds %v %v", blobs, tmp)
	}
}

func TestImportOCIArchive(t *testing.T) {
	for _, gz := range []bool{false, true} {
		dir := t.TempDir()
		img := smallImage(t, "amd64", "archive")
		writeLayout(t, filepath.Join(dir, "layout"), img)
		archive := filepath.Join(dir, "image.tar")
		tarDir(t, filepath.Join(dir, "layout"), archive, gz)
		cache := t.TempDir()
		got, err := ImportArchive(context.Background(), archive, PullOptions{CacheDir: cache})
		if err != nil {
			t.Fatalf("gzip %v: %v", gz, err)
		}
		checkImported(t, got, img, true)
		if got.Source != archive {
			t.Errorf("source %s", got.Source)
		}
		if _, tmp := cacheFiles(t, cache); len(tmp) != 0 {
			t.Errorf("extracted archive left in the cache: %v", tmp)
		}
	}
}

func TestImportDockerSave(t *testing.T) {
	dir := t.TempDir()
	img := smallImage(t, "amd64", "docker")
	tag, _ := name.NewTag("example.com/small:1")
	archive := filepath.Join(dir, "saved.tar")
	if err := tarball.WriteToFile(archive, tag, img); err != nil {
		t.Fatal(err)
	}
	got, err := ImportArchive(context.Background(), archive, PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	checkImported(t, got, img, false)
	if got.Digest != got.ConfigDigest {
		t.Errorf("a docker save tarball has no manifest digest: got %s, config %s", got.Digest, got.ConfigDigest)
	}
	if os.Geteuid() == 0 {
		tree := t.TempDir()
		if err := Unpack(context.Background(), got, tree, UnpackOptions{}); err != nil {
			t.Fatal(err)
		}
		if data, _ := os.ReadFile(filepath.Join(tree, "etc/tag")); string(data) != "docker" {
			t.Errorf("etc/tag = %q", data)
		}
	}
}

func TestImportArchiveRefusesEscapingMembers(t *testing.T) {
	dir := t.TempDir()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "../escaped", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1})
	tw.Write([]byte("x"))
	tw.Close()
	archive := filepath.Join(dir, "sub", "evil.tar")
	os.Mkdir(filepath.Dir(archive), 0o755)
	os.WriteFile(archive, buf.Bytes(), 0o644)
	cache := filepath.Join(dir, "sub", "cache")
	_, err := ImportArchive(context.Background(), archive, PullOptions{CacheDir: cache})
	if !errors.Is(err, ErrUnsafeEntry) || !strings.Contains(err.Error(), `"../escaped"`) {
		t.Fatalf("err = %v, want ErrUnsafeEntry naming the member", err)
	}
	if _, err := os.Stat(filepath.Join(cache, "tmp", "escaped")); err == nil {
		t.Error("member written outside the extraction directory")
	}
	_, err = ImportArchive(context.Background(), filepath.Join(dir, "missing.tar"), PullOptions{CacheDir: cache})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing archive: err = %v", err)
	}
}
