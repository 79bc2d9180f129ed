package fcdouble

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// snapshotVM boots a double with a machine config, a root drive, a NIC on
// a fake tap and a vsock, pauses it and snapshots it into dir.
func snapshotVM(t *testing.T) (dir, snap, mem string) {
	t.Helper()
	taps := t.TempDir()
	for _, tap := range []string{"tap0", "tap1"} {
		os.WriteFile(filepath.Join(taps, tap), nil, 0o644)
	}
	_, sock, dir := startDouble(t, Config{NetSysDir: taps})
	bootable(t, sock, dir)
	mustNoContent(t, call(t, sock, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64}`), "machine-config")
	mustNoContent(t, call(t, sock, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:fc:00:00:00:05"}`), "net")
	mustNoContent(t, call(t, sock, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+filepath.Join(dir, "v.sock")+`"}`), "vsock")
	start(t, sock)
	snap, mem = filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	body := `{"snapshot_path":"` + snap + `","mem_file_path":"` + mem + `"}`
	if msg := faultOf(t, call(t, sock, "PUT", "/snapshot/create", body)); !strings.Contains(msg, "while running") {
		t.Fatalf("snapshot while running: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PATCH", "/vm", `{"state":"Paused"}`), "pause")
	mustNoContent(t, call(t, sock, "PUT", "/snapshot/create", body), "snapshot")
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"state":"Paused"`) {
		t.Fatalf("state after snapshot: %s", r.body)
	}
	return dir, snap, mem
}

// freshDouble is a new double process stand-in (same tap registry).
func freshDouble(t *testing.T, netSysDir string) (*VM, string, string) {
	t.Helper()
	return startDouble(t, Config{NetSysDir: netSysDir})
}

func TestSnapshotFilesHoldTheConfig(t *testing.T) {
	_, snap, mem := snapshotVM(t)
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	var st snapshotState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Marker != stateMarker || st.FormatVersion != snapshotVersion || st.Machine.VcpuCount != 2 || st.Machine.MemSizeMib != 64 ||
		len(st.Drives) != 1 || len(st.Nets) != 1 || st.Nets[0].HostDevName != "tap0" || st.Vsock == nil || st.Token == "" {
		t.Fatalf("state file: %+v", st)
	}
	fi, err := os.Stat(mem)
	if err != nil || fi.Size() != 64<<20 {
		t.Fatalf("memory file %v, %v: want the VM's 64 MiB", fi, err)
	}
	f, _ := os.Open(mem)
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadBytes('\n')
	var h memHeader
	if err := json.Unmarshal(line, &h); err != nil || h.Token != st.Token || h.Marker != memMarker {
		t.Fatalf("memory header %q (%v), state token %s", line, err, st.Token)
	}
}

func TestSnapshotLoadWithOverrides(t *testing.T) {
	dir, snap, mem := snapshotVM(t)
	taps := t.TempDir()
	os.WriteFile(filepath.Join(taps, "tap1"), nil, 0o644) // tap0 is gone: the override must be used
	vm, sock, _ := freshDouble(t, taps)
	mustNoContent(t, call(t, sock, "PUT", "/logger", `{"log_path":"`+filepath.Join(dir, "fc2.log")+`"}`), "logger (allowed before a load)")
	uds := filepath.Join(dir, "v2.sock")
	mustNoContent(t, call(t, sock, "PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`","mem_backend":{"backend_type":"File","backend_path":"`+mem+`"},`+
		`"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],"vsock_override":{"uds_path":"`+uds+`"},"clock_realtime":true}`), "load")
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"state":"Running"`) {
		t.Fatalf("state after load with resume_vm: %s", r.body)
	}
	r := call(t, sock, "GET", "/vm/config", "")
	var cfg struct {
		Machine machineConfig `json:"machine-config"`
		Nets    []netConfig   `json:"network-interfaces"`
		Boot    *bootSource   `json:"boot-source"`
	}
	if err := json.Unmarshal([]byte(r.body), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Machine.VcpuCount != 2 || cfg.Machine.MemSizeMib != 64 || len(cfg.Nets) != 1 || cfg.Nets[0].HostDevName != "tap1" ||
		cfg.Nets[0].GuestMac != "02:fc:00:00:00:05" || cfg.Boot != nil {
		t.Fatalf("config after load: %s", r.body)
	}
	if _, err := net.Dial("unix", uds); err != nil {
		t.Fatalf("vsock override socket not listening: %v", err)
	}
	if !vm.clockRealtime || !vm.restored {
		t.Errorf("clock_realtime %v, restored %v", vm.clockRealtime, vm.restored)
	}
	// Post-boot now: pre-boot calls refused, pause works, a second load refused.
	if msg := faultOf(t, call(t, sock, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`)); msg != msgAfterStart {
		t.Errorf("machine-config after a load: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PATCH", "/vm", `{"state":"Paused"}`), "pause after load")
	if msg := faultOf(t, call(t, sock, "PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`","mem_file_path":"`+mem+`"}`)); msg != msgAfterStart {
		t.Errorf("second load: %q", msg)
	}
}

func TestSnapshotLoadRefusedAfterConfiguring(t *testing.T) {
	_, snap, mem := snapshotVM(t)
	vm, sock, _ := freshDouble(t, "")
	mustNoContent(t, call(t, sock, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64}`), "machine-config")
	msg := faultOf(t, call(t, sock, "PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`","mem_file_path":"`+mem+`"}`))
	if !strings.Contains(msg, "not allowed after configuring boot-specific resources") {
		t.Fatalf("load after machine-config: %q", msg)
	}
	select {
	case code := <-vm.Exit:
		t.Fatalf("the double exited (%d) on a refused load; it should stay", code)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestSnapshotLoadFailuresExit1(t *testing.T) {
	dir, snap, mem := snapshotVM(t)
	truncated := filepath.Join(dir, "truncated.mem")
	b, _ := os.ReadFile(mem)
	os.WriteFile(truncated, b[:len(b)/2], 0o600)
	// Another snapshot's memory: same size and format, other token.
	_, _, otherMem := snapshotVM(t)
	notState := filepath.Join(dir, "not.snap")
	os.WriteFile(notState, []byte("QEVM"), 0o600)
	taps := t.TempDir()
	os.WriteFile(filepath.Join(taps, "tap0"), nil, 0o644)
	cases := map[string]struct {
		body, want string
	}{
		"missing memory":       {`{"snapshot_path":"` + snap + `","mem_file_path":"` + filepath.Join(dir, "nope") + `"}`, "Failed to open memory backing file: No such file"},
		"truncated memory":     {`{"snapshot_path":"` + snap + `","mem_file_path":"` + truncated + `"}`, "the memory file holds"},
		"other snapshot's mem": {`{"snapshot_path":"` + snap + `","mem_file_path":"` + otherMem + `"}`, "belongs to another snapshot"},
		"not a state file":     {`{"snapshot_path":"` + notState + `","mem_file_path":"` + mem + `"}`, "bad magic"},
		"unknown iface":        {`{"snapshot_path":"` + snap + `","mem_file_path":"` + mem + `","network_overrides":[{"iface_id":"eth1","host_dev_name":"tap0"}]}`, "Invalid network override"},
		"uffd":                 {`{"snapshot_path":"` + snap + `","mem_backend":{"backend_type":"Uffd","backend_path":"/x.sock"}}`, "UFFD"},
	}
	for name, tc := range cases {
		vm, sock, _ := freshDouble(t, taps)
		msg := faultOf(t, call(t, sock, "PUT", "/snapshot/load", tc.body))
		if !strings.HasPrefix(msg, "Load snapshot error") || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: fault %q, want %q", name, msg, tc.want)
		}
		select {
		case code := <-vm.Exit:
			if code != 1 {
				t.Errorf("%s: exit %d, want 1", name, code)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s: the double did not exit after a failed load", name)
		}
	}
}

func TestSnapshotLoadNeedsTheTapsWithoutOverride(t *testing.T) {
	_, snap, mem := snapshotVM(t)
	vm, sock, _ := freshDouble(t, t.TempDir()) // no taps at all
	msg := faultOf(t, call(t, sock, "PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`","mem_file_path":"`+mem+`"}`))
	if !strings.Contains(msg, "tap0") {
		t.Fatalf("load without the snapshot's tap: %q", msg)
	}
	if code := <-vm.Exit; code != 1 {
		t.Fatalf("exit %d", code)
	}
}
