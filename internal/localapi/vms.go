package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// view shows a VM with its live facts. full asks the VMM to confirm identity
// (vmAlive); list views only check the recorded process, to stay cheap.
func (d *Daemon) view(ctx context.Context, vm model.VMRecord, full bool) api.VM {
	out := api.VM{VMRecord: vm}
	h, ok := d.handles.get(vm.ID)
	if !ok && vm.Runtime.State != model.StateRunning {
		return out
	}
	live := &api.LiveFacts{Handles: h}
	if full {
		live.Alive, live.Reason = d.vmAlive(ctx, vm)
	} else {
		live.Alive = vm.Runtime.State == model.StateRunning && h.PID != 0 && (system.Process{PID: h.PID, Start: h.PIDStart}).Alive()
	}
	out.Live = live
	return out
}

func (d *Daemon) handleVMList(w http.ResponseWriter, r *http.Request) error {
	if err := d.list.load(r.Context(), d.store.ListVMs); err != nil {
		return err
	}
	// Cached entries are written as they are; only VMs with a runtime get
	// their live facts computed. The bytes equal encoding []api.VM.
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 64<<10)
	bw.WriteByte('[')
	n := 0
	err := d.list.each(func(e *listEntry) error {
		b := e.json
		if _, cached := d.handles.get(e.id); cached || e.running {
			var v api.VM
			if err := json.Unmarshal(e.json, &v); err != nil {
				return err
			}
			var err error
			if b, err = json.Marshal(d.view(r.Context(), v.VMRecord, false)); err != nil {
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

func (d *Daemon) handleVMCreate(w http.ResponseWriter, r *http.Request) error {
	var req api.CreateVMRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	vm, err := d.createVM(r.Context(), req)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, d.view(r.Context(), vm, false))
}

func (d *Daemon) handleVMShow(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, d.view(r.Context(), vm, true))
}

func (d *Daemon) handleVMDelete(w http.ResponseWriter, r *http.Request) error {
	force, _ := strconv.ParseBool(r.URL.Query().Get("force"))
	if err := d.deleteVM(r.Context(), r.PathValue("name"), force); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

func (d *Daemon) handleVMStart(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.startVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	out := d.view(r.Context(), vm, true)
	if vm.Runtime.Accel == "tcg" {
		out.Warnings = append(out.Warnings, "no usable /dev/kvm: QEMU runs this VM under software emulation (TCG), which is slow")
	}
	return writeJSON(w, out)
}

// decodeStop reads a stop (or restart) request and its timeout (default 10s).
func decodeStop(r *http.Request) (api.StopRequest, time.Duration, error) {
	var req api.StopRequest
	if err := decode(r, &req); err != nil {
		return req, 0, err
	}
	switch {
	case req.TimeoutSeconds < 0:
		return req, 0, api.Errorf(api.CodeInvalidArgument, "invalid timeout %ds", req.TimeoutSeconds)
	case req.TimeoutSeconds == 0:
		return req, 10 * time.Second, nil
	}
	return req, time.Duration(req.TimeoutSeconds) * time.Second, nil
}

func (d *Daemon) handleVMStop(w http.ResponseWriter, r *http.Request) error {
	req, timeout, err := decodeStop(r)
	if err != nil {
		return err
	}
	vm, err := d.stopVM(r.Context(), r.PathValue("name"), req.Force, timeout)
	if err != nil {
		return err
	}
	return writeJSON(w, d.view(r.Context(), vm, false))
}

func (d *Daemon) handleVMRestart(w http.ResponseWriter, r *http.Request) error {
	req, timeout, err := decodeStop(r)
	if err != nil {
		return err
	}
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	unlock := d.lockVM(r.Context(), vm.ID)
	defer unlock()
	if vm, err = d.store.GetVMByID(r.Context(), vm.ID); err != nil {
		return toAPIError(err)
	}
	if err := d.stopLocked(r.Context(), &vm, req.Force, timeout); err != nil {
		return err
	}
	if err := d.startLocked(r.Context(), &vm); err != nil {
		return err
	}
	return writeJSON(w, d.view(r.Context(), vm, true))
}

// handleVMLogs streams the console log; with follow it keeps streaming new
// output until the client goes away or the VM is deleted.
func (d *Daemon) handleVMLogs(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain")
	out := flushWriter{w}
	var off int64
	for {
		n, err := copyFileFrom(vm.Runtime.LogPath, off, out)
		if err != nil {
			return nil // the client went away
		}
		off = n
		if !follow {
			return nil
		}
		select {
		case <-r.Context().Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := d.store.GetVMByID(r.Context(), vm.ID); err != nil {
			return nil // deleted
		}
	}
}

// copyFileFrom writes path's bytes from off to its end to w and returns the
// new offset. A missing file is empty; a file now shorter than off (a new
// boot, or trimmed by keepConsoles) is read from its start.
func copyFileFrom(path string, off int64, w io.Writer) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return off, nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() < off {
		off = 0
	}
	n, err := io.Copy(w, io.NewSectionReader(f, off, 1<<62))
	return off + n, err
}
