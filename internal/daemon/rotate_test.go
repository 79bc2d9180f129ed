package daemon

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestRotateLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bangerd.log")
	os.WriteFile(p, bytes.Repeat([]byte("x"), 100), 0o640)
	rotateLog(p, 200)
	if _, err := os.Stat(p + ".1"); err == nil {
		t.Fatal("small log rotated")
	}
	os.WriteFile(p, bytes.Repeat([]byte("y"), 300), 0o640)
	rotateLog(p, 200)
	if b, err := os.ReadFile(p + ".1"); err != nil || len(b) != 300 {
		t.Fatalf("large log not rotated: %d %v", len(b), err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatal("log still in place")
	}
}
