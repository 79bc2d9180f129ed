package fcdouble

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// Snapshots as the double keeps them. Firecracker writes a VM-state file
// (its own format, with the format version) and a guest-memory file of
// exactly the VM's memory size, and a load needs both from the same
// snapshot, the drives at their recorded paths and the taps and vsock
// socket after overrides. The double's files carry what it needs to check
// all of that: the state file is one JSON document (marker, format
// version, the VM's configuration, a token), the memory file starts with a
// JSON line (marker, the same token, the memory size) and is extended,
// sparse, to the memory size.

const (
	stateMarker = "fc-double-vmstate"
	memMarker   = "fc-double-memory"
)

// snapshotState is the double's VM-state file.
type snapshotState struct {
	Marker        string        `json:"marker"`
	FormatVersion string        `json:"format_version"`
	ID            string        `json:"id"`
	Token         string        `json:"token"`
	Machine       machineConfig `json:"machine"`
	Drives        []driveConfig `json:"drives"`
	Nets          []netConfig   `json:"nets"`
	Vsock         *vsockConfig  `json:"vsock,omitempty"`
}

// memHeader is the first line of the double's memory file.
type memHeader struct {
	Marker     string `json:"marker"`
	Token      string `json:"token"`
	MemSizeMib uint64 `json:"mem_size_mib"`
}

const (
	msgCreateFailed = "Create snapshot error: Cannot save the microVM state: "
	msgLoadFailed   = "Load snapshot error: Cannot build a microVM from snapshot: "
)

func (vm *VM) createSnapshot(_ string, m map[string]json.RawMessage) response {
	if vm.state != statePaused {
		return fault("Create snapshot error: Cannot save the microVM state: save/restore unavailable while running")
	}
	statePath, _ := str(m, "snapshot_path")
	memPath, _ := str(m, "mem_file_path")
	var tok [16]byte
	_, _ = rand.Read(tok[:])
	st := snapshotState{
		Marker: stateMarker, FormatVersion: snapshotVersion, ID: vm.cfg.ID, Token: hex.EncodeToString(tok[:]),
		Machine: vm.machine, Drives: vm.drives, Nets: vm.nets, Vsock: vm.vsock,
	}
	b, _ := json.Marshal(st)
	// Both files are created or truncated, as Firecracker does.
	if err := os.WriteFile(statePath, b, 0o600); err != nil {
		return fault(msgCreateFailed + "Cannot write snapshot file: " + osErr(err))
	}
	hdr, _ := json.Marshal(memHeader{Marker: memMarker, Token: st.Token, MemSizeMib: vm.machine.MemSizeMib})
	f, err := os.OpenFile(memPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fault("Create snapshot error: Cannot write memory file: " + osErr(err))
	}
	defer f.Close()
	if _, err := f.Write(append(hdr, '\n')); err != nil {
		return fault("Create snapshot error: Cannot write memory file: " + osErr(err))
	}
	if err := f.Truncate(int64(vm.machine.MemSizeMib) << 20); err != nil {
		return fault("Create snapshot error: Cannot write memory file: " + osErr(err))
	}
	vm.logf("Info", "Snapshot created: %s, %s", statePath, memPath)
	return ok()
}

func (vm *VM) loadSnapshot(_ string, m map[string]json.RawMessage) response {
	if vm.bootSource != nil || len(vm.drives) > 0 || len(vm.nets) > 0 || vm.vsock != nil ||
		vm.balloon != nil || vm.mmdsConfig != nil || len(vm.other) > 0 {
		return fault("Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	}
	_, hasFile := m["mem_file_path"]
	_, hasBackend := m["mem_backend"]
	if hasFile == hasBackend {
		return fault("Load snapshot error: Exactly one of mem_file_path or mem_backend must be specified.")
	}
	memPath, _ := str(m, "mem_file_path")
	if hasBackend {
		var be struct {
			BackendType string `json:"backend_type"`
			BackendPath string `json:"backend_path"`
		}
		_ = json.Unmarshal(m["mem_backend"], &be)
		if be.BackendType != "File" {
			// The double serves no page faults.
			return vm.failLoad("Failed to restore from UFFD: the double supports File backends only")
		}
		memPath = be.BackendPath
	}
	snapPath, _ := str(m, "snapshot_path")
	st, msg := readSnapshotState(snapPath)
	if msg != "" {
		return vm.failLoad(msg)
	}
	if msg := checkMemFile(memPath, st); msg != "" {
		return vm.failLoad(msg)
	}
	var overrides []struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	}
	_ = json.Unmarshal(m["network_overrides"], &overrides)
	nets := append([]netConfig(nil), st.Nets...)
	for _, o := range overrides {
		found := false
		for i := range nets {
			if nets[i].IfaceID == o.IfaceID {
				nets[i].HostDevName, found = o.HostDevName, true
			}
		}
		if !found {
			return vm.failLoad(fmt.Sprintf("Invalid network override: no network interface %q in the snapshot", o.IfaceID))
		}
	}
	for _, d := range st.Drives {
		if d.PathOnHost == nil {
			continue
		}
		flag := os.O_RDWR
		if d.IsReadOnly != nil && *d.IsReadOnly {
			flag = os.O_RDONLY
		}
		f, err := os.OpenFile(*d.PathOnHost, flag, 0)
		if err != nil {
			return vm.failLoad(fmt.Sprintf("Failed to restore block device %s: %s", d.DriveID, osErr(err)))
		}
		f.Close()
	}
	for _, n := range nets {
		if err := vm.tapUsable(n.HostDevName); err != nil {
			return vm.failLoad(fmt.Sprintf("Failed to restore network device %s: Open tap device failed: %s. Invalid TUN/TAP Backend provided by %s.", n.IfaceID, osErr(err), n.HostDevName))
		}
	}
	var ln *net.UnixListener
	vs := st.Vsock
	if vs != nil {
		c := *vs
		if raw, found := m["vsock_override"]; found {
			var o struct {
				UdsPath string `json:"uds_path"`
			}
			_ = json.Unmarshal(raw, &o)
			c.UdsPath = o.UdsPath
		}
		var err error
		if ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: c.UdsPath, Net: "unix"}); err != nil {
			var errno syscall.Errno
			if !errors.As(err, &errno) {
				errno = syscall.EINVAL
			}
			return vm.failLoad("Failed to restore vsock device: Error binding to the host-side Unix socket: " + osErr(errno))
		}
		ln.SetUnlinkOnClose(false)
		vs = &c
	} else if _, found := m["vsock_override"]; found {
		return vm.failLoad("Invalid vsock override: the snapshot has no vsock device")
	}
	// Restored: the configuration comes from the snapshot; boot-source is
	// not part of it (GET /vm/config shows it empty).
	vm.machine, vm.drives, vm.nets, vm.vsock, vm.vsockLn = st.Machine, st.Drives, nets, vs, ln
	if ln != nil {
		go vm.serveVsock(ln)
	}
	vm.restored = true
	vm.clockRealtime = boolean(m, "clock_realtime")
	if boolean(m, "resume_vm") {
		vm.state = stateRunning
	} else {
		vm.state = statePaused
	}
	vm.logf("Info", "Snapshot loaded from %s", snapPath)
	fmt.Fprintf(vm.cfg.Console, "fc-double: guest restored from snapshot (%s, clock_realtime=%v)\n", vm.state, vm.clockRealtime)
	return ok()
}

// failLoad answers a failed snapshot load: 400, then the process exits 1.
func (vm *VM) failLoad(msg string) response {
	vm.exitSoon(exitGeneric)
	return fault(msgLoadFailed + msg)
}

func readSnapshotState(path string) (snapshotState, string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return snapshotState{}, "Failed to open snapshot file: " + osErr(err)
	}
	var st snapshotState
	if json.Unmarshal(b, &st) != nil || st.Marker != stateMarker {
		return snapshotState{}, "Failed to load the microVM state: Snapshot file is not a microVM state (bad magic)"
	}
	if st.FormatVersion != snapshotVersion {
		return snapshotState{}, fmt.Sprintf("Failed to load the microVM state: unsupported snapshot format version %s (this Firecracker reads %s)", st.FormatVersion, snapshotVersion)
	}
	return st, ""
}

// checkMemFile refuses a memory file that is missing, of another snapshot,
// or not exactly the snapshot's memory size (a truncated copy).
func checkMemFile(path string, st snapshotState) string {
	f, err := os.Open(path)
	if err != nil {
		return "Failed to open memory backing file: " + osErr(err)
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadBytes('\n')
	var h memHeader
	if err != nil || json.Unmarshal(line, &h) != nil || h.Marker != memMarker {
		return "Failed to load guest memory: the memory file is not a microVM memory file"
	}
	if h.Token != st.Token {
		return "Failed to load guest memory: the memory file belongs to another snapshot"
	}
	fi, err := f.Stat()
	if err != nil {
		return "Failed to load guest memory: " + osErr(err)
	}
	if want := int64(st.Machine.MemSizeMib) << 20; fi.Size() != want {
		return fmt.Sprintf("Failed to load guest memory: the memory file holds %d bytes, the snapshot's memory is %d", fi.Size(), want)
	}
	return ""
}
