package daemon

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/store"
)

func (d *Daemon) handleSessionStart(w http.ResponseWriter, r *http.Request) error {
	var req api.StartSessionRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if len(req.Argv) == 0 {
		return api.Errorf(api.CodeInvalidArgument, "no command given")
	}
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	id := newID()
	if req.Name == "" {
		req.Name = "s-" + id[:8]
	} else if err := validName(req.Name); err != nil {
		return api.Errorf(api.CodeInvalidArgument, "session %v", err)
	}
	if _, err := d.store.GetSession(r.Context(), vm.ID, req.Name); err == nil {
		return api.Errorf(api.CodeAlreadyExists, "session %q already exists on vm %q", req.Name, vm.Name)
	}
	gc, err := d.guests.get(r.Context(), vm, 5*time.Second)
	if err != nil {
		return err
	}
	dir := path.Join(guest.SessionsDir, id)
	gs := model.GuestSession{
		ID: id, VMID: vm.ID, Name: req.Name, Command: req.Argv, Cwd: req.Cwd, Env: req.Env, Stdin: req.Stdin,
		Status: model.SessionRunning, StartedAt: d.deps.Now().UTC(),
		StdoutPath: path.Join(dir, "stdout.log"), StderrPath: path.Join(dir, "stderr.log"),
	}
	if err := d.store.CreateSession(r.Context(), gs); err != nil {
		if errors.Is(err, store.ErrExists) {
			return api.Errorf(api.CodeAlreadyExists, "session %q already exists on vm %q", req.Name, vm.Name)
		}
		return err
	}
	if _, err := gc.StartSession(r.Context(), guest.SessionSpec{ID: id, Argv: req.Argv, Cwd: req.Cwd, Env: req.Env, Stdin: req.Stdin}); err != nil {
		d.store.DeleteSession(context.WithoutCancel(r.Context()), id)
		return api.Errorf(api.CodeInvalidArgument, "starting session %q on vm %q: %v", req.Name, vm.Name, err)
	}
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, gs)
}

// refreshSession brings a session's status up to date from its state on the
// work disk: over SSH while the VM runs, else from the stopped VM's disk. A
// session that was running when its VM stopped is lost unless it wrote an
// exit code.
func (d *Daemon) refreshSession(ctx context.Context, vm model.VMRecord, gs *model.GuestSession, gc *guest.Client, offline *offlineDisk) {
	if gs.Status != model.SessionRunning {
		return
	}
	var st guest.SessionState
	var err error
	switch {
	case gc != nil:
		st, err = gc.SessionState(ctx, gs.ID)
	case offline != nil:
		st, err = offline.state(ctx, gs.ID)
	default:
		return
	}
	if err != nil {
		return
	}
	now := d.deps.Now().UTC()
	switch {
	case st.ExitCode != nil:
		gs.Status, gs.ExitCode, gs.EndedAt = model.SessionExited, st.ExitCode, &now
	case !st.Running && gc != nil:
		gs.Status, gs.EndedAt = model.SessionFailed, &now
	case !st.Running:
		gs.Status, gs.EndedAt = model.SessionLost, &now
	default:
		return
	}
	d.store.UpdateSession(context.WithoutCancel(ctx), *gs)
}

// offlineDisk reads session state from a stopped VM's work disk.
type offlineDisk struct {
	d  *Daemon
	vm model.VMRecord
}

// guestDiskFree reports whether no VMM can have the VM's work disk open, so
// the host may mount it.
func (d *Daemon) guestDiskFree(ctx context.Context, vm model.VMRecord) bool {
	if alive, _ := d.vmAlive(ctx, vm); alive {
		return false
	}
	if vm.Runtime.VMM != "" {
		if _, found := d.FindProcessFor(vm); found {
			return false
		}
	}
	_, err := os.Stat(vm.Runtime.WorkDiskPath)
	return err == nil
}

// withSessionDir gives fn the host directory of session id on the mounted
// work disk (read-only mount; root only), or reads through debugfs into a
// temporary copy when the daemon cannot mount.
func (o *offlineDisk) withSessionDir(ctx context.Context, id string, fn func(dir string) error) error {
	rel := filepath.Join(".banger", "sessions", id)
	if os.Geteuid() == 0 {
		return o.d.deps.Disks.WithImageMounted(ctx, o.vm.Runtime.WorkDiskPath, func(mnt string) error {
			// The disk is the guest's: no directory on the way may be a
			// symlink, or it could point the host at its own files.
			dir := filepath.Join(mnt, rel)
			for p := mnt; p != dir; {
				next := filepath.Join(p, strings.SplitN(strings.TrimPrefix(dir, p+"/"), "/", 2)[0])
				st, err := os.Lstat(next)
				if err != nil {
					return api.Errorf(api.CodeNotFound, "session %s has no state on the work disk", id)
				}
				if !st.IsDir() {
					return api.Errorf(api.CodeConflict, "session %s: %s on the work disk is not a directory", id, strings.TrimPrefix(next, mnt))
				}
				p = next
			}
			return fn(dir)
		})
	}
	tmp, err := os.MkdirTemp("", "banger-session-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, name := range []string{"stdout.log", "stderr.log", "pid", "exit"} {
		b, err := o.d.deps.Disks.ReadFileFromImage(ctx, o.vm.Runtime.WorkDiskPath, "/"+filepath.Join(rel, name))
		if err == nil {
			os.WriteFile(filepath.Join(tmp, name), b, 0o600)
		}
	}
	return fn(tmp)
}

func (o *offlineDisk) state(ctx context.Context, id string) (guest.SessionState, error) {
	var st guest.SessionState
	err := o.withSessionDir(ctx, id, func(dir string) error {
		var err error
		st, err = guest.ReadSessionStateDir(dir)
		return err
	})
	return st, err
}

func (d *Daemon) handleSessionList(w http.ResponseWriter, r *http.Request) error {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	sessions, err := d.store.ListSessions(r.Context(), vm.ID)
	if err != nil {
		return err
	}
	gc, offline := d.sessionAccess(r.Context(), vm)
	for i := range sessions {
		d.refreshSession(r.Context(), vm, &sessions[i], gc, offline)
	}
	if sessions == nil {
		sessions = []model.GuestSession{}
	}
	return writeJSON(w, sessions)
}

// sessionAccess picks how to read a VM's sessions: SSH while it is alive,
// else its work disk when no guest has it.
func (d *Daemon) sessionAccess(ctx context.Context, vm model.VMRecord) (*guest.Client, *offlineDisk) {
	if alive, _ := d.vmAlive(ctx, vm); alive {
		if gc, err := d.guests.get(ctx, vm, 3*time.Second); err == nil {
			return gc, nil
		}
		return nil, nil
	}
	if d.guestDiskFree(ctx, vm) {
		return nil, &offlineDisk{d: d, vm: vm}
	}
	return nil, nil
}

func (d *Daemon) sessionFromRequest(r *http.Request) (model.VMRecord, model.GuestSession, error) {
	vm, err := d.getVM(r.Context(), r.PathValue("name"))
	if err != nil {
		return vm, model.GuestSession{}, err
	}
	gs, err := d.store.GetSession(r.Context(), vm.ID, r.PathValue("session"))
	if err != nil {
		return vm, gs, api.Errorf(api.CodeNotFound, "session %q not found on vm %q", r.PathValue("session"), vm.Name)
	}
	return vm, gs, nil
}

func (d *Daemon) handleSessionLogs(w http.ResponseWriter, r *http.Request) error {
	vm, gs, err := d.sessionFromRequest(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	stream := q.Get("stream")
	if stream == "" {
		stream = "stdout"
	}
	if stream != "stdout" && stream != "stderr" {
		return api.Errorf(api.CodeInvalidArgument, "invalid stream %q: want stdout or stderr", stream)
	}
	tail := 0
	if s := q.Get("tail"); s != "" {
		if tail, err = strconv.Atoi(s); err != nil || tail < 0 {
			return api.Errorf(api.CodeInvalidArgument, "invalid tail %q: want a number of lines >= 0", s)
		}
	}
	follow, _ := strconv.ParseBool(q.Get("follow"))
	gc, offline := d.sessionAccess(r.Context(), vm)
	out := flushWriter{w}
	w.Header().Set("Content-Type", "text/plain")
	switch {
	case gc != nil && follow:
		w.WriteHeader(http.StatusOK)
		gc.FollowSessionLogs(r.Context(), gs.ID, stream, tail, out)
		return nil
	case gc != nil:
		return gc.SessionLogs(r.Context(), gs.ID, stream, tail, out)
	case offline != nil:
		return offline.withSessionDir(r.Context(), gs.ID, func(dir string) error {
			return guest.ReadSessionLogDir(dir, stream, tail, out)
		})
	}
	return api.Errorf(api.CodeConflict, "vm %q: its work disk is in use and its guest does not answer; logs cannot be read now", vm.Name)
}

type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

func (d *Daemon) handleSessionSend(w http.ResponseWriter, r *http.Request) error {
	vm, gs, err := d.sessionFromRequest(r)
	if err != nil {
		return err
	}
	if !gs.Stdin {
		return api.Errorf(api.CodeConflict, "session %q has no stdin pipe (start it with --stdin)", gs.Name)
	}
	gc, err := d.guests.get(r.Context(), vm, 3*time.Second)
	if err != nil {
		return err
	}
	d.refreshSession(r.Context(), vm, &gs, gc, nil)
	if gs.Status != model.SessionRunning {
		return api.Errorf(api.CodeConflict, "session %q has ended (%s)", gs.Name, gs.Status)
	}
	if err := gc.SendToSession(r.Context(), gs.ID, io.LimitReader(r.Body, api.MaxBodyBytes)); err != nil {
		return api.Errorf(api.CodeConflict, "sending to session %q: %v", gs.Name, err)
	}
	return writeJSON(w, struct{}{})
}

func (d *Daemon) handleSessionStop(w http.ResponseWriter, r *http.Request) error {
	var req api.StopSessionRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	vm, gs, err := d.sessionFromRequest(r)
	if err != nil {
		return err
	}
	if req.Signal == "" {
		req.Signal = "TERM"
	}
	grace := time.Duration(req.GraceSeconds) * time.Second
	if grace <= 0 {
		grace = 5 * time.Second
	}
	gc, err := d.guests.get(r.Context(), vm, 3*time.Second)
	if err != nil {
		return err
	}
	d.refreshSession(r.Context(), vm, &gs, gc, nil)
	if gs.Status == model.SessionRunning {
		if err := gc.StopSession(r.Context(), gs.ID, req.Signal, grace); err != nil {
			return api.Errorf(api.CodeInvalidArgument, "stopping session %q: %v", gs.Name, err)
		}
		d.refreshSession(r.Context(), vm, &gs, gc, nil)
	}
	return writeJSON(w, gs)
}
