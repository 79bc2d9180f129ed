package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// benchStore is a store with n VM rows shaped like the daemon's. It lives on
// tmpfs when there is one: seeding with an fsync per row is slow on a disk.
func benchStore(b *testing.B, n int) *Store {
	b.Helper()
	parent := "/dev/shm"
	if st, err := os.Stat(parent); err != nil || !st.IsDir() {
		parent = os.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "bs")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(dir, "banger.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	now := time.Now().UTC()
	for i := range n {
		id := fmt.Sprintf("%032x", i+1)
		vmDir := "/var/lib/banger/vms/" + id
		vm := model.VMRecord{
			ID: id, Name: fmt.Sprintf("seed-%05d", i), Image: "base",
			Spec: model.VMSpec{VCPUs: 2, MemoryMiB: 1024, DiskSizeBytes: 8 << 30, WorkDiskBytes: 4 << 30},
			Runtime: model.VMRuntime{
				State: model.StateCreated, RootDiskMethod: "copy",
				GuestIP: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), GuestMAC: "02:00:00:00:00:01",
				APISockPath: "/run/banger/vm/" + id[:16] + "/api.sock", VSockPath: "/run/banger/vm/" + id[:16] + "/vsock.sock",
				VSockCID: uint32(3 + i), LogPath: vmDir + "/console.log", MetricsPath: vmDir + "/metrics.log",
				DNSName: "seed.banger.internal", VMDir: vmDir, SystemOverlay: vmDir + "/overlay", WorkDiskPath: vmDir + "/work.ext4",
			},
			CreatedAt: now.Add(time.Duration(i) * time.Microsecond), UpdatedAt: now,
		}
		if err := s.CreateVM(ctx, vm); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkListVMs measures reading every VM row, which vm list does.
func BenchmarkListVMs(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			s := benchStore(b, n)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				vms, err := s.ListVMs(ctx)
				if err != nil || len(vms) != n {
					b.Fatalf("ListVMs: %d rows, %v", len(vms), err)
				}
			}
		})
	}
}

// BenchmarkUsedAddresses measures the scan every create does to allocate
// an address and a vsock CID.
func BenchmarkUsedAddresses(b *testing.B) {
	s := benchStore(b, 10000)
	ctx := context.Background()
	for b.Loop() {
		if _, _, err := s.UsedAddresses(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
