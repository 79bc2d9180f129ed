package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTrimLogKeepsTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	var b bytes.Buffer
	for i := 0; b.Len() < 3000; i++ {
		b.WriteString(strings.Repeat("x", 9) + "\n")
	}
	b.WriteString("LAST LINE\n")
	os.WriteFile(p, b.Bytes(), 0o644)
	cut, err := trimLog(p, 2000, 500)
	if err != nil || cut != int64(b.Len()-500) {
		t.Fatalf("cut %d err %v", cut, err)
	}
	got, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(got), "[banger: console log over 2000 bytes;") || !strings.HasSuffix(string(got), "LAST LINE\n") {
		t.Fatalf("trimmed log: %q", got)
	}
	if len(got) > 600 {
		t.Fatalf("trimmed log still %d bytes", len(got))
	}
	// Appends after the cut land at the end.
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("after\n")
	f.Close()
	got, _ = os.ReadFile(p)
	if !strings.HasSuffix(string(got), "LAST LINE\nafter\n") {
		t.Fatalf("append after trim: %q", got[len(got)-20:])
	}
	// Small logs are left alone.
	if cut, _ := trimLog(p, 2000, 500); cut != 0 {
		t.Fatal("small log trimmed")
	}
}

func TestCopyFileFrom(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	var b bytes.Buffer
	if off, err := copyFileFrom(p, 0, &b); off != 0 || err != nil || b.Len() != 0 {
		t.Fatalf("missing file: %d %v %q", off, err, b.String())
	}
	os.WriteFile(p, []byte("one\ntwo\n"), 0o644)
	off, _ := copyFileFrom(p, 0, &b)
	f, _ := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("three\n")
	f.Close()
	off, _ = copyFileFrom(p, off, &b)
	if b.String() != "one\ntwo\nthree\n" || off != 14 {
		t.Fatalf("follow: %q at %d", b.String(), off)
	}
	// Trimmed (or rewritten by a new boot): start again from the top.
	os.WriteFile(p, []byte("new\n"), 0o644)
	b.Reset()
	if off, _ = copyFileFrom(p, off, &b); b.String() != "new\n" || off != 4 {
		t.Fatalf("after truncation: %q at %d", b.String(), off)
	}
}
