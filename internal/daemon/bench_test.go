package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/config"
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
// createVM records them. It does not serve a socket: requests go to its
// handler directly.
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
	d, err := New(ctx, cfg, Deps{KVMUsable: func() bool { return false }}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	d.gates = map[string]chan struct{}{}
	close(d.ready)
	subnet := d.netConfig().Subnet
	now := time.Now().UTC()
	ipAddr := subnet.Masked().Addr().Next() // the gateway; guests start after it
	for i := range n {
		id := newID()
		ipAddr = ipAddr.Next()
		if !subnet.Contains(ipAddr) {
			b.Fatalf("subnet %s too small for %d vms", subnet, n)
		}
		ip := ipAddr.String()
		name := fmt.Sprintf("seed-%05d", i)
		dir := vmDir(cfg, id)
		vm := model.VMRecord{
			ID: id, Name: name, Image: "base",
			Spec: model.VMSpec{VCPUs: defaultVCPUs, MemoryMiB: defaultMemoryMiB, DiskSizeBytes: defaultDiskSize, WorkDiskBytes: defaultWorkDisk},
			Runtime: model.VMRuntime{
				State: model.StateCreated, RootDiskMethod: "copy",
				GuestIP: ip, GuestMAC: network.MACFromID(id),
				APISockPath: apiSockPath(cfg, id), VSockPath: vsockPath(cfg, id), VSockCID: uint32(3 + i),
				LogPath: filepath.Join(dir, "console.log"), MetricsPath: filepath.Join(dir, "metrics.log"),
				DNSName: name + "." + cfg.DNSZone, VMDir: dir, SystemOverlay: filepath.Join(dir, "overlay"),
				WorkDiskPath: filepath.Join(dir, "work.ext4"),
			},
			CreatedAt: now.Add(time.Duration(i) * time.Microsecond), UpdatedAt: now,
		}
		if err := d.store.CreateVM(ctx, vm); err != nil {
			b.Fatal(err)
		}
	}
	return d
}

// serve runs one request through the daemon's routes as root would.
func serve(h http.Handler, method, path string, body []byte) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, bytes.NewReader(body))
	r = r.WithContext(context.WithValue(r.Context(), peerKey, peerCred{ok: true, uid: 0}))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func BenchmarkVMList(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			d := benchDaemon(b, n)
			h := d.routes()
			b.ReportAllocs()
			var size int
			for b.Loop() {
				w := serve(h, http.MethodGet, "/v1/vms", nil)
				if w.Code != http.StatusOK {
					b.Fatalf("list: %d %s", w.Code, w.Body.String())
				}
				size = w.Body.Len()
			}
			b.ReportMetric(float64(size), "bytes/list")
		})
	}
}

// BenchmarkVMListHeap reports the heap the daemon keeps live after a list of
// 10,000 VMs, the part of its resident memory a list can grow.
func BenchmarkVMListHeap(b *testing.B) {
	d := benchDaemon(b, 10000)
	h := d.routes()
	var ms runtime.MemStats
	for b.Loop() {
		serve(h, http.MethodGet, "/v1/vms", nil)
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
			h := d.routes()
			i := 0
			for b.Loop() {
				body := fmt.Appendf(nil, `{"name":"new-%d"}`, i)
				i++
				w := serve(h, http.MethodPost, "/v1/vms", body)
				if w.Code != http.StatusCreated {
					b.Fatalf("create: %d %s", w.Code, w.Body.String())
				}
			}
		})
	}
}
