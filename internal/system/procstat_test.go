package system

import (
	"os"
	"testing"
	"time"
)

func TestReadProcUsage(t *testing.T) {
	// Burn a little CPU so the counter is above zero.
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	u, err := ReadProcUsage(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if u.CPUNanos <= 0 || u.RSSBytes <= 0 {
		t.Fatalf("usage of this test %+v: want CPU time and memory", u)
	}
	if _, err := ReadProcUsage(1 << 30); err == nil {
		t.Fatal("usage of a pid that cannot exist: no error")
	}
}

func TestMemAvailable(t *testing.T) {
	n, err := MemAvailable()
	if err != nil || n <= 0 {
		t.Fatalf("MemAvailable = %d, %v", n, err)
	}
}
