// Package fcdouble is a faithful test double of the Firecracker VMM process:
// same command line, same API socket lifecycle, the same HTTP quirks
// (micro-http: no reason phrase, Content-Length only, 10 connections), the
// same strict request validation, PUT-time side effects and pre/post-boot
// state machine, with a simulated guest that "boots" by writing kernel-like
// lines to stdout. It lets banger's driver and daemon be tested without KVM.
// See docs/firecracker.md ("The double") for the behaviour it follows.
package fcdouble

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Exit codes of Firecracker (FcExitCode, src/vmm/src/lib.rs).
const (
	exitOK          = 0
	exitGeneric     = 1
	exitUnexpected  = 2
	exitBadLevel    = 152
	exitArgParsing  = 153
	exitSIGHUP      = 156
	exitAbort       = 134 // panic=abort: the shell's view of SIGABRT
	snapshotVersion = "v10.0.0"
)

// Environment variables that tune the double (never read by Firecracker).
const (
	EnvCADDelay    = "FC_DOUBLE_CAD_DELAY"       // Go duration before a honoured Ctrl-Alt-Del exits 0; default 50ms
	EnvIgnoreCAD   = "FC_DOUBLE_IGNORE_CAD"      // "1": guest without i8042, Ctrl-Alt-Del is ignored
	EnvVsockEcho   = "FC_DOUBLE_VSOCK_ECHO_PORT" // guest vsock port that accepts and echoes
	EnvRequestLog  = "FC_DOUBLE_REQUEST_LOG"     // append one JSON line per API request to this file
	EnvNetSysDir   = "FC_DOUBLE_NET_SYS_DIR"     // where taps are looked up; default: the kernel, over netlink
	EnvRebootAfter = "FC_DOUBLE_REBOOT_AFTER"    // Go duration: the guest reboots (exit 0) this long after InstanceStart
)

var valueFlags = map[string]bool{
	"api-sock": true, "id": true, "config-file": true, "log-path": true, "level": true,
	"module": true, "metrics-path": true, "metadata": true, "http-api-max-payload-size": true,
	"mmds-size-limit": true, "seccomp-filter": true, "start-time-us": true,
	"start-time-cpu-us": true, "parent-cpu-time-us": true, "describe-snapshot": true,
}

var boolFlags = map[string]bool{
	"no-api": true, "show-level": true, "show-log-origin": true, "boot-timer": true,
	"enable-pci": true, "no-seccomp": true, "version": true, "snapshot-version": true, "help": true,
}

// parseArgs mimics Firecracker's arg_parser: "--flag value" only, no
// "--flag=value", unknown or repeated flags rejected, everything after a bare
// "--" ignored.
func parseArgs(args []string) (map[string]string, string) {
	out := map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		name, isFlag := strings.CutPrefix(a, "--")
		if !isFlag || (!valueFlags[name] && !boolFlags[name]) {
			return nil, fmt.Sprintf("Found argument '%s' which wasn't expected, or isn't valid in this context.", strings.TrimLeft(a, "-"))
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Sprintf("The argument '%s' was provided more than once.", name)
		}
		if boolFlags[name] {
			out[name] = ""
			continue
		}
		if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
			return nil, fmt.Sprintf("The argument '%s' requires a value but none was supplied", name)
		}
		out[name] = args[i+1]
		i++
	}
	if _, ok := out["no-api"]; ok {
		if _, ok := out["config-file"]; !ok {
			return nil, "The argument 'no-api' requires the argument 'config-file'"
		}
	}
	_, a := out["seccomp-filter"]
	_, b := out["no-seccomp"]
	if a && b {
		return nil, "The argument 'seccomp-filter' is mutually exclusive with 'no-seccomp'"
	}
	return out, ""
}

var instanceID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)

// lockedWriter serialises writes from the API thread and timer goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Main runs the double like the firecracker binary with args (without the
// program name) and returns the exit code. Firecracker handles SIGHUP by
// exiting 156; ctx stands for it: when ctx is done, Main returns 156.
// SIGTERM and SIGINT are not handled by Firecracker, so the caller must not
// catch them either.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	out := &lockedWriter{w: stdout}
	flags, msg := parseArgs(args)
	if msg != "" {
		fmt.Fprintf(stderr, "Arguments parsing error: %s\n\nFor more information try --help.\n", msg)
		return exitArgParsing
	}
	if _, ok := flags["help"]; ok {
		fmt.Fprintln(out, "firecracker v"+Version+" (fc-double)\n\nUsage: firecracker --api-sock <path> --id <id> [--config-file <file>] [--no-api] ...")
		return exitOK
	}
	if _, ok := flags["version"]; ok {
		fmt.Fprintln(out, "Firecracker v"+Version)
		return exitOK
	}
	if _, ok := flags["snapshot-version"]; ok {
		fmt.Fprintln(out, snapshotVersion)
		return exitOK
	}
	if _, ok := flags["describe-snapshot"]; ok {
		fmt.Fprintln(out, snapshotVersion)
		return exitOK
	}
	id := "anonymous-instance"
	if v, ok := flags["id"]; ok {
		id = v
	}
	if !instanceID.MatchString(id) {
		fmt.Fprintf(stderr, "thread 'main' panicked: Invalid instance ID: %q\n", id)
		return exitAbort
	}
	if lvl, ok := flags["level"]; ok {
		switch strings.ToLower(lvl) {
		case "error", "warning", "info", "debug", "trace", "off":
		default:
			fmt.Fprintf(stderr, "Invalid value for logger level: %s\n", lvl)
			return exitBadLevel
		}
	}
	cfg := Config{
		ID:         id,
		Console:    out,
		Log:        out,
		CADDelay:   50 * time.Millisecond,
		IgnoreCAD:  os.Getenv(EnvIgnoreCAD) == "1",
		RequestLog: os.Getenv(EnvRequestLog),
		NetSysDir:  os.Getenv(EnvNetSysDir),
	}
	_, cfg.EnablePCI = flags["enable-pci"]
	if d, err := time.ParseDuration(os.Getenv(EnvCADDelay)); err == nil {
		cfg.CADDelay = d
	}
	if d, err := time.ParseDuration(os.Getenv(EnvRebootAfter)); err == nil {
		cfg.RebootAfter = d
	}
	if p, err := strconv.ParseUint(os.Getenv(EnvVsockEcho), 10, 32); err == nil {
		cfg.VsockEcho = uint32(p)
	}
	vm := NewVM(cfg)
	if p, ok := flags["log-path"]; ok {
		if r := vm.internalPut("/logger", map[string]any{"log_path": p}); r != "" {
			fmt.Fprintln(stderr, r)
			return exitGeneric
		}
	}
	if p, ok := flags["metrics-path"]; ok {
		if r := vm.internalPut("/metrics", map[string]any{"metrics_path": p}); r != "" {
			fmt.Fprintln(stderr, r)
			return exitGeneric
		}
	}

	_, noAPI := flags["no-api"]
	var ln *net.UnixListener
	if !noAPI {
		sock := "/run/firecracker.socket"
		if v, ok := flags["api-sock"]; ok {
			sock = v
		}
		// Firecracker binds without unlinking first: any existing path,
		// stale or not, is EADDRINUSE and a fatal error.
		if _, err := os.Lstat(sock); err == nil {
			vm.logf("Error", "Failed to open the API socket at: %s. Check that it is not already used.", sock)
			return exitGeneric
		}
		var err error
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			vm.logf("Error", "Failed to open the API socket at: %s. Check that it is not already used.", sock)
			return exitGeneric
		}
		ln.SetUnlinkOnClose(false) // Firecracker never removes its socket
	}

	if file, ok := flags["config-file"]; ok {
		if err := vm.bootFromConfig(file); err != nil {
			vm.logf("Error", "Building VMM configured from cmdline json failed: %s", err)
			return exitGeneric
		}
	}

	serveErr := make(chan error, 1)
	if ln != nil {
		limit := int64(defaultMaxPayload)
		if v, ok := flags["http-api-max-payload-size"]; ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				fmt.Fprintf(stderr, "Arguments parsing error: invalid --http-api-max-payload-size %q\n", v)
				return exitArgParsing
			}
			limit = n
		}
		go func() { serveErr <- serveHTTP(ln, limit, vm.Handle) }()
	}
	select {
	case code := <-vm.Exit:
		return code
	case err := <-serveErr:
		fmt.Fprintf(stderr, "API server: %v\n", err)
		return exitUnexpected
	case <-ctx.Done():
		return exitSIGHUP
	}
}

// internalPut applies a PUT as if it came from the API, without logging it,
// and returns the fault message or "".
func (vm *VM) internalPut(path string, body any) string {
	b, _ := json.Marshal(body)
	resp := vm.handleInternal(&request{method: "PUT", path: path, version: "HTTP/1.1", body: b})
	if resp.status >= 300 {
		var f struct {
			FaultMessage string `json:"fault_message"`
		}
		_ = json.Unmarshal(resp.body, &f)
		return f.FaultMessage
	}
	return ""
}

func (vm *VM) handleInternal(req *request) response {
	saved := vm.cfg.RequestLog
	vm.cfg.RequestLog = ""
	defer func() { vm.cfg.RequestLog = saved }()
	return vm.Handle(req)
}

// bootFromConfig applies a --config-file the way Firecracker's
// build_microvm_from_json does, then starts the guest.
func (vm *VM) bootFromConfig(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&top); err != nil {
		return fmt.Errorf("invalid JSON: %w", err)
	}
	known := []string{"logger", "metrics", "machine-config", "cpu-config", "boot-source", "drives",
		"network-interfaces", "vsock", "balloon", "entropy", "pmem", "memory-hotplug", "mmds-config", "serial"}
	for k := range top {
		found := false
		for _, n := range known {
			found = found || k == n
		}
		if !found {
			return fmt.Errorf("unknown field `%s`", k)
		}
	}
	if _, ok := top["boot-source"]; !ok {
		return fmt.Errorf("missing field `boot-source`")
	}
	if _, ok := top["drives"]; !ok {
		return fmt.Errorf("missing field `drives`")
	}
	put := func(path string, raw json.RawMessage) error {
		resp := vm.handleInternal(&request{method: "PUT", path: path, version: "HTTP/1.1", body: raw})
		if resp.status >= 300 {
			return fmt.Errorf("%s", resp.body)
		}
		return nil
	}
	single := []struct{ key, path string }{
		{"logger", "/logger"}, {"metrics", "/metrics"}, {"machine-config", "/machine-config"},
		{"cpu-config", "/cpu-config"}, {"boot-source", "/boot-source"},
	}
	for _, s := range single {
		if raw, ok := top[s.key]; ok && string(raw) != "null" {
			if err := put(s.path, raw); err != nil {
				return err
			}
		}
	}
	lists := []struct{ key, path, id string }{
		{"drives", "/drives/", "drive_id"}, {"network-interfaces", "/network-interfaces/", "iface_id"}, {"pmem", "/pmem/", "id"},
	}
	for _, l := range lists {
		raw, ok := top[l.key]
		if !ok || string(raw) == "null" {
			continue
		}
		var items []map[string]json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return fmt.Errorf("%s: %w", l.key, err)
		}
		for _, it := range items {
			var id string
			_ = json.Unmarshal(it[l.id], &id)
			b, _ := json.Marshal(it)
			if err := put(l.path+id, b); err != nil {
				return err
			}
		}
	}
	rest := []struct{ key, path string }{
		{"vsock", "/vsock"}, {"balloon", "/balloon"}, {"entropy", "/entropy"}, {"serial", "/serial"},
		{"memory-hotplug", "/hotplug/memory"}, {"mmds-config", "/mmds/config"},
	}
	for _, s := range rest {
		if raw, ok := top[s.key]; ok && string(raw) != "null" {
			if err := put(s.path, raw); err != nil {
				return err
			}
		}
	}
	return put("/actions", json.RawMessage(`{"action_type":"InstanceStart"}`))
}
