// Package metrics is the daemon's Prometheus registry: VMs by state,
// start/stop/resume latencies (from the engine's events), how long startup
// reconcile took, API requests by route and code with their latency (told
// by the local API), and per-VM CPU, memory, disk and network counters
// (read from the engine at scrape time). The local API serves it on the
// optional metrics listener; this package serves nothing itself.
package metrics

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
)

// Engine is what the metrics read from the engine at scrape time.
type Engine interface {
	ListVMs(ctx context.Context) ([]model.VMRecord, error)
	RunningStats(ctx context.Context) map[string]engine.Stats
	ReconcileTook() time.Duration
}

// Metrics is the registry of one daemon.
type Metrics struct {
	reg *prometheus.Registry

	start, stop, resume *prometheus.HistogramVec
	requests            *prometheus.CounterVec
	requestSeconds      *prometheus.HistogramVec
}

// lifecycleBuckets cover a Firecracker start (tens of milliseconds) to a
// slow TCG boot or a stop that waits out its timeout.
var lifecycleBuckets = prometheus.ExponentialBuckets(0.01, 2, 14) // 10ms .. 82s

// New makes the registry over eng.
func New(eng Engine) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.start = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "banger_vm_start_duration_seconds", Help: "Time to start a VM, from the request to the VMM running.", Buckets: lifecycleBuckets,
	}, []string{"vmm"})
	m.stop = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "banger_vm_stop_duration_seconds", Help: "Time to stop a VM, its host objects released.", Buckets: lifecycleBuckets,
	}, []string{"vmm"})
	m.resume = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "banger_vm_resume_duration_seconds", Help: "Time to resume a suspended VM (none until VM snapshots exist).", Buckets: lifecycleBuckets,
	}, []string{"vmm"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "banger_api_requests_total", Help: "API requests by route and HTTP status code.",
	}, []string{"method", "route", "code"})
	m.requestSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "banger_api_request_duration_seconds", Help: "API request latency by route (streams last as long as they stream).",
		Buckets: prometheus.DefBuckets,
	}, []string{"method", "route"})
	reconcile := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "banger_reconcile_duration_seconds", Help: "How long the last startup reconcile took (0 until it finished).",
	}, func() float64 { return eng.ReconcileTook().Seconds() })
	m.reg.MustRegister(m.start, m.stop, m.resume, m.requests, m.requestSeconds, reconcile,
		vmCollector{eng: eng},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Gatherer is what the metrics listener serves.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Handle follows an engine event (engine.Subscribe): lifecycle latencies.
func (m *Metrics) Handle(ev engine.Event) {
	if ev.Replay || ev.Took <= 0 {
		return
	}
	vmm := ev.VM.Runtime.VMM
	switch ev.Kind {
	case engine.EventStarted:
		m.start.WithLabelValues(vmm).Observe(ev.Took.Seconds())
	case engine.EventStopped:
		m.stop.WithLabelValues(vmm).Observe(ev.Took.Seconds())
	case engine.EventResumed:
		m.resume.WithLabelValues(vmm).Observe(ev.Took.Seconds())
	}
}

// ObserveRequest counts one API request (the local API's observer).
func (m *Metrics) ObserveRequest(method, route string, code int, took time.Duration) {
	m.requests.WithLabelValues(method, route, strconv.Itoa(code)).Inc()
	m.requestSeconds.WithLabelValues(method, route).Observe(took.Seconds())
}

// vmCollector reads VM counts and per-VM counters at scrape time.
type vmCollector struct{ eng Engine }

var (
	descVMs       = prometheus.NewDesc("banger_vms", "VMs by recorded state.", []string{"state"}, nil)
	descCPU       = prometheus.NewDesc("banger_vm_cpu_seconds_total", "CPU time of a running VM (its cgroup, or its VMM process when unconfined).", []string{"vm"}, nil)
	descMemory    = prometheus.NewDesc("banger_vm_memory_bytes", "Memory of a running VM (its cgroup's usage, or its VMM's resident set when unconfined).", []string{"vm"}, nil)
	descDiskRead  = prometheus.NewDesc("banger_vm_disk_read_bytes_total", "Bytes a running VM read from storage.", []string{"vm"}, nil)
	descDiskWrite = prometheus.NewDesc("banger_vm_disk_written_bytes_total", "Bytes a running VM wrote to storage.", []string{"vm"}, nil)
	descNetRx     = prometheus.NewDesc("banger_vm_network_receive_bytes_total", "Bytes a running VM's guest received on its network device.", []string{"vm"}, nil)
	descNetTx     = prometheus.NewDesc("banger_vm_network_transmit_bytes_total", "Bytes a running VM's guest sent on its network device.", []string{"vm"}, nil)
	descNetRxPkts = prometheus.NewDesc("banger_vm_network_receive_packets_total", "Packets a running VM's guest received.", []string{"vm"}, nil)
	descNetTxPkts = prometheus.NewDesc("banger_vm_network_transmit_packets_total", "Packets a running VM's guest sent.", []string{"vm"}, nil)
)

// allStates are reported even when no VM is in them, so a count going to
// zero is seen as zero rather than as a missing series.
var allStates = []model.VMState{model.StateCreated, model.StateStarting, model.StateRunning, model.StateStopping,
	model.StateStopped, model.StateError, model.StateDeleting}

func (c vmCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descVMs, descCPU, descMemory, descDiskRead, descDiskWrite, descNetRx, descNetTx, descNetRxPkts, descNetTxPkts} {
		ch <- d
	}
}

func (c vmCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if vms, err := c.eng.ListVMs(ctx); err == nil {
		n := map[model.VMState]int{}
		for _, vm := range vms {
			n[vm.Runtime.State]++
		}
		for _, s := range allStates {
			ch <- prometheus.MustNewConstMetric(descVMs, prometheus.GaugeValue, float64(n[s]), string(s))
		}
	} else {
		ch <- prometheus.NewInvalidMetric(descVMs, err)
	}
	for name, st := range c.eng.RunningStats(ctx) {
		ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, st.CPUSeconds, name)
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(st.MemoryBytes), name)
		ch <- prometheus.MustNewConstMetric(descDiskRead, prometheus.CounterValue, float64(st.DiskReadBytes), name)
		ch <- prometheus.MustNewConstMetric(descDiskWrite, prometheus.CounterValue, float64(st.DiskWriteBytes), name)
		if st.Tap != "" {
			ch <- prometheus.MustNewConstMetric(descNetRx, prometheus.CounterValue, float64(st.NetRxBytes), name)
			ch <- prometheus.MustNewConstMetric(descNetTx, prometheus.CounterValue, float64(st.NetTxBytes), name)
			ch <- prometheus.MustNewConstMetric(descNetRxPkts, prometheus.CounterValue, float64(st.NetRxPackets), name)
			ch <- prometheus.MustNewConstMetric(descNetTxPkts, prometheus.CounterValue, float64(st.NetTxPackets), name)
		}
	}
}

// Listen says where the metrics listener of cfg is: ("", "", nil) for
// none, ("unix", path) for a socket, ("tcp", host:port) for an address. A
// TCP address must be loopback unless metrics_allow_remote is set: the
// metrics name every VM and carry no authentication.
func Listen(cfg config.Config) (network, addr string, err error) {
	a := strings.TrimSpace(cfg.MetricsListen)
	switch {
	case a == "":
		return "", "", nil
	case strings.HasPrefix(a, "unix:"):
		a = strings.TrimPrefix(a, "unix:")
		fallthrough
	case strings.HasPrefix(a, "/"):
		if !filepath.IsAbs(a) {
			return "", "", fmt.Errorf("metrics_listen %q: a unix socket needs an absolute path", cfg.MetricsListen)
		}
		return "unix", filepath.Clean(a), nil
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return "", "", fmt.Errorf("metrics_listen %q: want a unix socket path or host:port (%v)", cfg.MetricsListen, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", "", fmt.Errorf("metrics_listen %q: invalid port %q", cfg.MetricsListen, port)
	}
	if cfg.MetricsAllowRemote {
		return "tcp", a, nil
	}
	loopback := host == "localhost"
	if ip, err := netip.ParseAddr(host); err == nil {
		loopback = ip.IsLoopback()
	}
	if !loopback {
		what := host
		if what == "" {
			what = "every interface"
		}
		return "", "", fmt.Errorf("metrics_listen %q listens on %s, not a loopback address: the metrics name every VM and need no password; use 127.0.0.1 or a unix socket, or set metrics_allow_remote = true", cfg.MetricsListen, what)
	}
	return "tcp", a, nil
}
