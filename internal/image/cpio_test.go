package image

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// cpioEntry is one record as parsed back by the test reader.
type cpioEntry struct {
	ino, mode, uid, gid, nlink, rmajor, rminor uint32
	data                                       []byte
}

// parseNewc is an independent newc reader: it checks magic, field syntax and
// 4-byte alignment and stops at the trailer, which must be last.
func parseNewc(t *testing.T, b []byte) (map[string]cpioEntry, []string) {
	t.Helper()
	entries := map[string]cpioEntry{}
	var order []string
	p := 0
	align := func() {
		for p%4 != 0 {
			if b[p] != 0 {
				t.Fatalf("non-zero padding at %d", p)
			}
			p++
		}
	}
	for {
		if len(b)-p < 110 {
			t.Fatalf("truncated header at %d", p)
		}
		h := b[p : p+110]
		if string(h[:6]) != "070701" {
			t.Fatalf("bad magic %q at %d", h[:6], p)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("bad header field %d at %d: %v", i, p, err)
			}
			return uint32(v)
		}
		e := cpioEntry{ino: field(0), mode: field(1), uid: field(2), gid: field(3), nlink: field(4),
			rmajor: field(9), rminor: field(10)}
		size, namesize := int(field(6)), int(field(11))
		p += 110
		name := string(b[p : p+namesize-1])
		if b[p+namesize-1] != 0 {
			t.Fatalf("name %q not NUL-terminated", name)
		}
		p += namesize
		align()
		e.data = b[p : p+size]
		p += size
		if name == "TRAILER!!!" {
			if rest := bytes.Trim(b[p:], "\x00"); len(rest) != 0 {
				t.Fatalf("%d bytes after trailer", len(rest))
			}
			return entries, order
		}
		align()
		if _, dup := entries[name]; dup {
			t.Fatalf("duplicate entry %q", name)
		}
		entries[name] = e
		order = append(order, name)
	}
}

func readCPIOFile(t *testing.T, path string) map[string]cpioEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("initramfs %s is not gzip: %v", path, err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := parseNewc(t, raw)
	return entries
}

func TestWriteInitramfsRoundTrip(t *testing.T) {
	src := t.TempDir()
	mustWrite := func(rel string, data string, mode os.FileMode) {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("init", "#!/bin/sh\necho hi\n", 0o755)
	mustWrite("etc/odd", "abc", 0o640) // 3 bytes: data needs padding
	mustWrite("empty", "", 0o644)
	mustWrite("lib/modules/a.ko", string(bytes.Repeat([]byte{0, 1, 2, 3, 4}, 1001)), 0o644)
	if err := os.Symlink("busybox", filepath.Join(src, "sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(src, "newroot"), 0o700); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(t.TempDir(), "initrd.img")
	if err := WriteInitramfs(src, out); err != nil {
		t.Fatalf("WriteInitramfs: %v", err)
	}
	entries := readCPIOFile(t, out)

	want := map[string]struct {
		mode uint32
		data string
	}{
		"init":             {sIFREG | 0o755, "#!/bin/sh\necho hi\n"},
		"etc":              {sIFDIR | 0o755, ""},
		"etc/odd":          {sIFREG | 0o640, "abc"},
		"empty":            {sIFREG | 0o644, ""},
		"lib":              {sIFDIR | 0o755, ""},
		"lib/modules":      {sIFDIR | 0o755, ""},
		"lib/modules/a.ko": {sIFREG | 0o644, string(bytes.Repeat([]byte{0, 1, 2, 3, 4}, 1001))},
		"sh":               {sIFLNK | 0o777, "busybox"},
		"newroot":          {sIFDIR | 0o700, ""},
	}
	if len(entries) != len(want) {
		t.Errorf("archive has %d entries, want %d: %v", len(entries), len(want), keys(entries))
	}
	inodes := map[uint32]string{}
	for name, w := range want {
		e, ok := entries[name]
		if !ok {
			t.Errorf("entry %q missing", name)
			continue
		}
		if e.mode != w.mode {
			t.Errorf("%s: mode %o, want %o", name, e.mode, w.mode)
		}
		if string(e.data) != w.data {
			t.Errorf("%s: data %q, want %q", name, e.data, w.data)
		}
		if e.uid != 0 || e.gid != 0 {
			t.Errorf("%s: owner %d:%d, want root", name, e.uid, e.gid)
		}
		if other, dup := inodes[e.ino]; dup {
			t.Errorf("%s and %s share inode %d", name, other, e.ino)
		}
		inodes[e.ino] = name
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}
}

func TestWriteInitramfsParentsBeforeChildren(t *testing.T) {
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "a/b/c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "a/b/c/f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "i.gz")
	if err := WriteInitramfs(src, out); err != nil {
		t.Fatal(err)
	}
	raw := gunzipFile(t, out)
	_, order := parseNewc(t, raw)
	wantOrder := []string{"a", "a/b", "a/b/c", "a/b/c/f"}
	if len(order) != len(wantOrder) {
		t.Fatalf("order %q, want %q", order, wantOrder)
	}
	for i := range order {
		if order[i] != wantOrder[i] {
			t.Fatalf("order %q, want %q (the kernel needs a directory before its files)", order, wantOrder)
		}
	}
}

func TestWriteInitramfsExtraNodes(t *testing.T) {
	src := t.TempDir()
	if err := os.Mkdir(filepath.Join(src, "dev"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "i.gz")
	console := cpioNode{name: "/dev/console", mode: sIFCHR | 0o600, major: 5, minor: 1}
	if err := writeInitramfs(src, out, []cpioNode{console}); err != nil {
		t.Fatal(err)
	}
	entries, _ := parseNewc(t, gunzipFile(t, out))
	e, ok := entries["dev/console"]
	if !ok {
		t.Fatalf("dev/console missing: %v", keys(entries))
	}
	if e.mode != sIFCHR|0o600 || e.rmajor != 5 || e.rminor != 1 {
		t.Errorf("dev/console = mode %o rdev %d:%d, want char 5:1 mode 600", e.mode, e.rmajor, e.rminor)
	}
}

func TestWriteInitramfsMissingDir(t *testing.T) {
	out := filepath.Join(t.TempDir(), "i.gz")
	if err := WriteInitramfs(filepath.Join(t.TempDir(), "nope"), out); err == nil {
		t.Fatal("WriteInitramfs of a missing directory succeeded")
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("failed write left %s: %v", out, err)
	}
	if _, err := os.Stat(out + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("failed write left its temporary file: %v", err)
	}
}

func gunzipFile(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func keys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
