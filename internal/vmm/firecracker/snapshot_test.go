package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

// withTaps lets the double find taps by name in a directory (no root
// needed) and gives m one of them.
func withTaps(t *testing.T, m vmm.Machine, tap string, all ...string) vmm.Machine {
	t.Helper()
	dir := t.TempDir()
	for _, name := range append(all, tap) {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(fcdouble.EnvNetSysDir, dir)
	m.TapDevice, m.GuestMAC = tap, "02:fc:00:00:00:02"
	return m
}

// snapshotted launches m, pauses it and snapshots it; it returns the
// files, the info and the still-paused process.
func snapshotted(t *testing.T, d *Driver, m vmm.Machine) (state, mem string, info SnapshotInfo, p system.Process) {
	t.Helper()
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	dir := filepath.Dir(m.APISock)
	state, mem = filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	if _, err := d.CreateSnapshot(ctx, m, p, state, mem); err == nil || !strings.Contains(err.Error(), "while running") {
		t.Fatalf("CreateSnapshot of a running VM: %v, want Firecracker's refusal", err)
	}
	if err := d.Pause(ctx, m, p); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := d.Pause(ctx, m, p); err != nil {
		t.Fatalf("second Pause: %v", err)
	}
	info, err = d.CreateSnapshot(ctx, m, p, state, mem)
	if err != nil {
		t.Fatalf("CreateSnapshot: %v", err)
	}
	return state, mem, info, p
}

func TestSnapshotSuspendAndRestore(t *testing.T) {
	d, m := newMachine(t)
	m = withTaps(t, m, "tapsrc", "tapnew")
	ctx := context.Background()
	state, mem, info, p := snapshotted(t, d, m)
	if info.Version != fcdouble.Version || info.MemSize != int64(m.MemoryMiB)<<20 || info.StateSize == 0 {
		t.Fatalf("SnapshotInfo = %+v", info)
	}
	// Suspend: the process ends; its memory lives in the file.
	if err := d.Shutdown(ctx, m, p, time.Second, true); err != nil {
		t.Fatal(err)
	}

	// Restore as another tap and vsock socket (a clone would also have
	// other sockets and id).
	r := m
	r.TapDevice = "tapnew"
	r.VSockPath = filepath.Join(filepath.Dir(m.APISock), "vsock2.sock")
	r.Incoming = &vmm.Incoming{File: state, MemFile: mem, VMMVersion: info.Version}
	p2, err := d.Launch(ctx, r)
	if err != nil {
		t.Fatalf("restoring Launch: %v", err)
	}
	if err := d.Identify(ctx, r, p2); err != nil {
		t.Fatalf("Identify after restore: %v", err)
	}
	c := newAPIClient(r.APISock)
	defer c.close()
	if got, err := c.describe(ctx); err != nil || got.State != "Running" {
		t.Fatalf("GET / = %+v, %v; want Running", got, err)
	}
	var cfg struct {
		Nets []struct {
			HostDevName string `json:"host_dev_name"`
		} `json:"network-interfaces"`
		Vsock struct {
			UdsPath string `json:"uds_path"`
		} `json:"vsock"`
	}
	if err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Nets) != 1 || cfg.Nets[0].HostDevName != "tapnew" || cfg.Vsock.UdsPath != r.VSockPath {
		t.Errorf("restored config %+v: want the overrides (tapnew, %s)", cfg, r.VSockPath)
	}
	if _, err := os.Stat(r.VSockPath); err != nil {
		t.Errorf("vsock socket at the override path: %v", err)
	}
	if console := readFile(t, r.ConsoleLog); !strings.Contains(console, "restored from snapshot (Running, clock_realtime=true)") {
		t.Errorf("console lacks the restore line:\n%s", console)
	}
	// Pause and Resume work on the restored VM.
	if err := d.Pause(ctx, r, p2); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.describe(ctx); got.State != "Paused" {
		t.Errorf("state %q after Pause", got.State)
	}
	if err := d.Resume(ctx, r, p2); err != nil {
		t.Fatal(err)
	}
	if got, _ := c.describe(ctx); got.State != "Running" {
		t.Errorf("state %q after Resume", got.State)
	}
	if err := d.Shutdown(ctx, r, p2, time.Second, true); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotRestoreFailuresLeaveNothing(t *testing.T) {
	d, m := newMachine(t)
	ctx := context.Background()
	state, mem, info, p := snapshotted(t, d, m)
	if err := d.Shutdown(ctx, m, p, time.Second, true); err != nil {
		t.Fatal(err)
	}
	truncated := mem + ".cut"
	if err := os.WriteFile(truncated, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		in   vmm.Incoming
		want string
	}{
		"other version":  {vmm.Incoming{File: state, MemFile: mem, VMMVersion: "v1.15.0"}, "made by Firecracker v1.15.0"},
		"truncated mem":  {vmm.Incoming{File: state, MemFile: truncated, VMMVersion: info.Version}, "firecracker exited"},
		"no memory file": {vmm.Incoming{File: state}, "memory file"},
	}
	for name, tc := range cases {
		r := m
		r.Incoming = &tc.in
		_, err := d.Launch(ctx, r)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Launch = %v, want %q", name, err, tc.want)
		}
		if name == "other version" && !errors.Is(err, ErrSnapshotMismatch) {
			t.Errorf("%s: %v is not ErrSnapshotMismatch", name, err)
		}
		if q, ok := d.FindProcess(r); ok {
			t.Errorf("%s: firecracker pid %d left running", name, q.PID)
		}
		for _, s := range []string{r.APISock, r.VSockPath} {
			if _, err := os.Stat(s); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: socket %s left behind", name, s)
			}
		}
	}
}

func TestSnapshotCallsRefuseAnotherProcess(t *testing.T) {
	d, m := newMachine(t)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	other := m
	other.ID = "fedcba9876543210"
	if err := d.Pause(ctx, other, p); err == nil {
		t.Error("Pause acted on a process whose --id is another VM's")
	}
	if _, err := d.CreateSnapshot(ctx, other, p, filepath.Join(t.TempDir(), "s"), filepath.Join(t.TempDir(), "m")); err == nil {
		t.Error("CreateSnapshot acted on another VM's process")
	}
	if got, _ := newAPIClient(m.APISock).describe(ctx); got.State != "Running" {
		t.Errorf("state %q: the VM was touched", got.State)
	}
}

func TestVersionAtLeast(t *testing.T) {
	for v, want := range map[string]bool{
		"1.16.1": true, "v1.16.0": true, "1.17.0-dev": true, "2.0.0": true,
		"1.15.9": false, "v1.12.0": false, "0.99": false, "garbage": false, "1.x": false,
	} {
		if got := versionAtLeast(v, 1, 16); got != want {
			t.Errorf("versionAtLeast(%q, 1.16) = %v", v, got)
		}
	}
}

// TestContractSnapshot runs pause, snapshot, resume, then a restore in a
// fresh process through the double with the request log on, validates
// every request against Firecracker's swagger file and compares the
// changing ones with a golden file.
func TestContractSnapshot(t *testing.T) {
	router := swaggerRouter(t)
	d, m := newMachine(t)
	dir := filepath.Dir(m.APISock)
	logPath := filepath.Join(dir, "requests.jsonl")
	t.Setenv(fcdouble.EnvRequestLog, logPath)
	ctx := context.Background()
	state, mem, info, p := snapshotted(t, d, m)
	if err := d.Resume(ctx, m, p); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(ctx, m, p, time.Second, true); err != nil {
		t.Fatal(err)
	}
	r := m
	r.Incoming = &vmm.Incoming{File: state, MemFile: mem, VMMVersion: info.Version}
	p2, err := d.Launch(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(ctx, r, p2, time.Second, true); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var golden strings.Builder
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var lr loggedRequest
		if err := json.Unmarshal(sc.Bytes(), &lr); err != nil {
			t.Fatal(err)
		}
		validateAgainstSwagger(t, router, lr)
		seen[lr.Method+" "+lr.Path] = true
		if lr.Method == http.MethodGet {
			continue
		}
		golden.WriteString(lr.Method + " " + lr.Path + "\n" + strings.ReplaceAll(string(lr.Body), dir, "$DIR") + "\n\n")
	}
	for _, want := range []string{"PATCH /vm", "PUT /snapshot/create", "PUT /snapshot/load", "GET /version"} {
		if !seen[want] {
			t.Errorf("no %s request logged", want)
		}
	}
	checkGolden(t, "snapshot.txt", golden.String())
}

// TestContractLoadCalls validates the restore calls with a tap and a vsock
// (the double's tap checks need root in the launch test) and checks that
// fields a version lacks are not sent.
func TestContractLoadCalls(t *testing.T) {
	router := swaggerRouter(t)
	_, m := newMachine(t)
	m.TapDevice = "tap-clone1"
	m.Incoming = &vmm.Incoming{File: "/snap/vm.state", MemFile: "/snap/vm.mem"}
	for version, want := range map[string][]string{
		"1.16.1": {`"network_overrides":[{"host_dev_name":"tap-clone1","iface_id":"eth0"}]`, `"vsock_override":{"uds_path":`, `"clock_realtime":true`},
		"1.12.0": {`"network_overrides"`},
		"1.11.0": {},
	} {
		calls := loadCalls(m, version)
		load := calls[len(calls)-1]
		body, err := json.Marshal(load.body)
		if err != nil {
			t.Fatal(err)
		}
		validateAgainstSwagger(t, router, loggedRequest{Method: http.MethodPut, Path: load.path, ContentType: "application/json", Body: body})
		for _, w := range want {
			if !strings.Contains(string(body), w) {
				t.Errorf("%s: load body %s lacks %s", version, body, w)
			}
		}
		for _, field := range []string{"network_overrides", "vsock_override", "clock_realtime"} {
			sent := strings.Contains(string(body), `"`+field+`"`)
			expected := false
			for _, w := range want {
				expected = expected || strings.Contains(w, field)
			}
			if sent != expected {
				t.Errorf("%s: %s sent = %v, want %v (%s)", version, field, sent, expected, body)
			}
		}
		if !strings.Contains(string(body), `"resume_vm":true`) || !strings.Contains(string(body), `"backend_type":"File"`) {
			t.Errorf("%s: load body %s", version, body)
		}
	}
}

// TestSwaggerCheckRejectsSnapshotRequests proves the validator bites on the
// snapshot requests too.
func TestSwaggerCheckRejectsSnapshotRequests(t *testing.T) {
	router := swaggerRouter(t)
	bad := []loggedRequest{
		{Method: "PUT", Path: "/snapshot/create", ContentType: "application/json", Body: json.RawMessage(`{"snapshot_path":"/s"}`)},
		{Method: "PUT", Path: "/snapshot/create", ContentType: "application/json", Body: json.RawMessage(`{"snapshot_path":"/s","mem_file_path":"/m","snapshot_type":"Incremental"}`)},
		{Method: "PATCH", Path: "/vm", ContentType: "application/json", Body: json.RawMessage(`{"state":"Running"}`)},
		{Method: "PUT", Path: "/snapshot/load", ContentType: "application/json", Body: json.RawMessage(`{"mem_file_path":"/m"}`)},
		{Method: "PUT", Path: "/snapshot/load", ContentType: "application/json", Body: json.RawMessage(`{"snapshot_path":"/s","mem_backend":{"backend_type":"File"}}`)},
		{Method: "PUT", Path: "/snapshot/load", ContentType: "application/json", Body: json.RawMessage(`{"snapshot_path":"/s","network_overrides":[{"iface_id":"eth0"}]}`)},
		{Method: "PUT", Path: "/snapshot/load", ContentType: "application/json", Body: json.RawMessage(`{"snapshot_path":"/s","clock_realtime":"yes"}`)},
	}
	for _, r := range bad {
		if err := swaggerCheck(router, r); err == nil {
			t.Errorf("%s %s %s accepted by the swagger check", r.Method, r.Path, r.Body)
		}
	}
}
