package fcdouble

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStateMatrix(t *testing.T) {
	_, sock, dir := startDouble(t, Config{})
	before := []struct{ method, path, body string }{
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"PUT", "/actions", `{"action_type":"FlushMetrics"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs"}`},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`},
		{"PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m"}`},
		{"PATCH", "/balloon", `{"amount_mib":1}`},
	}
	for _, c := range before {
		if msg := faultOf(t, call(t, sock, c.method, c.path, c.body)); msg != msgBeforeStart {
			t.Errorf("%s %s before start: %q", c.method, c.path, msg)
		}
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/actions", `{"action_type":"InstanceStart"}`)); msg != "Start microvm error: Cannot start microvm without kernel configuration." {
		t.Fatalf("start without kernel: %q", msg)
	}
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"state":"Not started"`) {
		t.Fatalf("failed start changed state: %s", r.body)
	}
	bootable(t, sock, dir)
	start(t, sock)
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"state":"Running"`) {
		t.Fatalf("GET / after start: %s", r.body)
	}
	after := []struct{ method, path, body string }{
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"/k"}`},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`},
		{"PATCH", "/machine-config", `{"vcpu_count":2}`},
		{"PUT", "/logger", `{"level":"Info"}`},
		{"PUT", "/metrics", `{"metrics_path":"/m"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v"}`},
		{"PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m"}`},
	}
	for _, c := range after {
		if msg := faultOf(t, call(t, sock, c.method, c.path, c.body)); msg != msgAfterStart {
			t.Errorf("%s %s after start: %q", c.method, c.path, msg)
		}
	}
	// Post-boot device PUTs are PCI hotplug.
	if msg := faultOf(t, call(t, sock, "PUT", "/drives/extra", `{"drive_id":"extra","is_root_device":false,"path_on_host":"/x"}`)); msg != "PCI is not enabled" {
		t.Errorf("hotplug without PCI: %q", msg)
	}
	// Body validation comes before the state check.
	if msg := faultOf(t, call(t, sock, "PUT", "/machine-config", `{"vcpu_count":1}`)); !strings.Contains(msg, "missing field `mem_size_mib`") {
		t.Errorf("invalid body after start: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PATCH", "/vm", `{"state":"Paused"}`), "pause")
	mustNoContent(t, call(t, sock, "PATCH", "/vm", `{"state":"Paused"}`), "pause again")
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"state":"Paused"`) {
		t.Fatalf("GET / after pause: %s", r.body)
	}
	mustNoContent(t, call(t, sock, "PATCH", "/vm", `{"state":"Resumed"}`), "resume")
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"state":"Running"`) {
		t.Fatalf("GET / after resume: %s", r.body)
	}
	mustNoContent(t, call(t, sock, "PUT", "/actions", `{"action_type":"FlushMetrics"}`), "FlushMetrics")
}

func TestStrictJSON(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	const prefix = "An error occurred when deserializing the json body of a request: "
	cases := []struct{ path, body, want string }{
		{"/machine-config", `{"vcpu_count":1,"mem_size_mib":64,"foo":1}`, "unknown field `foo`, expected one of `vcpu_count`"},
		{"/machine-config", `{"vcpu_count":1}`, "missing field `mem_size_mib`"},
		{"/machine-config", `{"vcpu_count":"1","mem_size_mib":64}`, "invalid type: string \"1\", expected u8"},
		{"/machine-config", `{"vcpu_count":300,"mem_size_mib":64}`, "invalid value: integer `300`, expected u8"},
		{"/machine-config", `{"vcpu_count":1,"mem_size_mib":64,"huge_pages":"2m"}`, "unknown variant `2m`"},
		{"/machine-config", `{"vcpu_count":1,"vcpu_count":2,"mem_size_mib":64}`, "duplicate field `vcpu_count`"},
		{"/machine-config", `[1]`, "invalid type: sequence, expected struct MachineConfig"},
		{"/actions", `{"action_type":"instancestart"}`, "unknown variant `instancestart`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`"},
		{"/boot-source", `{"kernel_image_path":null}`, "invalid type: null, expected a string"},
		{"/drives/d", `{"drive_id":"d","is_root_device":false,"rate_limiter":{"bandwidth":{"size":1}}}`, "missing field `refill_time`"},
		{"/vsock", `{"guest_cid":-1,"uds_path":"/x"}`, "invalid value: integer `-1`, expected u32"},
	}
	for _, c := range cases {
		msg := faultOf(t, call(t, sock, "PUT", c.path, c.body))
		if !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, c.want) {
			t.Errorf("PUT %s %s: %q, want %q", c.path, c.body, msg, c.want)
		}
	}
	// Logger levels are case-insensitive; /metrics tolerates unknown fields.
	mustNoContent(t, call(t, sock, "PUT", "/logger", `{"level":"warning"}`), "logger level")
	dir := shortDir(t)
	mustNoContent(t, call(t, sock, "PUT", "/metrics", `{"metrics_path":"`+filepath.Join(dir, "m.json")+`","emit_id":true}`), "metrics with a newer field")
}

func TestMachineConfigRules(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	for _, body := range []string{
		`{"vcpu_count":0,"mem_size_mib":64}`,
		`{"vcpu_count":33,"mem_size_mib":64}`,
		`{"vcpu_count":3,"mem_size_mib":64,"smt":true}`,
	} {
		if msg := faultOf(t, call(t, sock, "PUT", "/machine-config", body)); !strings.HasPrefix(msg, "Machine config error: The number of vCPUs") {
			t.Errorf("%s: %q", body, msg)
		}
	}
	for _, body := range []string{`{"vcpu_count":1,"mem_size_mib":0}`, `{"vcpu_count":1,"mem_size_mib":63,"huge_pages":"2M"}`} {
		if msg := faultOf(t, call(t, sock, "PUT", "/machine-config", body)); !strings.HasPrefix(msg, "Machine config error: The memory size") {
			t.Errorf("%s: %q", body, msg)
		}
	}
	mustNoContent(t, call(t, sock, "PUT", "/machine-config", `{"vcpu_count":32,"mem_size_mib":512,"smt":true,"track_dirty_pages":true}`), "max vcpus")
	mustNoContent(t, call(t, sock, "PATCH", "/machine-config", `{"mem_size_mib":1024}`), "patch")
	if r := call(t, sock, "GET", "/machine-config", ""); r.body != `{"vcpu_count":32,"mem_size_mib":1024,"smt":true,"track_dirty_pages":true,"huge_pages":"None"}` {
		t.Errorf("GET /machine-config after PATCH: %s", r.body)
	}
	// PUT resets the omitted optionals.
	mustNoContent(t, call(t, sock, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`), "put")
	if r := call(t, sock, "GET", "/machine-config", ""); r.body != `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}` {
		t.Errorf("GET /machine-config after PUT: %s", r.body)
	}
	if msg := faultOf(t, call(t, sock, "PATCH", "/machine-config", `{}`)); msg != "Empty PATCH request." {
		t.Errorf("empty PATCH: %q", msg)
	}
}

func TestPathIDRules(t *testing.T) {
	_, sock, dir := startDouble(t, Config{})
	disk := filepath.Join(dir, "d.img")
	os.WriteFile(disk, nil, 0o644)
	if msg := faultOf(t, call(t, sock, "PUT", "/drives/root-fs", `{"drive_id":"root-fs","is_root_device":true,"path_on_host":"`+disk+`"}`)); msg != "API Resource IDs can only contain alphanumeric characters and underscores." {
		t.Errorf("hyphenated id: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/drives/a", `{"drive_id":"b","is_root_device":true,"path_on_host":"`+disk+`"}`)); msg != "The id from the path does not match the id from the body!" {
		t.Errorf("drive id mismatch: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`)); msg != "The id from the path [eth0] does not match the id from the body [eth1]!" {
		t.Errorf("iface id mismatch: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PUT", "/drives/root_fs1", `{"drive_id":"root_fs1","is_root_device":true,"path_on_host":"`+disk+`"}`), "valid id")
}

func TestPutTimeSideEffects(t *testing.T) {
	nets := shortDir(t)
	os.Mkdir(filepath.Join(nets, "tap0"), 0o755)
	os.Mkdir(filepath.Join(nets, "tap1"), 0o755)
	_, sock, dir := startDouble(t, Config{NetSysDir: nets})

	if msg := faultOf(t, call(t, sock, "PUT", "/boot-source", `{"kernel_image_path":"`+dir+`/none"}`)); msg != "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)" {
		t.Errorf("missing kernel: %q", msg)
	}
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, nil, 0o644)
	if msg := faultOf(t, call(t, sock, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","initrd_path":"`+dir+`/none"}`)); !strings.HasPrefix(msg, "Boot source error: The initrd file cannot be opened") {
		t.Errorf("missing initrd: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":true,"path_on_host":"`+dir+`/none"}`)); !strings.HasPrefix(msg, "Drive config error: Unable to create the virtio block device") {
		t.Errorf("missing drive: %q", msg)
	}
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	os.WriteFile(a, nil, 0o644)
	os.WriteFile(b, nil, 0o644)
	mustNoContent(t, call(t, sock, "PUT", "/drives/a", `{"drive_id":"a","is_root_device":true,"path_on_host":"`+a+`"}`), "root a")
	if msg := faultOf(t, call(t, sock, "PUT", "/drives/b", `{"drive_id":"b","is_root_device":true,"path_on_host":"`+b+`"}`)); msg != "Drive config error: A root block device already exists!" {
		t.Errorf("second root: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PUT", "/drives/a", `{"drive_id":"a","is_root_device":true,"path_on_host":"`+b+`"}`), "replace root a")

	// Taps: must exist in the (fake) namespace, name < 16 bytes, not shared, MACs unique.
	if msg := faultOf(t, call(t, sock, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tapmissing"}`)); !strings.HasPrefix(msg, "Network config error: Could not create the network device") || !strings.Contains(msg, "tapmissing") {
		t.Errorf("missing tap: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0123456789abcd"}`)); !strings.HasPrefix(msg, "Network config error: Could not create the network device") {
		t.Errorf("long tap name: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:FC:00:00:00:01"}`), "eth0")
	if msg := faultOf(t, call(t, sock, "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"02:fc:00:00:00:01"}`)); msg != "Network config error: The MAC address is already in use: 02:fc:00:00:00:01" {
		t.Errorf("duplicate MAC: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0"}`)); !strings.Contains(msg, "Resource busy") {
		t.Errorf("tap used twice: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1","guest_mac":"02:fc:00:00:01"}`)); !strings.Contains(msg, "expected a MAC address") {
		t.Errorf("malformed MAC: %q", msg)
	}

	// vsock: the UDS is bound at PUT time, and an existing path is refused.
	uds := filepath.Join(dir, "v.sock")
	mustNoContent(t, call(t, sock, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+uds+`"}`), "vsock")
	if c, err := net.Dial("unix", uds); err != nil {
		t.Errorf("vsock UDS not listening: %v", err)
	} else {
		c.Close()
	}
	taken := filepath.Join(dir, "taken")
	os.WriteFile(taken, nil, 0o644)
	if msg := faultOf(t, call(t, sock, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+taken+`"}`)); !strings.Contains(msg, "Error binding to the host-side Unix socket") {
		t.Errorf("vsock on an existing path: %q", msg)
	}

	// logger and metrics files are created; metrics only once.
	logf, metrics := filepath.Join(dir, "fc.log"), filepath.Join(dir, "metrics.json")
	mustNoContent(t, call(t, sock, "PUT", "/logger", `{"log_path":"`+logf+`","level":"Info"}`), "logger")
	mustNoContent(t, call(t, sock, "PUT", "/metrics", `{"metrics_path":"`+metrics+`"}`), "metrics")
	for _, f := range []string{logf, metrics} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s not created: %v", f, err)
		}
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/metrics", `{"metrics_path":"`+metrics+`"}`)); msg != "Metrics config error: Reinitialization of metrics not allowed." {
		t.Errorf("second metrics: %q", msg)
	}

	mustNoContent(t, call(t, sock, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`), "kernel")
	r := call(t, sock, "GET", "/vm/config", "")
	for _, want := range []string{`"drives":[{"drive_id":"a","path_on_host":"` + b + `"`, `"host_dev_name":"tap0"`, `"uds_path":"` + uds + `"`} {
		if !strings.Contains(r.body, want) {
			t.Errorf("GET /vm/config lacks %s: %s", want, r.body)
		}
	}
	start(t, sock)
	mustNoContent(t, call(t, sock, "PUT", "/actions", `{"action_type":"FlushMetrics"}`), "flush")
	if data, _ := os.ReadFile(metrics); !bytes.HasPrefix(data, []byte(`{"utc_timestamp_ms":`)) {
		t.Errorf("metrics file after FlushMetrics: %q", data)
	}
}

func TestInstanceStartWritesConsoleAndCtrlAltDelExits(t *testing.T) {
	var console bytes.Buffer
	vm, sock, dir := startDouble(t, Config{Console: &lockedWriter{w: &console}, CADDelay: time.Millisecond})
	bootable(t, sock, dir)
	start(t, sock)
	mustNoContent(t, call(t, sock, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`), "ctrl-alt-del")
	if code := <-vm.Exit; code != 0 {
		t.Fatalf("exit code %d after Ctrl-Alt-Del, want 0", code)
	}
	out := console.String()
	for _, want := range []string{"Command line: console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw", "fc-double: guest running", "reboot: Restarting system"} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
}

func TestVsockConnect(t *testing.T) {
	_, sock, dir := startDouble(t, Config{VsockEcho: 52})
	uds := filepath.Join(dir, "v.sock")
	mustNoContent(t, call(t, sock, "PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+uds+`"}`), "vsock")
	c, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "CONNECT 52\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "OK 1073741824\n" {
		t.Fatalf("CONNECT 52 answered %q, %v", line, err)
	}
	io.WriteString(c, "ping\n")
	if echo, _ := br.ReadString('\n'); echo != "ping\n" {
		t.Fatalf("echo %q", echo)
	}
	// Nobody listens on 53 in the fake guest: the connection is closed.
	c2, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	io.WriteString(c2, "CONNECT 53\n")
	if b, err := io.ReadAll(c2); err != nil || len(b) != 0 {
		t.Fatalf("CONNECT 53 got %q, %v; want a closed connection", b, err)
	}
}

func TestSnapshotCreateAndLoad(t *testing.T) {
	_, sock, dir := startDouble(t, Config{})
	bootable(t, sock, dir)
	start(t, sock)
	snap, mem := filepath.Join(dir, "vm.snap"), filepath.Join(dir, "vm.mem")
	body := `{"snapshot_path":"` + snap + `","mem_file_path":"` + mem + `"}`
	if msg := faultOf(t, call(t, sock, "PUT", "/snapshot/create", body)); !strings.Contains(msg, "while running") {
		t.Fatalf("snapshot while running: %q", msg)
	}
	mustNoContent(t, call(t, sock, "PATCH", "/vm", `{"state":"Paused"}`), "pause")
	mustNoContent(t, call(t, sock, "PUT", "/snapshot/create", body), "snapshot")
	for _, f := range []string{snap, mem} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s not written: %v", f, err)
		}
	}
	_, sock2, _ := startDouble(t, Config{})
	if msg := faultOf(t, call(t, sock2, "PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`"}`)); !strings.Contains(msg, "Exactly one of") {
		t.Fatalf("load without memory: %q", msg)
	}
	mustNoContent(t, call(t, sock2, "PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`","mem_backend":{"backend_type":"File","backend_path":"`+mem+`"}}`), "load")
	if r := call(t, sock2, "GET", "/", ""); !strings.Contains(r.body, `"state":"Paused"`) {
		t.Fatalf("state after load: %s", r.body)
	}
}

func TestMMDSNeedsConfigAfterBoot(t *testing.T) {
	_, sock, dir := startDouble(t, Config{})
	mustNoContent(t, call(t, sock, "PUT", "/mmds", `{"latest":{"meta-data":{"id":"x"}}}`), "mmds pre-boot")
	if r := call(t, sock, "GET", "/mmds", ""); r.body != `{"latest":{"meta-data":{"id":"x"}}}` {
		t.Fatalf("GET /mmds: %s", r.body)
	}
	if msg := faultOf(t, call(t, sock, "PUT", "/mmds/config", `{"network_interfaces":["eth9"]}`)); !strings.HasPrefix(msg, "MMDS config error") {
		t.Fatalf("mmds config with an unknown NIC: %q", msg)
	}
	bootable(t, sock, dir)
	start(t, sock)
	if msg := faultOf(t, call(t, sock, "GET", "/mmds", "")); msg != "The MMDS data store is not initialized." {
		t.Fatalf("post-boot mmds without config: %q", msg)
	}
}

func TestGuestRebootsByItself(t *testing.T) {
	vm, sock, dir := startDouble(t, Config{RebootAfter: time.Millisecond})
	bootable(t, sock, dir)
	start(t, sock)
	if code := <-vm.Exit; code != 0 {
		t.Fatalf("exit code %d after a guest reboot", code)
	}
}
