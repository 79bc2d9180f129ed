package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
)

// Benchmarks of the daemon's request paths that must stay fast with many
// VMs recorded. bench/run.sh measures the same things end to end (whole CLI
// processes); these isolate the daemon's share for profiling:
//
//	go test ./internal/daemon -run '^$' -bench 'VMList|VMCreate' -cpuprofile cpu.out

// benchDaemon is a daemon on temp dirs (tmpfs when there is one: seeding
// 10,000 rows with an fsync each is slow on a disk) with n VMs recorded as
// CreateVM records them, serving its socket.
func benchDaemon(b *testing.B, n int) *Daemon {
	b.Helper()
	parent := "/dev/shm"
	if st, err := os.Stat(parent); err != nil || !st.IsDir() {
		parent = os.TempDir()
	}
	base, err := os.MkdirTemp(parent, "bb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(base) })
	cfg := config.Defaults()
	cfg.StateDir = filepath.Join(base, "s")
	cfg.RunDir = filepath.Join(base, "r")
	cfg.Group = "banger-test-nonexistent"
	cfg.Network = "off"
	cfg.RootDiskMethod = "copy"
	cfg.Subnet = "10.99.0.0/16"
	cfg.Finish()
	ctx := context.Background()
	d, err := New(ctx, cfg, Deps{Deps: engine.Deps{KVMUsable: func() bool { return false }}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	subnet := engine.NetConfigOf(cfg).Subnet
	now := time.Now().UTC()
	ipAddr := subnet.Masked().Addr().Next() // the gateway; guests start after it
	for i := range n {
		id := fmt.Sprintf("%032x", i+1)
		ipAddr = ipAddr.Next()
		if !subnet.Contains(ipAddr) {
			b.Fatalf("subnet %s too small for %d vms", subnet, n)
		}
		ip := ipAddr.String()
		name := fmt.Sprintf("seed-%05d", i)
		dir := engine.VMDir(cfg, id)
		vm := model.VMRecord{
			ID: id, Name: name, Image: "base",
			Spec: model.VMSpec{VCPUs: 2, MemoryMiB: 1024, DiskSizeBytes: 8 << 30, WorkDiskBytes: 4 << 30},
			Runtime: model.VMRuntime{
				State: model.StateCreated, RootDiskMethod: "copy",
				GuestIP: ip, GuestMAC: network.MACFromID(id),
				APISockPath: filepath.Join(engine.VMRunDir(cfg, id), "api.sock"), VSockPath: filepath.Join(engine.VMRunDir(cfg, id), "vsock.sock"), VSockCID: uint32(3 + i),
				LogPath: filepath.Join(dir, "console.log"), MetricsPath: filepath.Join(dir, "metrics.log"),
				DNSName: name + "." + cfg.DNSZone, VMDir: dir, SystemOverlay: filepath.Join(dir, "overlay"),
				WorkDiskPath: filepath.Join(dir, "work.ext4"),
			},
			CreatedAt: now.Add(time.Duration(i) * time.Microsecond), UpdatedAt: now,
		}
		if err := d.Store.CreateVM(ctx, vm); err != nil {
			b.Fatal(err)
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { d.Serve(sctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done; d.Close() })
	<-d.Ready()
	return d
}

func BenchmarkVMList(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			d := benchDaemon(b, n)
			h := &client.Client{Socket: d.cfg.Socket}
			b.ReportAllocs()
			var size int
			for b.Loop() {
				rc, err := h.ListVMsJSON(context.Background())
				if err != nil {
					b.Fatalf("list: %v", err)
				}
				n, _ := io.Copy(io.Discard, rc)
				rc.Close()
				size = int(n)
			}
			b.ReportMetric(float64(size), "bytes/list")
		})
	}
}

// BenchmarkVMListHeap reports the heap the daemon keeps live after a list of
// 10,000 VMs, the part of its resident memory a list can grow.
func BenchmarkVMListHeap(b *testing.B) {
	d := benchDaemon(b, 10000)
	h := &client.Client{Socket: d.cfg.Socket}
	var ms runtime.MemStats
	for b.Loop() {
		if rc, err := h.ListVMsJSON(context.Background()); err == nil {
			io.Copy(io.Discard, rc)
			rc.Close()
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "MiB-heap-inuse")
	b.ReportMetric(float64(ms.Sys)/(1<<20), "MiB-sys")
}

func BenchmarkVMCreate(b *testing.B) {
	for _, n := range []int{0, 10000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			d := benchDaemon(b, n)
			h := &client.Client{Socket: d.cfg.Socket}
			i := 0
			for b.Loop() {
				name := fmt.Sprintf("new-%d", i)
				i++
				if _, err := h.CreateVM(context.Background(), client.CreateVMRequest{Name: name}); err != nil {
					b.Fatalf("create: %v", err)
				}
			}
		})
	}
}
