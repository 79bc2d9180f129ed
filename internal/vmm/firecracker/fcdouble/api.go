package fcdouble

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Firecracker's instance states as GET / reports them.
const (
	stateNotStarted = "Not started"
	stateRunning    = "Running"
	statePaused     = "Paused"
)

// Version is the Firecracker release the double impersonates.
const Version = "1.16.1"

const (
	msgBeforeStart = "The requested operation is not supported before starting the microVM."
	msgAfterStart  = "The requested operation is not supported after starting the microVM."
	defaultCmdline = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"
)

// phase says when a call is allowed (src/vmm/src/rpc_interface.rs).
type phase int

const (
	preBoot phase = iota
	postBoot
	anyTime
)

// Config is how one double behaves; Main fills it from flags and environment.
type Config struct {
	ID          string
	EnablePCI   bool
	Console     io.Writer // guest serial output (firecracker's stdout)
	Log         io.Writer // firecracker's own log without a logger target
	CADDelay    time.Duration
	IgnoreCAD   bool          // the guest has no i8042: Ctrl-Alt-Del does nothing
	RebootAfter time.Duration // >0: the guest reboots by itself this long after InstanceStart
	VsockEcho   uint32        // guest port that accepts vsock connections and echoes; 0 = none
	RequestLog  string        // append one JSON line per request here; "" = off
	NetSysDir   string        // where taps are looked up; "" = the kernel, over netlink
}

// VM is the double's simulated microVM: the configuration the API built and
// the state machine. Exit receives the process exit code when the simulated
// guest reboots or a snapshot load fails.
type VM struct {
	cfg   Config
	state string
	Exit  chan int

	machine     machineConfig
	bootSource  *bootSource
	drives      []driveConfig
	nets        []netConfig
	vsock       *vsockConfig
	vsockLn     *net.UnixListener
	logger      map[string]json.RawMessage
	logFile     *os.File
	metricsPath string
	metricsFile *os.File
	balloon     map[string]json.RawMessage
	mmdsConfig  map[string]json.RawMessage
	mmds        json.RawMessage
	other       map[string]bool // boot-path resources without a model (entropy, cpu-config...)
	body        []byte          // raw body of the request being handled

	logMu    sync.Mutex
	exitOnce sync.Once
	hostPort uint32

	restored      bool // loaded from a snapshot
	clockRealtime bool // the load asked for clock_realtime
}

type machineConfig struct {
	VcpuCount       int    `json:"vcpu_count"`
	MemSizeMib      uint64 `json:"mem_size_mib"`
	Smt             bool   `json:"smt"`
	CPUTemplate     string `json:"cpu_template,omitempty"`
	TrackDirtyPages bool   `json:"track_dirty_pages"`
	HugePages       string `json:"huge_pages"`
}

type bootSource struct {
	KernelImagePath string  `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
	BootArgs        *string `json:"boot_args,omitempty"`
}

type driveConfig struct {
	DriveID      string          `json:"drive_id"`
	PathOnHost   *string         `json:"path_on_host,omitempty"`
	IsRootDevice bool            `json:"is_root_device"`
	Partuuid     *string         `json:"partuuid,omitempty"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	CacheType    string          `json:"cache_type"`
	IoEngine     string          `json:"io_engine,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	Socket       *string         `json:"socket,omitempty"`
}

type netConfig struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   string          `json:"host_dev_name"`
	GuestMac      string          `json:"guest_mac,omitempty"`
	MTU           *int            `json:"mtu,omitempty"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

type vsockConfig struct {
	GuestCID uint32 `json:"guest_cid"`
	UdsPath  string `json:"uds_path"`
}

// NewVM returns a double VM in state "Not started" with Firecracker's
// defaults (1 vCPU, 128 MiB).
func NewVM(cfg Config) *VM {
	if cfg.Console == nil {
		cfg.Console = io.Discard
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	return &VM{
		cfg:      cfg,
		state:    stateNotStarted,
		Exit:     make(chan int, 1),
		machine:  machineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: "None"},
		other:    map[string]bool{},
		hostPort: 1 << 30,
	}
}

// State returns the instance state as GET / reports it.
func (vm *VM) State() string { return vm.state }

func (vm *VM) exit(code int) {
	vm.exitOnce.Do(func() { vm.Exit <- code })
}

func ok() response { return response{status: 204} }

func fault(msg string) response { return response{status: 400, body: faultBody(msg)} }

func jsonOK(v any) response {
	b, _ := json.Marshal(v)
	return response{status: 200, body: b}
}

func serdeFault(err error) response {
	return fault("An error occurred when deserializing the json body of a request: " + err.Error() + ".")
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// Handle answers one API request. It is the whole of Firecracker's
// parsed_request.rs + rpc_interface.rs as far as the double goes.
func (vm *VM) Handle(req *request) response {
	vm.logRequest(req)
	if req.method == "GET" && len(req.body) > 0 {
		return fault("GET request cannot have a body.")
	}
	segs := strings.Split(strings.Trim(req.path, "/"), "/")
	first := segs[0]
	invalid := fault(fmt.Sprintf("Invalid request method and/or path: %s %s.", req.method, first))
	id := ""
	if len(segs) > 1 {
		id = strings.Join(segs[1:], "/")
	}
	key := req.method + " " + first
	switch first {
	case "drives", "network-interfaces", "pmem", "balloon", "mmds", "snapshot", "hotplug", "vm":
		// resources with a sub-path
	default:
		if id != "" {
			return invalid
		}
	}
	r, found := routes[key]
	if !found {
		return invalid
	}
	if r.sub != nil {
		r2, found := r.sub[id]
		if !found {
			if r.byID {
				r2 = r.sub["{id}"]
			} else {
				return invalid
			}
		}
		r = r2
	}
	if r.schema != nil && len(req.body) == 0 {
		if req.method == "PATCH" {
			return fault("Empty PATCH request.")
		}
		return fault("Empty PUT request.")
	}
	var members map[string]json.RawMessage
	if r.schema != nil {
		var err error
		if members, err = r.schema.validate(req.body); err != nil {
			return serdeFault(err)
		}
	}
	if r.byID {
		if id == "" {
			return fault("Empty ID in request.")
		}
		if !idPattern.MatchString(id) {
			return fault("API Resource IDs can only contain alphanumeric characters and underscores.")
		}
		if members != nil && r.idField != "" {
			var bodyID string
			_ = json.Unmarshal(members[r.idField], &bodyID)
			if bodyID != id {
				if first == "network-interfaces" {
					return fault(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", id, bodyID))
				}
				return fault("The id from the path does not match the id from the body!")
			}
		}
	}
	if r.check != nil {
		if msg := r.check(vm, members); msg != "" {
			return fault(msg)
		}
	}
	p := r.phase
	if r.phaseOf != nil {
		p = r.phaseOf(members)
	}
	started := vm.state != stateNotStarted
	switch {
	case p == preBoot && started:
		if r.hotplug {
			if !vm.cfg.EnablePCI {
				return fault("PCI is not enabled")
			}
			return fault("Device ID in use")
		}
		return fault(msgAfterStart)
	case p == postBoot && !started:
		return fault(msgBeforeStart)
	}
	vm.body = req.body
	resp := r.handle(vm, id, members)
	if resp.status == 204 && deprecated(members) {
		resp.deprecation = true
	}
	return resp
}

func deprecated(m map[string]json.RawMessage) bool {
	for _, k := range []string{"vsock_id", "cpu_template", "mem_file_path", "enable_diff_snapshots"} {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

// logRequest appends {"method","path","content_type","body"} to the request
// log, body as raw JSON when it parses and as a string otherwise.
func (vm *VM) logRequest(req *request) {
	if vm.cfg.RequestLog == "" {
		return
	}
	var body any
	if len(req.body) > 0 {
		if json.Valid(req.body) {
			body = json.RawMessage(req.body)
		} else {
			body = string(req.body)
		}
	}
	line, _ := json.Marshal(map[string]any{
		"method": req.method, "path": req.path, "content_type": req.contentType, "body": body,
	})
	vm.logMu.Lock()
	defer vm.logMu.Unlock()
	if fd, ok := strings.CutPrefix(vm.cfg.RequestLog, "fd:"); ok {
		// An inherited descriptor (the jailer double's, see JailerMain).
		if n, err := strconv.Atoi(fd); err == nil {
			_, _ = syscall.Write(n, append(line, '\n'))
		}
		return
	}
	f, err := os.OpenFile(vm.cfg.RequestLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

type route struct {
	phase   phase
	phaseOf func(map[string]json.RawMessage) phase
	schema  *schema
	byID    bool   // path carries an id (drives/{id}...)
	idField string // body member that must equal the path id
	hotplug bool   // post-boot PUT means PCI hotplug
	check   func(*VM, map[string]json.RawMessage) string
	handle  func(vm *VM, id string, m map[string]json.RawMessage) response
	sub     map[string]route // by sub-path ("" = none); "{id}" with byID
}

func noop(*VM, string, map[string]json.RawMessage) response { return ok() }

var routes map[string]route

func init() {
	routes = map[string]route{
		"GET ": {phase: anyTime, handle: (*VM).getInstance},
		"GET version": {phase: anyTime, handle: func(*VM, string, map[string]json.RawMessage) response {
			return jsonOK(map[string]string{"firecracker_version": Version})
		}},
		"GET machine-config": {phase: anyTime, handle: func(vm *VM, _ string, _ map[string]json.RawMessage) response { return jsonOK(vm.machine) }},
		"GET vm":             {sub: map[string]route{"config": {phase: anyTime, handle: (*VM).getVMConfig}}},
		"PUT machine-config": {phase: preBoot, schema: machineConfigSchema, handle: (*VM).putMachineConfig},
		"PATCH machine-config": {phase: preBoot, schema: machineConfigPatchSchema,
			check: func(_ *VM, m map[string]json.RawMessage) string {
				if len(m) == 0 {
					return "Empty PATCH request."
				}
				return ""
			}, handle: (*VM).patchMachineConfig},
		"PUT boot-source": {phase: preBoot, schema: bootSourceSchema, handle: (*VM).putBootSource},
		"PUT drives": {byID: true, sub: map[string]route{"{id}": {phase: preBoot, byID: true, hotplug: true,
			schema: driveSchema, idField: "drive_id", handle: (*VM).putDrive}}},
		"PATCH drives": {byID: true, sub: map[string]route{"{id}": {phase: postBoot, byID: true,
			schema: drivePatchSchema, idField: "drive_id", handle: noop}}},
		"DELETE drives": {byID: true, sub: map[string]route{"{id}": {phase: postBoot, byID: true, handle: noop}}},
		"PUT pmem": {byID: true, sub: map[string]route{"{id}": {phase: preBoot, byID: true, hotplug: true,
			schema: pmemSchema, idField: "id", handle: (*VM).putPmem}}},
		"PATCH pmem": {byID: true, sub: map[string]route{"{id}": {phase: postBoot, byID: true,
			schema: pmemPatchSchema, idField: "id", handle: noop}}},
		"DELETE pmem": {byID: true, sub: map[string]route{"{id}": {phase: postBoot, byID: true, handle: noop}}},
		"PUT network-interfaces": {byID: true, sub: map[string]route{"{id}": {phase: preBoot, byID: true, hotplug: true,
			schema: netSchema, idField: "iface_id", handle: (*VM).putNet}}},
		"PATCH network-interfaces": {byID: true, sub: map[string]route{"{id}": {phase: postBoot, byID: true,
			schema: netPatchSchema, idField: "iface_id", handle: noop}}},
		"DELETE network-interfaces": {byID: true, sub: map[string]route{"{id}": {phase: postBoot, byID: true, handle: noop}}},
		"PUT vsock":                 {phase: preBoot, schema: vsockSchema, handle: (*VM).putVsock},
		"PUT logger":                {phase: preBoot, schema: loggerSchema, handle: (*VM).putLogger},
		"PUT metrics":               {phase: preBoot, schema: metricsSchema, handle: (*VM).putMetrics},
		"PUT actions": {schema: actionSchema, phaseOf: func(m map[string]json.RawMessage) phase {
			if string(m["action_type"]) == `"InstanceStart"` {
				return preBoot
			}
			return postBoot
		}, handle: (*VM).putAction},
		"PATCH vm": {sub: map[string]route{"": {phase: postBoot, schema: vmStateSchema, handle: (*VM).patchVM}}},
		"GET balloon": {sub: map[string]route{
			"":               {phase: anyTime, handle: (*VM).getBalloon},
			"statistics":     {phase: postBoot, handle: (*VM).getBalloonStats},
			"hinting/status": {phase: postBoot, handle: (*VM).getBalloonStats},
		}},
		"PUT balloon": {sub: map[string]route{"": {phase: preBoot, schema: balloonSchema, handle: (*VM).putBalloon}}},
		"PATCH balloon": {sub: map[string]route{
			"":              {phase: postBoot, schema: balloonPatchSchema, handle: (*VM).patchBalloon},
			"statistics":    {phase: postBoot, schema: balloonStatsPatchSchema, handle: (*VM).patchBalloon},
			"hinting/start": {phase: postBoot, handle: (*VM).patchBalloon},
			"hinting/stop":  {phase: postBoot, handle: (*VM).patchBalloon},
		}},
		"PUT entropy":    {phase: preBoot, schema: entropySchema, handle: other("entropy")},
		"PUT serial":     {phase: preBoot, schema: serialSchema, handle: noop},
		"PUT cpu-config": {phase: preBoot, schema: anyObjectSchema, handle: other("cpu-config")},
		"PUT hotplug":    {sub: map[string]route{"memory": {phase: preBoot, schema: hotplugMemorySchema, handle: other("memory-hotplug")}}},
		"PATCH hotplug":  {sub: map[string]route{"memory": {phase: postBoot, schema: hotplugMemoryPatchSchema, handle: noop}}},
		"GET hotplug":    {sub: map[string]route{"memory": {phase: postBoot, handle: noop}}},
		"PUT mmds": {sub: map[string]route{
			"":       {phase: anyTime, schema: anyObjectSchema, handle: (*VM).putMMDS},
			"config": {phase: preBoot, schema: mmdsConfigSchema, handle: (*VM).putMMDSConfig},
		}},
		"PATCH mmds": {sub: map[string]route{"": {phase: anyTime, schema: anyObjectSchema, handle: (*VM).putMMDS}}},
		"GET mmds":   {sub: map[string]route{"": {phase: anyTime, handle: (*VM).getMMDS}}},
		"PUT snapshot": {sub: map[string]route{
			"create": {phase: postBoot, schema: snapshotCreateSchema, handle: (*VM).createSnapshot},
			"load":   {phase: preBoot, schema: snapshotLoadSchema, handle: (*VM).loadSnapshot},
		}},
	}
}

func other(name string) func(*VM, string, map[string]json.RawMessage) response {
	return func(vm *VM, _ string, _ map[string]json.RawMessage) response {
		vm.other[name] = true
		return ok()
	}
}

func str(m map[string]json.RawMessage, k string) (string, bool) {
	raw, found := m[k]
	if !found {
		return "", false
	}
	var s string
	_ = json.Unmarshal(raw, &s)
	return s, true
}

func boolean(m map[string]json.RawMessage, k string) bool {
	var b bool
	_ = json.Unmarshal(m[k], &b)
	return b
}

func number(m map[string]json.RawMessage, k string) (uint64, bool) {
	raw, found := m[k]
	if !found {
		return 0, false
	}
	var n uint64
	_ = json.Unmarshal(raw, &n)
	return n, true
}

// osErr renders err like Rust's io::Error Display: "<text> (os error N)".
func osErr(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		text := errno.Error()
		return strings.ToUpper(text[:1]) + text[1:] + fmt.Sprintf(" (os error %d)", int(errno))
	}
	return err.Error()
}

func (vm *VM) getInstance(string, map[string]json.RawMessage) response {
	return jsonOK(map[string]string{"id": vm.cfg.ID, "state": vm.state, "vmm_version": Version, "app_name": "Firecracker"})
}

func (vm *VM) getVMConfig(string, map[string]json.RawMessage) response {
	cfg := map[string]any{
		"balloon":            nil,
		"drives":             vm.drives,
		"boot-source":        vm.bootSource,
		"cpu-config":         nil,
		"logger":             nil,
		"machine-config":     vm.machine,
		"metrics":            nil,
		"mmds-config":        nil,
		"network-interfaces": vm.nets,
		"vsock":              vm.vsock,
		"entropy":            nil,
		"pmem":               []any{},
	}
	if vm.drives == nil {
		cfg["drives"] = []any{}
	}
	if vm.nets == nil {
		cfg["network-interfaces"] = []any{}
	}
	if vm.balloon != nil {
		cfg["balloon"] = vm.balloon
	}
	if vm.mmdsConfig != nil {
		cfg["mmds-config"] = vm.mmdsConfig
	}
	return jsonOK(cfg)
}

func (vm *VM) checkMachine(mc machineConfig) string {
	if mc.VcpuCount < 1 || mc.VcpuCount > 32 || (mc.Smt && mc.VcpuCount > 1 && mc.VcpuCount%2 == 1) {
		return "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."
	}
	if mc.MemSizeMib == 0 || (mc.HugePages == "2M" && mc.MemSizeMib%2 == 1) {
		return "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size."
	}
	if amount, found := number(vm.balloon, "amount_mib"); found && amount > mc.MemSizeMib {
		return "Machine config error: The balloon device target size is greater than the memory size."
	}
	return ""
}

func (vm *VM) applyMachine(base machineConfig, m map[string]json.RawMessage) response {
	mc := base
	if n, found := number(m, "vcpu_count"); found {
		mc.VcpuCount = int(n)
	}
	if n, found := number(m, "mem_size_mib"); found {
		mc.MemSizeMib = n
	}
	if _, found := m["smt"]; found {
		mc.Smt = boolean(m, "smt")
	}
	if _, found := m["track_dirty_pages"]; found {
		mc.TrackDirtyPages = boolean(m, "track_dirty_pages")
	}
	if s, found := str(m, "huge_pages"); found {
		mc.HugePages = s
	}
	if s, found := str(m, "cpu_template"); found {
		mc.CPUTemplate = s
		if s == "None" {
			mc.CPUTemplate = ""
		}
	}
	if msg := vm.checkMachine(mc); msg != "" {
		return fault(msg)
	}
	vm.machine = mc
	vm.other["machine-config"] = true
	return ok()
}

func (vm *VM) putMachineConfig(_ string, m map[string]json.RawMessage) response {
	// PUT resets every omitted optional to its default.
	return vm.applyMachine(machineConfig{HugePages: "None"}, m)
}

func (vm *VM) patchMachineConfig(_ string, m map[string]json.RawMessage) response {
	return vm.applyMachine(vm.machine, m)
}

func (vm *VM) putBootSource(_ string, m map[string]json.RawMessage) response {
	var bs bootSource
	bs.KernelImagePath, _ = str(m, "kernel_image_path")
	f, err := os.Open(bs.KernelImagePath)
	if err != nil {
		return fault("Boot source error: The kernel file cannot be opened: " + osErr(err))
	}
	f.Close()
	if p, found := str(m, "initrd_path"); found {
		f, err := os.Open(p)
		if err != nil {
			return fault("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. " + osErr(err))
		}
		f.Close()
		bs.InitrdPath = &p
	}
	if a, found := str(m, "boot_args"); found {
		if len(a) > 2048 {
			return fault("Boot source error: The kernel command line is invalid: Kernel command line too long")
		}
		bs.BootArgs = &a
	}
	vm.bootSource = &bs
	return ok()
}

func (vm *VM) putDrive(id string, m map[string]json.RawMessage) response {
	d := driveConfig{DriveID: id, IsRootDevice: boolean(m, "is_root_device"), CacheType: "Unsafe"}
	if s, found := str(m, "cache_type"); found {
		d.CacheType = s
	}
	if s, found := str(m, "io_engine"); found {
		d.IoEngine = s
	}
	if s, found := str(m, "partuuid"); found {
		d.Partuuid = &s
	}
	d.RateLimiter = m["rate_limiter"]
	p, hasPath := str(m, "path_on_host")
	sock, hasSock := str(m, "socket")
	switch {
	case hasPath && hasSock:
		return fault("Drive config error: Block device has both path_on_host and socket")
	case hasSock:
		d.Socket = &sock
	case hasPath:
		ro := boolean(m, "is_read_only")
		d.PathOnHost, d.IsReadOnly = &p, &ro
		flag := os.O_RDWR
		if ro {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(p, flag, 0)
		if err != nil {
			return fault(fmt.Sprintf("Drive config error: Unable to create the virtio block device: VirtioBackend(BackingFile(%s, %q))", osErr(err), p))
		}
		f.Close()
	default:
		return fault("Drive config error: Unable to create the virtio block device: missing path_on_host")
	}
	if d.IsRootDevice {
		for _, o := range vm.drives {
			if o.IsRootDevice && o.DriveID != id {
				return fault("Drive config error: A root block device already exists!")
			}
		}
	}
	for i, o := range vm.drives {
		if o.DriveID == id {
			vm.drives[i] = d
			vm.sortRootFirst()
			return ok()
		}
	}
	vm.drives = append(vm.drives, d)
	vm.sortRootFirst()
	return ok()
}

// sortRootFirst keeps the root device first: it always becomes vda.
func (vm *VM) sortRootFirst() {
	for i, d := range vm.drives {
		if d.IsRootDevice && i > 0 {
			copy(vm.drives[1:i+1], vm.drives[:i])
			vm.drives[0] = d
			return
		}
	}
}

func (vm *VM) putPmem(_ string, m map[string]json.RawMessage) response {
	p, _ := str(m, "path_on_host")
	if _, err := os.Stat(p); err != nil {
		return fault("Pmem config error: Unable to create the virtio-pmem device: " + osErr(err))
	}
	vm.other["pmem"] = true
	return ok()
}

var macPattern = regexp.MustCompile(`^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$`)

func (vm *VM) putNet(id string, m map[string]json.RawMessage) response {
	n := netConfig{IfaceID: id, RxRateLimiter: m["rx_rate_limiter"], TxRateLimiter: m["tx_rate_limiter"]}
	n.HostDevName, _ = str(m, "host_dev_name")
	if mac, found := str(m, "guest_mac"); found {
		if !macPattern.MatchString(mac) {
			return serdeFault(fmt.Errorf("invalid value: string %q, expected a MAC address", mac))
		}
		n.GuestMac = strings.ToLower(mac)
		for _, o := range vm.nets {
			if o.IfaceID != id && o.GuestMac == n.GuestMac {
				return fault("Network config error: The MAC address is already in use: " + n.GuestMac)
			}
		}
	}
	if mtu, found := number(m, "mtu"); found {
		if mtu < 68 {
			return fault(fmt.Sprintf("Network config error: Invalid MTU: %d", mtu))
		}
		v := int(mtu)
		n.MTU = &v
	}
	for _, o := range vm.nets {
		if o.IfaceID != id && o.HostDevName == n.HostDevName {
			return fault("Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Resource busy (os error 16). Invalid TUN/TAP Backend provided by " + n.HostDevName + ". Check our documentation on setting up the network devices.")
		}
	}
	if err := vm.tapUsable(n.HostDevName); err != nil {
		return fault("Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: " + osErr(err) + ". Invalid TUN/TAP Backend provided by " + n.HostDevName + ". Check our documentation on setting up the network devices.")
	}
	for i, o := range vm.nets {
		if o.IfaceID == id {
			vm.nets[i] = n
			return ok()
		}
	}
	vm.nets = append(vm.nets, n)
	return ok()
}

// tapUsable stands in for opening the tap through /dev/net/tun: the name must
// fit IFNAMSIZ and the device must exist in the double's network namespace.
func (vm *VM) tapUsable(name string) error {
	if len(name) >= 16 || name == "" || strings.Contains(name, "/") {
		return syscall.EINVAL
	}
	if vm.cfg.NetSysDir != "" {
		if _, err := os.Stat(filepath.Join(vm.cfg.NetSysDir, name)); err != nil {
			return syscall.ENODEV
		}
		return nil
	}
	// Ask the kernel over netlink, which answers for the double's own
	// network namespace (sysfs may still show the namespace it was mounted in).
	if _, err := net.InterfaceByName(name); err != nil {
		return syscall.ENODEV
	}
	return nil
}

func (vm *VM) putVsock(_ string, m map[string]json.RawMessage) response {
	var c vsockConfig
	cid, _ := number(m, "guest_cid")
	c.GuestCID = uint32(cid)
	c.UdsPath, _ = str(m, "uds_path")
	// A second PUT replaces the device and unlinks the old socket; on the
	// same path that must happen before binding.
	if vm.vsockLn != nil && vm.vsock.UdsPath == c.UdsPath {
		vm.dropVsock()
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: c.UdsPath, Net: "unix"})
	if err != nil {
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			errno = syscall.EINVAL
		}
		return fault("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: " + osErr(errno))
	}
	// Firecracker never unlinks the vsock UDS, not even at exit.
	ln.SetUnlinkOnClose(false)
	if vm.vsockLn != nil {
		vm.dropVsock()
	}
	vm.vsock, vm.vsockLn = &c, ln
	go vm.serveVsock(ln)
	return ok()
}

func (vm *VM) dropVsock() {
	vm.vsockLn.Close()
	os.Remove(vm.vsock.UdsPath)
	vm.vsockLn, vm.vsock = nil, nil
}

func openSink(path string) (*os.File, error) {
	// O_RDWR|O_NONBLOCK|O_CREAT without O_APPEND/O_TRUNC, as Firecracker does.
	return os.OpenFile(path, os.O_RDWR|syscall.O_NONBLOCK|os.O_CREATE, 0o640)
}

func (vm *VM) putLogger(_ string, m map[string]json.RawMessage) response {
	if p, found := str(m, "log_path"); found {
		f, err := openSink(p)
		if err != nil {
			return fault("Logger error: Failed to open target file: " + osErr(err))
		}
		if vm.logFile != nil {
			vm.logFile.Close()
		}
		vm.logFile = f
	}
	vm.logger = m
	vm.logf("Info", "API server received a logger configuration")
	return ok()
}

// logf writes one Firecracker-style log line to the logger target.
func (vm *VM) logf(level, format string, args ...any) {
	var w io.Writer = vm.cfg.Log
	if vm.logFile != nil {
		w = vm.logFile
	}
	ts := time.Now().Format("2006-01-02T15:04:05.000000000")
	fmt.Fprintf(w, "%s [%s:main] %s\n", ts, vm.cfg.ID, fmt.Sprintf(format, args...))
}

func (vm *VM) putMetrics(_ string, m map[string]json.RawMessage) response {
	if vm.metricsFile != nil {
		return fault("Metrics config error: Reinitialization of metrics not allowed.")
	}
	p, _ := str(m, "metrics_path")
	f, err := openSink(p)
	if err != nil {
		return fault("Metrics config error: Failed to open target file: " + osErr(err))
	}
	vm.metricsPath, vm.metricsFile = p, f
	return ok()
}

func (vm *VM) flushMetrics() {
	if vm.metricsFile == nil {
		return
	}
	// utc_timestamp_ms comes first, as in Firecracker: build the line by hand
	// because encoding/json sorts map keys.
	line := fmt.Sprintf(`{"utc_timestamp_ms":%d,"api_server":{"process_startup_time_us":0},"vmm":{"panic_count":0}}`+"\n", time.Now().UnixMilli())
	_, _ = vm.metricsFile.WriteString(line)
}

func (vm *VM) putAction(_ string, m map[string]json.RawMessage) response {
	action, _ := str(m, "action_type")
	switch action {
	case "InstanceStart":
		return vm.instanceStart()
	case "FlushMetrics":
		vm.flushMetrics()
		return ok()
	default: // SendCtrlAltDel
		if !vm.cfg.IgnoreCAD {
			delay := vm.cfg.CADDelay
			go func() {
				time.Sleep(delay)
				fmt.Fprintln(vm.cfg.Console, "reboot: Restarting system")
				vm.exit(0)
			}()
		}
		return ok()
	}
}

// Cmdline is the kernel command line the double's guest "boots" with: the
// boot_args (or Firecracker's default) plus what Firecracker appends.
func (vm *VM) Cmdline() string {
	args := defaultCmdline
	if vm.bootSource != nil && vm.bootSource.BootArgs != nil {
		args = *vm.bootSource.BootArgs
	}
	if !vm.cfg.EnablePCI {
		args += " pci=off"
	}
	for _, d := range vm.drives {
		if d.IsRootDevice {
			if d.Partuuid != nil {
				args += " root=PARTUUID=" + *d.Partuuid
			} else {
				args += " root=/dev/vda"
			}
			if d.IsReadOnly != nil && *d.IsReadOnly {
				args += " ro"
			} else {
				args += " rw"
			}
		}
	}
	n := len(vm.drives) + len(vm.nets)
	if vm.vsock != nil {
		n++
	}
	for i := 0; i < n; i++ {
		args += fmt.Sprintf(" virtio_mmio.device=4K@0x%x:%d", 0xc0001000+i*0x1000, 5+i)
	}
	return args
}

func (vm *VM) instanceStart() response {
	if vm.bootSource == nil {
		return fault("Start microvm error: Cannot start microvm without kernel configuration.")
	}
	if _, err := os.Stat(vm.bootSource.KernelImagePath); err != nil {
		return fault("Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image")
	}
	vm.state = stateRunning
	vm.logf("Info", "Successfully started microvm")
	c := vm.cfg.Console
	fmt.Fprintf(c, "[    0.000000] Linux version 6.1.0-fc-double (fc-double@banger) #1 SMP\n")
	fmt.Fprintf(c, "[    0.000000] Command line: %s\n", vm.Cmdline())
	fmt.Fprintf(c, "[    0.000000] x86/fpu: %d vCPUs, %d MiB\n", vm.machine.VcpuCount, vm.machine.MemSizeMib)
	for i, d := range vm.drives {
		fmt.Fprintf(c, "[    0.010000] virtio_blk virtio%d: [vd%c] drive %s\n", i, 'a'+i, d.DriveID)
	}
	fmt.Fprintf(c, "[    0.020000] Run /sbin/init as init process\n")
	fmt.Fprintf(c, "fc-double: guest running\n")
	if d := vm.cfg.RebootAfter; d > 0 {
		go func() {
			time.Sleep(d)
			fmt.Fprintln(c, "reboot: Restarting system")
			vm.exit(0)
		}()
	}
	return ok()
}

func (vm *VM) patchVM(_ string, m map[string]json.RawMessage) response {
	s, _ := str(m, "state")
	if s == "Paused" {
		vm.state = statePaused
	} else {
		vm.state = stateRunning
	}
	return ok()
}

func (vm *VM) getBalloon(string, map[string]json.RawMessage) response {
	if vm.balloon == nil {
		return fault("Balloon config error: No balloon device found.")
	}
	return jsonOK(vm.balloon)
}

func (vm *VM) getBalloonStats(string, map[string]json.RawMessage) response {
	if vm.balloon == nil {
		return fault("Balloon config error: No balloon device found.")
	}
	return fault("Balloon config error: Statistics for the balloon device are not enabled")
}

func (vm *VM) putBalloon(_ string, m map[string]json.RawMessage) response {
	amount, _ := number(m, "amount_mib")
	if amount > vm.machine.MemSizeMib {
		return fault("Balloon config error: Amount of pages requested cannot be greater than the memory size.")
	}
	vm.balloon = m
	return ok()
}

func (vm *VM) patchBalloon(_ string, m map[string]json.RawMessage) response {
	if vm.balloon == nil {
		return fault("Balloon config error: No balloon device found.")
	}
	if amount, found := number(m, "amount_mib"); found && amount > vm.machine.MemSizeMib {
		return fault("Balloon config error: Amount of pages requested cannot be greater than the memory size.")
	}
	return ok()
}

func (vm *VM) putMMDSConfig(_ string, m map[string]json.RawMessage) response {
	var ifaces []string
	_ = json.Unmarshal(m["network_interfaces"], &ifaces)
	if len(ifaces) == 0 {
		return fault("MMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range ifaces {
		found := false
		for _, n := range vm.nets {
			found = found || n.IfaceID == id
		}
		if !found {
			return fault("MMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	vm.mmdsConfig = m
	return ok()
}

func (vm *VM) mmdsUsable() bool {
	return vm.state == stateNotStarted || vm.mmdsConfig != nil
}

func (vm *VM) putMMDS(_ string, m map[string]json.RawMessage) response {
	if !vm.mmdsUsable() {
		return fault("The MMDS data store is not initialized.")
	}
	vm.mmds = append(json.RawMessage(nil), vm.body...)
	return ok()
}

func (vm *VM) getMMDS(string, map[string]json.RawMessage) response {
	if !vm.mmdsUsable() {
		return fault("The MMDS data store is not initialized.")
	}
	if vm.mmds == nil {
		return response{status: 200, body: []byte("{}")}
	}
	return response{status: 200, body: vm.mmds}
}

// exitSoon exits with code once the current response had time to go out:
// Firecracker answers a failed snapshot load, then exits 1.
func (vm *VM) exitSoon(code int) {
	go func() {
		time.Sleep(20 * time.Millisecond)
		vm.exit(code)
	}()
}
