package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// pulled pushes img to a fresh registry and pulls it into a fresh cache.
func pulled(t *testing.T, img v1.Image) *Image {
	t.Helper()
	reg := newTestRegistry(t)
	reg.push(t, reg.ref("t:1"), img)
	got, err := Pull(context.Background(), reg.ref("t:1"), PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func tarLayers(t *testing.T, layers ...[]entry) []v1.Layer {
	var out []v1.Layer
	for _, l := range layers {
		out = append(out, gzLayer(t, layerTar(t, l)))
	}
	return out
}

func TestUnpackWhiteoutsAndOpaqueDirs(t *testing.T) {
	requireRoot(t)
	const dir, reg = tar.TypeDir, tar.TypeReg
	img := testImage(t, "amd64", v1.Config{}, tarLayers(t,
		[]entry{
			{name: "etc/", typ: dir},
			{name: "etc/keep", body: "keep"},
			{name: "etc/gone", body: "gone"},
			{name: "etc/gonedir/", typ: dir},
			{name: "etc/gonedir/f", body: "f"},
			{name: "opq/", typ: dir, mode: 0o750},
			{name: "opq/old", body: "old"},
			{name: "opq/sub/", typ: dir},
			{name: "opq/sub/deep", body: "deep"},
			{name: "opq2/", typ: dir},
			{name: "opq2/old", body: "old2"},
			{name: "replace", body: "a file first"},
			{name: "var/", typ: dir},
			{name: "var/link", typ: tar.TypeSymlink, link: "/etc/keep"},
		},
		[]entry{
			{name: "etc/.wh.gone"},
			{name: "etc/.wh.gonedir"},
			{name: "etc/.wh.never-existed"},
			// Opaque marker after an entry of the same layer: the entry stays.
			{name: "opq/new", body: "new"},
			{name: "opq/.wh..wh..opq"},
			// Opaque marker before: what follows stays too.
			{name: "opq2/.wh..wh..opq"},
			{name: "opq2/new2", body: "new2"},
			{name: "replace/", typ: dir},
			{name: "replace/inside", body: "dir now", uid: 1000, gid: 1001, mode: 0o600},
			{name: "var/link", body: "a file replacing the symlink"},
		},
		[]entry{
			{name: "etc/gone", body: "back"},
			{name: "opq/sub/", typ: dir},
		},
	)...)
	got := pulled(t, img)
	root := t.TempDir()
	var seen []int
	if err := Unpack(context.Background(), got, root, UnpackOptions{Progress: func(i, n int, _ string) { seen = append(seen, i) }}); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"etc d 0755 0:0",
		"etc/gone f 0644 0:0 back",
		"etc/keep f 0644 0:0 keep",
		"opq d 0750 0:0",
		"opq/new f 0644 0:0 new",
		"opq/sub d 0755 0:0",
		"opq2 d 0755 0:0",
		"opq2/new2 f 0644 0:0 new2",
		"replace d 0755 0:0",
		"replace/inside f 0600 1000:1001 dir now",
		"var d 0755 0:0",
		"var/link f 0644 0:0 a file replacing the symlink",
	}, "\n")
	if tree := listTree(t, root); tree != want {
		t.Errorf("tree:\n%s\nwant:\n%s", tree, want)
	}
	if len(seen) != 3 {
		t.Errorf("progress for layers %v, want 3", seen)
	}
}

func TestUnpackKeepsOwnersModesLinksDevicesXattrs(t *testing.T) {
	requireRoot(t)
	capV3 := string([]byte{0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // cap_net_bind_service, VFS_CAP_REVISION_2
	img := testImage(t, "amd64", v1.Config{}, tarLayers(t, []entry{
		{name: "bin/", typ: tar.TypeDir},
		{name: "bin/suid", body: "x", mode: 0o4755, uid: 0, gid: 0},
		{name: "bin/ping", body: "ping", mode: 0o755, pax: map[string]string{"SCHILY.xattr.security.capability": capV3}},
		{name: "bin/tagged", body: "t", pax: map[string]string{"SCHILY.xattr.user.banger": "yes"}},
		{name: "bin/hard", typ: tar.TypeLink, link: "bin/ping"},
		{name: "bin/rel", typ: tar.TypeSymlink, link: "../etc/owned"},
		{name: "bin/abs", typ: tar.TypeSymlink, link: "/nowhere/at/all"},
		{name: "etc/", typ: tar.TypeDir, mode: 0o700, uid: 7, gid: 8},
		{name: "etc/owned", body: "o", uid: 1234, gid: 5678, mode: 0o640},
		{name: "dev/", typ: tar.TypeDir},
		{name: "dev/null", typ: tar.TypeChar, major: 1, minor: 3, mode: 0o666},
		{name: "dev/loop9", typ: tar.TypeBlock, major: 7, minor: 9, mode: 0o660, gid: 6},
		{name: "dev/fifo", typ: tar.TypeFifo, mode: 0o600},
		{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
	})...)
	got := pulled(t, img)
	root := t.TempDir()
	if err := Unpack(context.Background(), got, root, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"bin d 0755 0:0",
		"bin/abs l 0777 0:0 -> /nowhere/at/all",
		"bin/hard f 0755 0:0 ping",
		"bin/ping f 0755 0:0 ping",
		"bin/rel l 0777 0:0 -> ../etc/owned",
		"bin/suid f 4755 0:0 x",
		"bin/tagged f 0644 0:0 t",
		"dev d 0755 0:0",
		"dev/fifo p 0600 0:0",
		"dev/loop9 b 0660 0:6",
		"dev/null c 0666 0:0",
		"etc d 0700 7:8",
		"etc/owned f 0640 1234:5678 o",
		"tmp d 1777 0:0",
	}, "\n")
	if tree := listTree(t, root); tree != want {
		t.Errorf("tree:\n%s\nwant:\n%s", tree, want)
	}
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(root, "bin/ping"), &a)
	unix.Lstat(filepath.Join(root, "bin/hard"), &b)
	if a.Ino != b.Ino {
		t.Error("bin/hard is not a hardlink of bin/ping")
	}
	var n unix.Stat_t
	unix.Lstat(filepath.Join(root, "dev/null"), &n)
	if unix.Major(uint64(n.Rdev)) != 1 || unix.Minor(uint64(n.Rdev)) != 3 {
		t.Errorf("dev/null is %d:%d", unix.Major(uint64(n.Rdev)), unix.Minor(uint64(n.Rdev)))
	}
	buf := make([]byte, 64)
	sz, err := unix.Lgetxattr(filepath.Join(root, "bin/ping"), "security.capability", buf)
	if err != nil || string(buf[:sz]) != capV3 {
		t.Errorf("security.capability = %x, %v; want %x", buf[:max(sz, 0)], err, capV3)
	}
	sz, err = unix.Lgetxattr(filepath.Join(root, "bin/tagged"), "user.banger", buf)
	if err != nil || string(buf[:sz]) != "yes" {
		t.Errorf("user.banger = %q, %v", buf[:max(sz, 0)], err)
	}
	st, _ := os.Stat(filepath.Join(root, "etc/owned"))
	if st.ModTime().Unix() != 1700000000 {
		t.Errorf("mtime %v not kept", st.ModTime())
	}
}

// TestUnpackRefusesHostileLayers: each layer tries to write outside the
// unpack directory; each must fail naming the layer and the entry, and
// nothing may appear outside.
func TestUnpackRefusesHostileLayers(t *testing.T) {
	requireRoot(t)
	cases := []struct {
		name   string
		layers [][]entry
		entry  string
	}{
		{"dotdot", [][]entry{{{name: "../escaped", body: "x"}}}, "../escaped"},
		{"dotdot inside", [][]entry{{{name: "a/", typ: tar.TypeDir}, {name: "a/../../escaped", body: "x"}}}, "a/../../escaped"},
		{"absolute", [][]entry{{{name: "/OUTSIDE/escaped", body: "x"}}}, "/OUTSIDE/escaped"},
		{"symlink then write through it", [][]entry{{
			{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"},
			{name: "evil/escaped", body: "x"},
		}}, "evil/escaped"},
		{"relative symlink climbing out, next layer", [][]entry{
			{{name: "evil", typ: tar.TypeSymlink, link: "../../../../../../OUTSIDE"}},
			{{name: "evil/escaped", body: "x"}},
		}, "evil/escaped"},
		{"symlinked dir whiteout", [][]entry{
			{{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"}},
			{{name: "evil/.wh.victim"}},
		}, "evil/.wh.victim"},
		{"symlinked dir opaque", [][]entry{
			{{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"}},
			{{name: "evil/.wh..wh..opq"}},
		}, "evil/.wh..wh..opq"},
		{"hardlink to outside", [][]entry{{{name: "hard", typ: tar.TypeLink, link: "../OUTSIDE/victim"}}}, "hard"},
		{"hardlink to absolute outside", [][]entry{{{name: "hard", typ: tar.TypeLink, link: "/OUTSIDE/victim"}}}, "hard"},
		{"hardlink through symlink", [][]entry{{
			{name: "evil", typ: tar.TypeSymlink, link: "OUTSIDE"},
			{name: "hard", typ: tar.TypeLink, link: "evil/victim"},
		}}, "hard"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "OUTSIDE")
			os.Mkdir(outside, 0o755)
			victim := filepath.Join(outside, "victim")
			os.WriteFile(victim, []byte("precious"), 0o644)
			root := filepath.Join(base, "root")
			// Symlink targets in the cases are relative to base or absolute
			// /OUTSIDE; point the absolute ones at our OUTSIDE too.
			for i := range c.layers {
				for j := range c.layers[i] {
					e := &c.layers[i][j]
					if e.link == "OUTSIDE" {
						e.link = outside
					}
				}
			}
			img := testImage(t, "amd64", v1.Config{}, tarLayers(t, c.layers...)...)
			got := pulled(t, img)
			err := Unpack(context.Background(), got, root, UnpackOptions{})
			if !errors.Is(err, ErrUnsafeEntry) {
				t.Fatalf("err = %v, want ErrUnsafeEntry", err)
			}
			n := len(c.layers)
			wantLayer := "layer " + string(rune('0'+n)) + "/" + string(rune('0'+n))
			if !strings.Contains(err.Error(), wantLayer) || !strings.Contains(err.Error(), `entry "`+c.entry+`"`) {
				t.Errorf("error does not name %s and entry %q: %v", wantLayer, c.entry, err)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 {
				t.Errorf("OUTSIDE now holds %d entries", len(ents))
			}
			if data, _ := os.ReadFile(victim); string(data) != "precious" {
				t.Errorf("victim changed: %q", data)
			}
			if _, err := os.Lstat(filepath.Join(base, "escaped")); err == nil {
				t.Error("a file escaped into the parent directory")
			}
			if _, err := os.Stat("/OUTSIDE"); err == nil {
				t.Error("/OUTSIDE was created")
			}
			var st unix.Stat_t
			unix.Stat(victim, &st)
			if st.Nlink != 1 {
				t.Errorf("victim has %d links", st.Nlink)
			}
		})
	}
}

func TestUnpackChecksDigestsOfCachedBlobs(t *testing.T) {
	requireRoot(t)
	img := smallImage(t, "amd64", t.Name())
	got := pulled(t, img)
	p, _ := blobPath(got.CacheDir, got.Layers[1].Digest)
	data, _ := os.ReadFile(p)

	// A cache file changed after it was verified is caught when read.
	bad := bytes.Clone(data)
	bad[len(bad)-9] ^= 0x01 // in the gzip trailer's CRC: the tar decodes, the digest does not match
	os.WriteFile(p, bad, 0o644)
	err := Unpack(context.Background(), got, t.TempDir(), UnpackOptions{})
	if !errors.Is(err, ErrDigestMismatch) && !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), "layer 2/2") {
		t.Fatalf("altered blob: err = %v, want a digest or format error naming layer 2/2", err)
	}
	// Another valid layer in its place: it unpacks, its digest does not match.
	p0, _ := blobPath(got.CacheDir, got.Layers[0].Digest)
	other, _ := os.ReadFile(p0)
	os.WriteFile(p, other, 0o644)
	size := got.Layers[1].Size
	got.Layers[1].Size = int64(len(other))
	err = Unpack(context.Background(), got, t.TempDir(), UnpackOptions{})
	got.Layers[1].Size = size
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "cached blob has digest") || !strings.Contains(err.Error(), "layer 2/2") {
		t.Fatalf("swapped blob: err = %v, want a digest mismatch naming layer 2/2", err)
	}

	// A truncated cache file.
	os.WriteFile(p, data[:len(data)/2], 0o644)
	err = Unpack(context.Background(), got, t.TempDir(), UnpackOptions{})
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "layer 2/2") {
		t.Fatalf("truncated blob: err = %v, want ErrTruncated naming layer 2/2", err)
	}

	// The diff_id is checked too: a blob that matches its digest but not
	// the config's diff_id.
	os.WriteFile(p, data, 0o644)
	got.Layers[1].DiffID = got.Layers[0].DiffID
	err = Unpack(context.Background(), got, t.TempDir(), UnpackOptions{})
	if !errors.Is(err, ErrDigestMismatch) || !strings.Contains(err.Error(), "diff_id") {
		t.Fatalf("wrong diff_id: err = %v, want ErrDigestMismatch", err)
	}
}

func TestUnpackMaxSize(t *testing.T) {
	requireRoot(t)
	img := testImage(t, "amd64", v1.Config{}, tarLayers(t, []entry{{name: "big", body: strings.Repeat("x", 10000)}})...)
	got := pulled(t, img)
	err := Unpack(context.Background(), got, t.TempDir(), UnpackOptions{MaxSize: 5000})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
}

func TestUnpackNeedsRoot(t *testing.T) {
	defer func(f func() int) { euid = f }(euid)
	euid = func() int { return 1000 }
	err := Unpack(context.Background(), &Image{}, t.TempDir(), UnpackOptions{})
	if err == nil || !strings.Contains(err.Error(), "needs root") {
		t.Fatalf("err = %v", err)
	}
}

func TestCleanEntryName(t *testing.T) {
	for in, want := range map[string]string{
		"a/b": "a/b", "./a/b/": "a/b", "a/../b": "b", ".": "", "./": "", "a//b": "a/b",
	} {
		got, err := cleanEntryName(in)
		if err != nil || got != want {
			t.Errorf("cleanEntryName(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"..", "../a", "a/../..", "/etc/passwd", "a/../../b", "a\x00b"} {
		if _, err := cleanEntryName(in); !errors.Is(err, ErrUnsafeEntry) {
			t.Errorf("cleanEntryName(%q): err = %v, want ErrUnsafeEntry", in, err)
		}
	}
}
