package engine

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// Stats are a running VM's resource counters, read from its cgroup (a
// confined VM) or its VMM process (unconfined), and its tap. Network
// counters are the guest's view: what it received and sent.
type Stats struct {
	Time   time.Time
	Source string // "cgroup" or "process"

	CPUSeconds     float64
	MemoryBytes    int64
	DiskReadBytes  int64
	DiskWriteBytes int64

	Tap          string
	NetRxBytes   int64
	NetTxBytes   int64
	NetRxPackets int64
	NetTxPackets int64

	LastActivity time.Time     // as the idle timeout counts it
	IdleTimeout  time.Duration // 0: none
	ExpiresAt    time.Time     // zero: no TTL
}

// VMStats reads a running VM's counters.
func (e *Engine) VMStats(ctx context.Context, name string) (model.VMRecord, Stats, error) {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return vm, Stats{}, err
	}
	st, ok := e.statsOf(vm)
	if !ok {
		return vm, Stats{}, errdefs.Conflict("vm %q is not running (%s): it has no counters", vm.Name, vm.Runtime.State)
	}
	return vm, st, nil
}

// RunningStats reads the counters of every running VM (for metrics).
func (e *Engine) RunningStats(ctx context.Context) map[string]Stats {
	out := map[string]Stats{}
	e.handles.mu.RLock()
	ids := make([]string, 0, len(e.handles.m))
	for id := range e.handles.m {
		ids = append(ids, id)
	}
	e.handles.mu.RUnlock()
	for _, id := range ids {
		vm, err := e.store.GetVMByID(ctx, id)
		if err != nil {
			continue
		}
		if st, ok := e.statsOf(vm); ok {
			out[vm.Name] = st
		}
	}
	return out
}

func (e *Engine) statsOf(vm model.VMRecord) (Stats, bool) {
	h, ok := e.handles.get(vm.ID)
	if !ok || h.PID == 0 || vm.Runtime.State != model.StateRunning {
		return Stats{}, false
	}
	now := e.deps.Now()
	st := Stats{Time: now.UTC(), Tap: h.TapDevice}
	if e.confined(vm) && e.deps.Cgroups != nil && e.deps.Cgroups.Exists(vm.ID) {
		u, err := e.deps.Cgroups.Stats(vm.ID)
		if err != nil {
			return Stats{}, false
		}
		st.Source = "cgroup"
		st.CPUSeconds = float64(u.CPUNanos) / 1e9
		st.MemoryBytes, st.DiskReadBytes, st.DiskWriteBytes = u.MemoryBytes, u.ReadBytes, u.WriteBytes
	} else {
		u, err := system.ReadProcUsage(h.PID)
		if err != nil {
			return Stats{}, false
		}
		st.Source = "process"
		st.CPUSeconds = float64(u.CPUNanos) / 1e9
		st.MemoryBytes, st.DiskReadBytes, st.DiskWriteBytes = u.RSSBytes, u.ReadBytes, u.WriteBytes
	}
	if h.TapDevice != "" {
		// The tap's receive is the guest's send, and the other way round.
		dir := filepath.Join(e.sysClassNet(), h.TapDevice, "statistics")
		st.NetTxBytes = readCounter(filepath.Join(dir, "rx_bytes"))
		st.NetRxBytes = readCounter(filepath.Join(dir, "tx_bytes"))
		st.NetTxPackets = readCounter(filepath.Join(dir, "rx_packets"))
		st.NetRxPackets = readCounter(filepath.Join(dir, "tx_packets"))
	}
	st.LastActivity = e.LastActivity(vm.ID).UTC()
	st.IdleTimeout = time.Duration(vm.Spec.Options.IdleTimeoutSeconds) * time.Second
	st.ExpiresAt = vm.Spec.Options.ExpiresAt
	return st, true
}

func (e *Engine) sysClassNet() string {
	if e.deps.SysClassNet != "" {
		return e.deps.SysClassNet
	}
	return "/sys/class/net"
}

func readCounter(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}
