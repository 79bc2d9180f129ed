package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
)

// view shows a VM with its live facts.
func (s *Server) view(ctx context.Context, vm model.VMRecord, full bool) api.VM {
	out := api.VM{VMRecord: vm}
	if l := s.eng.Live(ctx, vm, full); l != nil {
		out.Live = &api.LiveFacts{Alive: l.Alive, Handles: l.Handles, Reason: l.Reason}
	}
	if full {
		c := s.eng.Confinement(vm)
		out.Confinement = &api.Confinement{Confined: c.Confined, Reason: c.Reason, UID: c.UID, Cgroup: c.Cgroup,
			MemoryLimitBytes: c.Limits.MemoryBytes, PidsLimit: c.Limits.Pids, CPUWeight: c.Limits.CPUWeight,
			CPUQuota: c.Limits.CPUQuota, IOWeight: c.Limits.IOWeight, Jail: c.Jail, Seccomp: c.Seccomp, Network: c.Net}
	}
	return out
}

func (s *Server) vmList(w http.ResponseWriter, r *http.Request) error {
	if err := s.list.load(r.Context(), s.eng.ListVMs); err != nil {
		return err
	}
	// Cached entries are written as they are; only VMs with a runtime get
	// their live facts computed. The bytes equal encoding []api.VM.
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteByte('[')
	n := 0
	err := s.list.each(func(e *listEntry) error {
		b := e.json
		if e.running || s.eng.HasRuntime(e.id) {
			var v api.VM
			if err := json.Unmarshal(e.json, &v); err != nil {
				return err
			}
			var err error
			if b, err = json.Marshal(s.view(r.Context(), v.VMRecord, false)); err != nil {
				return err
			}
		}
		if n > 0 {
			bw.WriteByte(',')
		}
		n++
		_, err := bw.Write(b)
		return err
	})
	if err != nil {
		return nil // the client went away; the status is already sent
	}
	bw.WriteString("]\n")
	bw.Flush()
	if n >= bigListVMs {
		releaseMemory()
	}
	return nil
}

func (s *Server) vmCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateVMRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	life, err := lifetimeOf(req)
	if err != nil {
		return err
	}
	vm, err := s.eng.CreateVM(r.Context(), engine.CreateSpec{
		Name: req.Name, Image: req.Image, VMM: req.VMM, VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB,
		DiskSizeBytes: req.DiskSizeBytes, WorkDiskBytes: req.WorkDiskBytes, Ports: req.Ports,
		Options: model.VMOptions{Unconfined: req.Unconfined, CPUQuota: req.CPUQuota, From: req.From, Net: model.NetPolicy{
			Isolated: req.Isolated, AllowHost: req.AllowHost, EgressAllow: req.EgressAllow, EgressDeny: req.EgressDeny}},
		Lifetime: life,
	})
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, s.view(r.Context(), vm, false))
}

func (s *Server) vmShow(w http.ResponseWriter, r *http.Request) error {
	vm, err := s.eng.GetVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, true))
}

func (s *Server) vmDelete(w http.ResponseWriter, r *http.Request) error {
	force, err := api.ParseBoolParam(r.URL.Query(), "force")
	if err != nil {
		return err
	}
	if err := s.eng.DeleteVM(r.Context(), r.PathValue("name"), force); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

func (s *Server) vmStart(w http.ResponseWriter, r *http.Request) error {
	vm, err := s.eng.StartVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	out := s.view(r.Context(), vm, true)
	if vm.Runtime.Accel == "tcg" {
		out.Warnings = append(out.Warnings, "no usable /dev/kvm: QEMU runs this VM under software emulation (TCG), which is slow")
	}
	return writeJSON(w, out)
}

// decodeStop reads a stop (or restart) request and its timeout (default 10s).
func decodeStop(r *http.Request) (api.StopRequest, time.Duration, error) {
	var req api.StopRequest
	if err := decode(r, &req, true); err != nil {
		return req, 0, err
	}
	switch {
	case req.TimeoutSeconds < 0:
		return req, 0, errdefs.Invalid("invalid timeout %ds", req.TimeoutSeconds)
	case req.TimeoutSeconds == 0:
		return req, 10 * time.Second, nil
	}
	return req, time.Duration(req.TimeoutSeconds) * time.Second, nil
}

func (s *Server) vmStop(w http.ResponseWriter, r *http.Request) error {
	req, timeout, err := decodeStop(r)
	if err != nil {
		return err
	}
	vm, err := s.eng.StopVM(r.Context(), r.PathValue("name"), req.Force, timeout)
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, false))
}

func (s *Server) vmRestart(w http.ResponseWriter, r *http.Request) error {
	req, timeout, err := decodeStop(r)
	if err != nil {
		return err
	}
	vm, err := s.eng.RestartVM(r.Context(), r.PathValue("name"), req.Force, timeout)
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, true))
}

// vmLogs streams the console log; with follow it keeps streaming new
// output until the client goes away or the VM is deleted.
func (s *Server) vmLogs(w http.ResponseWriter, r *http.Request) error {
	follow, err := api.ParseBoolParam(r.URL.Query(), "follow")
	if err != nil {
		return err
	}
	if _, err := s.eng.GetVM(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain")
	return s.eng.ConsoleLog(r.Context(), r.PathValue("name"), follow, flushWriter{w})
}

func (s *Server) vmSuspend(w http.ResponseWriter, r *http.Request) error {
	if err := decode(r, &struct{}{}, true); err != nil {
		return err
	}
	vm, err := s.eng.SuspendVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, false))
}

func (s *Server) vmResume(w http.ResponseWriter, r *http.Request) error {
	if err := decode(r, &struct{}{}, true); err != nil {
		return err
	}
	vm, err := s.eng.ResumeVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, true))
}

func snapshotView(s engine.Snapshot) api.Snapshot {
	return api.Snapshot{Name: s.Name, SourceVM: s.SourceVM, Image: s.Image, VMM: s.VMM, VMMVersion: s.VMMVersion, Spec: s.Spec,
		Size: s.Size, CreatedAt: s.CreatedAt.Format(time.RFC3339), UsedBy: s.UsedBy, Pools: s.Pools}
}

func (s *Server) vmSnapshot(w http.ResponseWriter, r *http.Request) error {
	var req api.SnapshotRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	snap, err := s.eng.SnapshotVM(r.Context(), r.PathValue("name"), req.As)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, snapshotView(snap))
}

func (s *Server) vmFork(w http.ResponseWriter, r *http.Request) error {
	var req api.ForkRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	if req.Count == 0 {
		req.Count = 1
	}
	vms, err := s.eng.ForkVM(r.Context(), r.PathValue("name"), req.Count)
	if err != nil {
		return err
	}
	out := []api.VM{}
	for _, vm := range vms {
		out = append(out, s.view(r.Context(), vm, false))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, out)
}

func (s *Server) snapshotList(w http.ResponseWriter, r *http.Request) error {
	snaps, err := s.eng.ListSnapshots(r.Context())
	if err != nil {
		return err
	}
	out := []api.Snapshot{}
	for _, sn := range snaps {
		out = append(out, snapshotView(sn))
	}
	return writeJSON(w, out)
}

func (s *Server) snapshotShow(w http.ResponseWriter, r *http.Request) error {
	snap, err := s.eng.GetSnapshot(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, snapshotView(snap))
}

func (s *Server) snapshotDelete(w http.ResponseWriter, r *http.Request) error {
	if err := s.eng.DeleteSnapshot(r.Context(), r.PathValue("name")); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}
