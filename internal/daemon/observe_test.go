package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	pmodel "github.com/prometheus/common/model"
	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/guest/guesttest"
	"github.com/banger-dev/banger/internal/model"
)

// Events, metrics and lifetimes, through a real daemon on the Firecracker
// double.

const (
	testDisk = 64 << 20
	testWork = 32 << 20
)

func (e *testEnv) createWith(req client.CreateVMRequest, start bool) model.VMRecord {
	e.t.Helper()
	ctx := context.Background()
	req.DiskSizeBytes, req.WorkDiskBytes = testDisk, testWork
	if _, err := e.c.CreateVM(ctx, req); err != nil {
		e.t.Fatal(err)
	}
	if start {
		if _, err := e.c.StartVM(ctx, req.Name); err != nil {
			e.t.Fatal(err)
		}
	}
	vm, err := e.d.Store.GetVM(ctx, req.Name)
	if err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// eventsOf renders a VM's events as "kind/cause" lines.
func eventsOf(evs []client.Event, vm string) []string {
	var out []string
	for _, ev := range evs {
		if vm == "" || ev.VMName == vm {
			out = append(out, ev.Kind+"/"+ev.Cause)
		}
	}
	return out
}

func waitUntil(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// A full lifecycle gives the expected events in order, with causes and
// durations, as JSON from the API, and a follower sees the same live.
// Reconcile (kept, demoted), a VMM that exits on its own and gc removals
// are events too.
func TestEventsOfALifecycle(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()

	// The follower starts once the VM exists (a filter naming nothing is an
	// error); it gets the kept events first, then the rest live.
	e.createWith(client.CreateVMRequest{Name: "life"}, false)
	followCtx, stopFollowing := context.WithCancel(ctx)
	defer stopFollowing()
	var mu sync.Mutex
	var live []client.Event
	followed := make(chan error, 1)
	go func() {
		followed <- e.c.FollowEvents(followCtx, "life", func(ev client.Event) error {
			mu.Lock()
			defer mu.Unlock()
			live = append(live, ev)
			return nil
		})
	}()

	if _, err := e.c.StartVM(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StopVM(ctx, "life", client.StopRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.StartVM(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.RestartVM(ctx, "life", client.StopRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteVM(ctx, "life", true); err != nil {
		t.Fatal(err)
	}
	want := []string{"created/request", "started/request", "stopped/request", "started/request",
		"stopped/restart", "started/restart", "stopped/request", "deleted/request"}

	evs, err := e.c.Events(ctx, "life")
	if err != nil {
		t.Fatal(err)
	}
	if got := eventsOf(evs, ""); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events of life:\n%v\nwant\n%v", got, want)
	}
	for i, ev := range evs {
		if i > 0 && (ev.Seq <= evs[i-1].Seq || ev.Time.Before(evs[i-1].Time)) {
			t.Errorf("event %d (%+v) is not after the one before (%+v)", i, ev, evs[i-1])
		}
		if ev.Kind == "started" && ev.TookMillis <= 0 {
			t.Errorf("start event without a duration: %+v", ev)
		}
	}
	// The wire is JSON: an array of objects with the documented fields.
	code, body := e.raw("GET", "/v1/events?vm=life", nil)
	var raw []map[string]any
	if code != 200 || json.Unmarshal([]byte(body), &raw) != nil || len(raw) != len(want) || raw[0]["kind"] != "created" || raw[0]["vm"] != "life" {
		t.Fatalf("GET /v1/events?vm=life: %d %s", code, body)
	}
	// The follower saw the same, live.
	waitUntil(t, "the follower to see the delete", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(live) >= len(want)
	})
	mu.Lock()
	got := eventsOf(live, "")
	mu.Unlock()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("followed events of life:\n%v\nwant\n%v", got, want)
	}
	stopFollowing()
	if err := <-followed; err != nil {
		t.Errorf("follower ended with %v", err)
	}

	// Reconcile keeps a live VM, and demotes one whose VMM died while the
	// daemon was down; a VMM exiting while the daemon runs is noticed.
	e.createWith(client.CreateVMRequest{Name: "kept"}, true)
	victim := e.createWith(client.CreateVMRequest{Name: "victim"}, true)
	e.crash()
	p, _ := e.vmmProcess(victim)
	if err := p.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.createWith(client.CreateVMRequest{Name: "onlyhere"}, true) // made after startup: never reconciled
	vmm, _ := e.vmmProcess(e.mustGet("kept"))
	if err := vmm.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the exit watcher to stop kept", 10*time.Second, func() bool {
		return e.mustGet("kept").Runtime.State == model.StateStopped
	})
	// An orphan tap removed by gc.
	orphan := e.d.Engine.TapName("0badc0de0badc0de0badc0de0badc0de")
	e.net.CreateTap(ctx, orphan)
	if res, err := e.c.GC(ctx, false); err != nil || !strings.Contains(fmt.Sprint(res.Removed), orphan) {
		t.Fatalf("gc: %+v %v; want %s removed", res, err, orphan)
	}
	all, err := e.c.Events(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	keptEvents := strings.Join(eventsOf(all, "kept"), " ")
	if !strings.Contains(keptEvents, "reconciled/kept: vmm pid ") || !strings.Contains(keptEvents, "vmm-exited/pid ") ||
		!strings.HasSuffix(keptEvents, "stopped/vmm exited") {
		t.Errorf("events of kept: %s", keptEvents)
	}
	if v := strings.Join(eventsOf(all, "victim"), " "); !strings.HasSuffix(v, "reconciled/demoted: vm process was gone at daemon startup") {
		t.Errorf("events of victim: %s", v)
	}
	if strings.Contains(strings.Join(eventsOf(all, "onlyhere"), " "), "reconciled") {
		t.Errorf("a vm created after startup was reconciled: %v", eventsOf(all, "onlyhere"))
	}
	if g := eventsOf(all, ""); !strings.Contains(strings.Join(g, " "), "gc-removed/tap "+orphan) {
		t.Errorf("no gc-removed event for %s in %v", orphan, g)
	}
	// The log starts numbering where the last daemon stopped.
	if all[len(all)-1].Seq != int64(len(all)) {
		t.Errorf("sequence numbers: last %d of %d events", all[len(all)-1].Seq, len(all))
	}
	// A filter naming nothing is an error.
	if _, err := e.c.Events(ctx, "nosuch"); !client.IsNotFound(err) {
		t.Errorf("events of nosuch: %v, want not found", err)
	}
}

func (e *testEnv) mustGet(name string) model.VMRecord {
	e.t.Helper()
	vm, err := e.d.Store.GetVM(context.Background(), name)
	if err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// scrape reads the metrics listener and parses it with Prometheus' own
// text parser.
func scrape(t *testing.T, network, addr string) map[string][]metricSample {
	t.Helper()
	hc := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}}
	resp, err := hc.Get("http://metrics/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %s", resp.Status)
	}
	p := expfmt.NewTextParser(pmodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the exposition does not parse: %v", err)
	}
	out := map[string][]metricSample{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			s := metricSample{labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Gauge != nil:
				s.value = m.GetGauge().GetValue()
			case m.Counter != nil:
				s.value = m.GetCounter().GetValue()
			case m.Histogram != nil:
				s.value, s.sum = float64(m.GetHistogram().GetSampleCount()), m.GetHistogram().GetSampleSum()
			}
			out[name] = append(out[name], s)
		}
	}
	return out
}

type metricSample struct {
	labels     map[string]string
	value, sum float64
}

// find returns the sample of name whose labels include want.
func find(fams map[string][]metricSample, name string, want map[string]string) (metricSample, bool) {
next:
	for _, s := range fams[name] {
		for k, v := range want {
			if s.labels[k] != v {
				continue next
			}
		}
		return s, true
	}
	return metricSample{}, false
}

// The metrics listener serves an exposition that Prometheus parses: VM
// counts that match vm list, non-zero start and stop latencies, API
// requests by route and code, and the counters of running VMs (network
// from their tap); vm stats shows the same. A listener off loopback is
// refused without the opt-in, and nothing is started.
func TestMetrics(t *testing.T) {
	sysNet := t.TempDir()
	e := newEnvWith(t, envOpts{network: true}, func(d *Deps) { d.SysClassNet = sysNet })
	e.importImage()
	ctx := context.Background()

	e.crash()
	bad := e.cfg
	bad.MetricsListen = "0.0.0.0:0"
	if _, err := New(ctx, bad, e.deps, nil); err == nil || !strings.Contains(err.Error(), "not a loopback address") || !strings.Contains(err.Error(), "metrics_allow_remote") {
		t.Fatalf("daemon with metrics_listen 0.0.0.0:0: %v, want a clear refusal", err)
	}
	sock := filepath.Join(shortTempDir(t), "metrics.sock")
	e.cfg.MetricsListen = sock
	e.start()

	m1 := e.createWith(client.CreateVMRequest{Name: "m1"}, true)
	e.createWith(client.CreateVMRequest{Name: "m2"}, true)
	if _, err := e.c.StopVM(ctx, "m2", client.StopRequest{Force: true}); err != nil {
		t.Fatal(err)
	}
	e.createWith(client.CreateVMRequest{Name: "m3"}, false)
	if _, err := e.c.GetVM(ctx, "nosuch"); !client.IsNotFound(err) {
		t.Fatal(err)
	}
	tap := e.handles(m1).TapDevice
	if tap == "" {
		t.Fatal("m1 has no tap")
	}
	stats := filepath.Join(sysNet, tap, "statistics")
	os.MkdirAll(stats, 0o755)
	for f, v := range map[string]string{"rx_bytes": "1234", "tx_bytes": "5678", "rx_packets": "12", "tx_packets": "56"} {
		os.WriteFile(filepath.Join(stats, f), []byte(v+"\n"), 0o644)
	}

	fams := scrape(t, "unix", sock)
	vms, err := e.c.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]float64{}
	for _, vm := range vms {
		count[string(vm.Runtime.State)]++
	}
	for _, state := range []string{"created", "running", "stopped", "error", "deleting"} {
		s, ok := find(fams, "banger_vms", map[string]string{"state": state})
		if !ok || s.value != count[state] {
			t.Errorf("banger_vms{state=%q} = %v (found %v); vm list has %v", state, s.value, ok, count[state])
		}
	}
	for name, n := range map[string]float64{"banger_vm_start_duration_seconds": 2, "banger_vm_stop_duration_seconds": 1} {
		s, ok := find(fams, name, map[string]string{"vmm": "firecracker"})
		if !ok || s.value < n || s.sum <= 0 {
			t.Errorf("%s: %d samples summing to %vs (found %v); want at least %v, non-zero", name, int(s.value), s.sum, ok, n)
		}
	}
	if s, ok := find(fams, "banger_api_requests_total", map[string]string{"method": "POST", "route": "/v1/vms/{name}/start", "code": "200"}); !ok || s.value != 2 {
		t.Errorf("start requests counted %v (found %v), want 2", s.value, ok)
	}
	if s, ok := find(fams, "banger_api_requests_total", map[string]string{"method": "GET", "route": "/v1/vms/{name}", "code": "404"}); !ok || s.value != 1 {
		t.Errorf("not-found show requests counted %v (found %v), want 1", s.value, ok)
	}
	if s, ok := find(fams, "banger_api_request_duration_seconds", map[string]string{"route": "/v1/vms/{name}/start"}); !ok || s.value != 2 || s.sum <= 0 {
		t.Errorf("start request latency: %+v (found %v)", s, ok)
	}
	if _, ok := find(fams, "banger_reconcile_duration_seconds", nil); !ok {
		t.Error("no reconcile duration")
	}
	if s, ok := find(fams, "banger_vm_memory_bytes", map[string]string{"vm": "m1"}); !ok || s.value <= 0 {
		t.Errorf("memory of m1: %v (found %v)", s.value, ok)
	}
	if _, ok := find(fams, "banger_vm_cpu_seconds_total", map[string]string{"vm": "m1"}); !ok {
		t.Error("no cpu counter for m1")
	}
	if s, ok := find(fams, "banger_vm_network_transmit_bytes_total", map[string]string{"vm": "m1"}); !ok || s.value != 1234 {
		t.Errorf("bytes m1's guest sent: %v (found %v), want the tap's rx_bytes 1234", s.value, ok)
	}
	if s, ok := find(fams, "banger_vm_network_receive_packets_total", map[string]string{"vm": "m1"}); !ok || s.value != 56 {
		t.Errorf("packets m1's guest received: %v (found %v), want the tap's tx_packets 56", s.value, ok)
	}
	if _, ok := find(fams, "banger_vm_cpu_seconds_total", map[string]string{"vm": "m2"}); ok {
		t.Error("counters for the stopped m2")
	}

	st, err := e.c.VMStats(ctx, "m1")
	if err != nil || st.Source != "process" || st.MemoryBytes <= 0 || st.NetTxBytes != 1234 || st.NetRxBytes != 5678 || st.Tap != tap {
		t.Errorf("vm stats m1 = %+v, %v", st, err)
	}
	if _, err := e.c.VMStats(ctx, "m3"); !client.IsConflict(err) {
		t.Errorf("vm stats of a created vm: %v, want conflict", err)
	}

	// A loopback TCP listener serves the same.
	e.crash()
	e.cfg.MetricsListen = "127.0.0.1:0"
	e.start()
	if fams := scrape(t, "tcp", e.d.metricsListener.Addr().String()); len(fams["banger_vms"]) == 0 {
		t.Error("no banger_vms on the loopback listener")
	}
}

// A VM with a 2s TTL is gone within a few seconds (delete), or stopped
// with its TTL cleared (stop); the events say why.
func TestTTLExpires(t *testing.T) {
	e := newEnvWith(t, envOpts{network: true}, func(d *Deps) { d.LifetimeEvery = 50 * time.Millisecond })
	e.importImage()
	ctx := context.Background()
	brief := e.createWith(client.CreateVMRequest{Name: "brief", TTLSeconds: 2}, true)
	e.createWith(client.CreateVMRequest{Name: "napper", TTLSeconds: 2, TTLAction: "stop"}, true)
	if brief.Spec.Options.ExpiresAt.IsZero() || brief.Spec.Options.TTLAction != model.TTLDelete {
		t.Fatalf("brief's options %+v: want an expiry and action delete", brief.Spec.Options)
	}
	waitUntil(t, "brief to be deleted", 6*time.Second, func() bool {
		_, err := e.c.GetVM(ctx, "brief")
		return client.IsNotFound(err)
	})
	waitUntil(t, "napper to be stopped", 6*time.Second, func() bool { return e.mustGet("napper").Runtime.State == model.StateStopped })
	napper := e.mustGet("napper")
	e.assertNothingLeft(brief) // and nothing of napper's: the taps are all gone
	if !napper.Spec.Options.ExpiresAt.IsZero() || !strings.Contains(napper.Runtime.LastError, "ttl expired") {
		t.Errorf("napper after its ttl: options %+v, last error %q", napper.Spec.Options, napper.Runtime.LastError)
	}
	evs, _ := e.c.Events(ctx, "")
	if got := strings.Join(eventsOf(evs, "brief"), " "); !strings.HasSuffix(got, "ttl-expired/expired at "+brief.Spec.Options.ExpiresAt.Format(time.RFC3339)+"; action delete stopped/ttl expired deleted/ttl expired") {
		t.Errorf("events of brief: %s", got)
	}
	if got := strings.Join(eventsOf(evs, "napper"), " "); !strings.HasSuffix(got, "; action stop stopped/ttl expired") {
		t.Errorf("events of napper: %s", got)
	}
	// Started again, it lives on: the TTL was spent.
	if _, err := e.c.StartVM(ctx, "napper"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if e.mustGet("napper").Runtime.State != model.StateRunning {
		t.Error("napper stopped again after its spent ttl")
	}
}

// A TTL that expires while bangerd is down (killed, VMs left running) is
// applied when it starts again.
func TestTTLExpiresAcrossACrash(t *testing.T) {
	e := newEnvWith(t, envOpts{network: true}, func(d *Deps) { d.LifetimeEvery = 50 * time.Millisecond })
	e.importImage()
	ctx := context.Background()
	doomed := e.createWith(client.CreateVMRequest{Name: "doomed", TTLSeconds: 2}, true)
	e.crash()
	if _, ok := e.vmmProcess(doomed); !ok {
		t.Fatal("the vmm did not outlive the daemon")
	}
	time.Sleep(time.Until(doomed.Spec.Options.ExpiresAt) + 500*time.Millisecond)
	e.start()
	waitUntil(t, "doomed to be deleted after the restart", 5*time.Second, func() bool {
		_, err := e.c.GetVM(ctx, "doomed")
		return client.IsNotFound(err)
	})
	e.assertNothingLeft(doomed)
	evs, _ := e.c.Events(ctx, "doomed")
	if got := strings.Join(eventsOf(evs, ""), " "); !strings.Contains(got, "reconciled/kept") || !strings.HasSuffix(got, "deleted/ttl expired") {
		t.Errorf("events of doomed: %s", got)
	}
}

// fakeClock is a clock a test moves forward.
type fakeClock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

// idleEnv is a daemon on a clock the test moves, whose guests are one
// host SSH server (sessions under a host directory).
func idleEnv(t *testing.T) (*testEnv, *fakeClock) {
	clock := &fakeClock{}
	var srv *guesttest.Server
	var addrMu sync.Mutex
	guestDir := t.TempDir()
	e := newEnvWith(t, envOpts{}, func(d *Deps) {
		d.Now = clock.Now
		d.LifetimeEvery = 20 * time.Millisecond
		d.GuestSessionsRoot = filepath.Join(guestDir, "sessions")
		d.GuestAddr = func(model.VMRecord) string {
			addrMu.Lock()
			defer addrMu.Unlock()
			return srv.Addr
		}
	})
	key, err := os.ReadFile(e.cfg.SSHKeyPath)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	addrMu.Lock()
	srv = guesttest.Start(t, guesttest.Options{ClientKey: signer.PublicKey(), Dir: guestDir})
	addrMu.Unlock()
	e.importImage()
	return e, clock
}

// An idle timeout stops a VM nobody used for that long, not one with
// activity (an exec), counting from the daemon's start after a restart.
func TestIdleTimeout(t *testing.T) {
	e, clock := idleEnv(t)
	ctx := context.Background()
	if _, err := e.c.CreateVM(ctx, client.CreateVMRequest{Name: "quick", IdleTimeoutSeconds: 10, DiskSizeBytes: testDisk, WorkDiskBytes: testWork}); !client.IsInvalidArgument(err) {
		t.Fatalf("a 10s idle timeout: %v, want invalid argument", err)
	}
	e.createWith(client.CreateVMRequest{Name: "idle", IdleTimeoutSeconds: 60}, true)
	e.createWith(client.CreateVMRequest{Name: "used", IdleTimeoutSeconds: 60}, true)
	running := func(name string) bool { return e.mustGet(name).Runtime.State == model.StateRunning }
	settle := func() { time.Sleep(200 * time.Millisecond) } // ten reaper ticks

	clock.advance(45 * time.Second)
	settle()
	if !running("idle") || !running("used") {
		t.Fatal("a vm was stopped before its idle timeout")
	}
	exec := func(name string) {
		t.Helper()
		s, err := e.c.Exec(ctx, name, client.ExecRequest{Argv: []string{"true"}})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if code, err := s.Wait(io.Discard, io.Discard); err != nil || code != 0 {
			t.Fatalf("exec in %s: %d %v", name, code, err)
		}
	}
	exec("used")
	clock.advance(20 * time.Second) // idle: 65s without activity; used: 20s
	waitUntil(t, "idle to be stopped", 5*time.Second, func() bool { return !running("idle") })
	settle()
	if !running("used") {
		t.Fatal("a vm used 20s ago was stopped by a 60s idle timeout")
	}
	evs, _ := e.c.Events(ctx, "idle")
	if got := eventsOf(evs, ""); len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "stopped/idle timeout: no activity for 1m") {
		t.Errorf("events of idle: %v", got)
	}
	st, err := e.c.GetVM(ctx, "idle")
	if err != nil || !strings.Contains(st.Runtime.LastError, "idle timeout") {
		t.Errorf("idle's last error %q %v", st.Runtime.LastError, err)
	}

	// Activity is kept in memory: after a restart, idleness counts from the
	// daemon's start, not from the last exec before it.
	e.crash()
	clock.advance(5 * time.Minute)
	e.start()
	settle()
	if !running("used") {
		t.Fatal("used was stopped at once after a restart")
	}
	clock.advance(61 * time.Second)
	waitUntil(t, "used to be stopped a minute after the restart", 5*time.Second, func() bool { return !running("used") })
}

// The API refuses bad lifetimes and changes nothing.
func TestLifetimeBadInput(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.importImage()
	for _, body := range []string{
		`{"name":"x","ttl_seconds":-1}`,
		`{"name":"x","ttl_seconds":2678400}`, // 31 days: beyond max_ttl
		`{"name":"x","idle_timeout_seconds":29}`,
		`{"name":"x","idle_timeout_seconds":-5}`,
		`{"name":"x","ttl_seconds":60,"ttl_action":"hibernate"}`,
		`{"name":"x","ttl_seconds":60,"ttl_action":"explode"}`,
		`{"name":"x","ttl_action":"stop"}`,
		`{"name":"x","ttl_seconds":"soon"}`,
	} {
		code, out := e.raw("POST", "/v1/vms", strings.NewReader(body))
		if code != 400 || !strings.Contains(out, `"invalid_argument"`) {
			t.Errorf("create %s: %d %s, want 400 invalid_argument", body, code, out)
		}
	}
	if vms, _ := e.d.Store.ListVMs(context.Background()); len(vms) != 0 {
		t.Fatalf("bad creates left %d vms", len(vms))
	}
	e.createWith(client.CreateVMRequest{Name: "y"}, false)
	before := e.mustGet("y")
	for _, body := range []string{`{"ttl_seconds":0}`, `{"ttl_seconds":-3}`, `{"ttl_seconds":2678400}`, `{"clear":true,"ttl_seconds":5}`, `{"ttl_seconds":5,"action":"hibernate"}`} {
		code, out := e.raw("POST", "/v1/vms/y/ttl", strings.NewReader(body))
		if code != 400 {
			t.Errorf("ttl %s: %d %s, want 400", body, code, out)
		}
	}
	if after := e.mustGet("y"); fmt.Sprint(after.Spec.Options) != fmt.Sprint(before.Spec.Options) || !after.UpdatedAt.Equal(before.UpdatedAt) {
		t.Errorf("bad ttl requests changed y: %+v -> %+v", before.Spec.Options, after.Spec.Options)
	}
	if code, out := e.raw("GET", "/v1/events?vm=nosuch", nil); code != 404 {
		t.Errorf("events of nosuch: %d %s", code, out)
	}
	if code, _ := e.raw("GET", "/v1/events?follow=maybe", nil); code != 400 {
		t.Errorf("events with follow=maybe: %d", code)
	}
}

// A running session that writes output keeps its VM from idling; one that
// went quiet does not (the first look at a session's output counts as
// activity: the sizes seen before a restart are not kept).
func TestIdleTimeoutSeesSessionOutput(t *testing.T) {
	e, clock := idleEnv(t)
	ctx := context.Background()
	e.createWith(client.CreateVMRequest{Name: "worker", IdleTimeoutSeconds: 60}, true)
	e.createWith(client.CreateVMRequest{Name: "quiet", IdleTimeoutSeconds: 60}, true)
	for name, script := range map[string]string{"worker": "for i in $(seq 400); do echo tick; sleep 0.05; done", "quiet": "echo once; sleep 20"} {
		if _, err := e.c.StartSession(ctx, name, client.StartSessionRequest{Name: "job", Argv: []string{"sh", "-c", script}}); err != nil {
			t.Fatal(err)
		}
	}
	running := func(name string) bool { return e.mustGet(name).Runtime.State == model.StateRunning }
	time.Sleep(300 * time.Millisecond) // both have written
	clock.advance(61 * time.Second)
	time.Sleep(300 * time.Millisecond)
	if !running("worker") || !running("quiet") {
		t.Fatal("a vm with a running session was stopped at the first look at its output")
	}
	clock.advance(61 * time.Second)
	waitUntil(t, "quiet to be stopped", 5*time.Second, func() bool { return !running("quiet") })
	if !running("worker") {
		t.Fatal("a vm whose session keeps writing was stopped as idle")
	}
	// The stand-in guest runs sessions on this host; both end by themselves
	// within 20s, the worker's now.
	e.c.StopSession(ctx, "worker", "job", client.StopSessionRequest{Signal: "KILL"})
}

// Bad lifetime, event and metrics settings stop the daemon at start with
// an error naming the setting; the state dir is left as it was.
func TestBadSettingsRefusedAtStart(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.crash()
	for _, c := range []struct {
		set  func(c *config.Config)
		want string
	}{
		{func(c *config.Config) { c.MaxTTL = "forever" }, `max_ttl "forever"`},
		{func(c *config.Config) { c.MaxTTL = "-1h" }, `max_ttl "-1h"`},
		{func(c *config.Config) { c.EventsKeep = "0" }, `events_keep "0"`},
		{func(c *config.Config) { c.MetricsListen = "10.1.2.3:9100" }, "not a loopback address"},
		{func(c *config.Config) { c.MetricsListen = "unix:metrics.sock" }, "absolute path"},
	} {
		cfg := e.cfg
		c.set(&cfg)
		if d, err := New(context.Background(), cfg, e.deps, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			if d != nil {
				d.Close()
			}
			t.Errorf("New: %v, want an error saying %s", err, c.want)
		}
	}
	e.start() // the lock and the store were released
}

// A VM whose TTL action is suspend is suspended when it expires (its VMM
// gone, its state saved), and start resumes it.
func TestTTLSuspends(t *testing.T) {
	e := newEnvWith(t, envOpts{network: true}, func(d *Deps) { d.LifetimeEvery = 50 * time.Millisecond })
	e.importImage()
	ctx := context.Background()
	vm := e.createWith(client.CreateVMRequest{Name: "dozer", TTLSeconds: 2, TTLAction: "suspend"}, true)
	p, ok := e.vmmProcess(vm)
	if !ok {
		t.Fatal("no vmm")
	}
	waitUntil(t, "dozer to be suspended", 8*time.Second, func() bool { return e.mustGet("dozer").Runtime.State == model.StateSuspended })
	if p.Alive() {
		t.Error("the vmm of a suspended vm still runs")
	}
	if _, err := e.c.StartVM(ctx, "dozer"); err != nil {
		t.Fatal(err)
	}
	got, err := e.c.GetVM(ctx, "dozer")
	if err != nil || got.Runtime.State != model.StateRunning || got.Live == nil || !got.Live.Alive {
		t.Fatalf("after start: %s %+v %v", got.Runtime.State, got.Live, err)
	}
}
