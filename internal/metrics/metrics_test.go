package metrics

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
)

type fakeEngine struct{}

func (fakeEngine) ListVMs(context.Context) ([]model.VMRecord, error) {
	return []model.VMRecord{
		{Name: "a", Runtime: model.VMRuntime{State: model.StateRunning}},
		{Name: "b", Runtime: model.VMRuntime{State: model.StateRunning}},
		{Name: "c", Runtime: model.VMRuntime{State: model.StateStopped}},
	}, nil
}

func (fakeEngine) RunningStats(context.Context) map[string]engine.Stats {
	return map[string]engine.Stats{
		"a": {CPUSeconds: 1.5, MemoryBytes: 1 << 20, DiskReadBytes: 10, DiskWriteBytes: 20, Tap: "bgr1", NetRxBytes: 30, NetTxBytes: 40},
		"b": {CPUSeconds: 0.25},
	}
}

func (fakeEngine) ReconcileTook() time.Duration { return 1500 * time.Millisecond }

// The exposition parses as Prometheus text and holds what the engine and
// the API reported.
func TestExposition(t *testing.T) {
	m := New(fakeEngine{})
	m.Handle(engine.Event{Kind: engine.EventStarted, VM: model.VMRecord{Runtime: model.VMRuntime{VMM: "firecracker"}}, Took: 200 * time.Millisecond})
	m.Handle(engine.Event{Kind: engine.EventStarted, Replay: true, Took: time.Hour}) // reconcile's re-announcement: not a start
	m.ObserveRequest("GET", "/v1/vms", 200, 3*time.Millisecond)
	m.ObserveRequest("GET", "/v1/vms", 200, 3*time.Millisecond)
	m.ObserveRequest("GET", "/v1/vms/{name}", 404, time.Millisecond)
	mfs, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	p := expfmt.NewTextParser(pmodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, labels map[string]string) (float64, bool) {
		f := fams[name]
		if f == nil {
			return 0, false
		}
	next:
		for _, mt := range f.GetMetric() {
			have := map[string]string{}
			for _, lp := range mt.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case mt.Gauge != nil:
				return mt.GetGauge().GetValue(), true
			case mt.Counter != nil:
				return mt.GetCounter().GetValue(), true
			case mt.Histogram != nil:
				return float64(mt.GetHistogram().GetSampleCount()), true
			}
		}
		return 0, false
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"banger_vms", map[string]string{"state": "running"}, 2},
		{"banger_vms", map[string]string{"state": "stopped"}, 1},
		{"banger_vms", map[string]string{"state": "error"}, 0},
		{"banger_vm_cpu_seconds_total", map[string]string{"vm": "a"}, 1.5},
		{"banger_vm_memory_bytes", map[string]string{"vm": "a"}, 1 << 20},
		{"banger_vm_disk_written_bytes_total", map[string]string{"vm": "a"}, 20},
		{"banger_vm_network_transmit_bytes_total", map[string]string{"vm": "a"}, 40},
		{"banger_vm_start_duration_seconds", map[string]string{"vmm": "firecracker"}, 1},
		{"banger_reconcile_duration_seconds", nil, 1.5},
		{"banger_api_requests_total", map[string]string{"route": "/v1/vms", "code": "200"}, 2},
		{"banger_api_requests_total", map[string]string{"route": "/v1/vms/{name}", "code": "404"}, 1},
		{"banger_api_request_duration_seconds", map[string]string{"route": "/v1/vms", "method": "GET"}, 2},
	} {
		if got, ok := value(c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if _, ok := value("banger_vm_network_receive_bytes_total", map[string]string{"vm": "b"}); ok {
		t.Error("network counters of a vm without a tap")
	}
}

func TestListen(t *testing.T) {
	for in, want := range map[string]string{
		"":                   "",
		"/run/banger/m.sock": "unix /run/banger/m.sock",
		"unix:/tmp/m.sock":   "unix /tmp/m.sock",
		"127.0.0.1:9100":     "tcp 127.0.0.1:9100",
		"[::1]:9100":         "tcp [::1]:9100",
		"localhost:9100":     "tcp localhost:9100",
	} {
		n, a, err := Listen(config.Config{MetricsListen: in})
		if got := strings.TrimSpace(n + " " + a); err != nil || got != want {
			t.Errorf("Listen(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for in, why := range map[string]string{
		"0.0.0.0:9100":     "not a loopback",
		":9100":            "every interface",
		"192.168.1.5:9100": "metrics_allow_remote",
		"unix:relative":    "absolute",
		"nonsense":         "host:port",
		"127.0.0.1:99999":  "invalid port",
	} {
		if _, _, err := Listen(config.Config{MetricsListen: in}); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("Listen(%q) = %v, want an error saying %q", in, err, why)
		}
	}
	if n, a, err := Listen(config.Config{MetricsListen: "0.0.0.0:9100", MetricsAllowRemote: true}); err != nil || n != "tcp" || a != "0.0.0.0:9100" {
		t.Errorf("remote listener with the opt-in: %s %s %v", n, a, err)
	}
}
