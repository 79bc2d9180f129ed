package engine

import (
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/store"
)

// SessionSpec asks for a guest session.
type SessionSpec struct {
	Name  string
	Argv  []string
	Cwd   string
	Env   []string
	Stdin bool
	User  string // "": the image's USER (root for images not made from a container image)
}

// StartSession starts a command in a VM's guest as a session whose output
// is kept on the work disk.
func (e *Engine) StartSession(ctx context.Context, vmName string, req SessionSpec) (model.GuestSession, error) {
	if len(req.Argv) == 0 {
		return model.GuestSession{}, errdefs.Invalid("no command given")
	}
	if err := ValidUser(req.User); err != nil {
		return model.GuestSession{}, err
	}
	vm, err := e.GetVM(ctx, vmName)
	if err != nil {
		return model.GuestSession{}, err
	}
	argv, err := e.GuestArgv(ctx, vm, GuestCommand{Argv: req.Argv, User: req.User})
	if err != nil {
		return model.GuestSession{}, err
	}
	id := newID()
	if req.Name == "" {
		req.Name = "s-" + id[:8]
	} else if err := validName(req.Name); err != nil {
		return model.GuestSession{}, errdefs.Invalid("session %w", err)
	}
	if _, err := e.store.GetSession(ctx, vm.ID, req.Name); err == nil {
		return model.GuestSession{}, errdefs.AlreadyExists("session %q already exists on vm %q", req.Name, vm.Name)
	}
	gc, err := e.guests.get(ctx, vm, 5*time.Second)
	if err != nil {
		return model.GuestSession{}, err
	}
	dir := path.Join(guest.SessionsDir, id)
	gs := model.GuestSession{
		ID: id, VMID: vm.ID, Name: req.Name, Command: req.Argv, Cwd: req.Cwd, Env: req.Env, Stdin: req.Stdin,
		Status: model.SessionRunning, StartedAt: e.deps.Now().UTC(),
		StdoutPath: path.Join(dir, "stdout.log"), StderrPath: path.Join(dir, "stderr.log"),
	}
	if err := e.store.CreateSession(ctx, gs); err != nil {
		if errors.Is(err, store.ErrExists) {
			return model.GuestSession{}, errdefs.AlreadyExists("session %q already exists on vm %q", req.Name, vm.Name)
		}
		return model.GuestSession{}, err
	}
	if _, err := gc.StartSession(ctx, guest.SessionSpec{ID: id, Argv: argv, Cwd: req.Cwd, Env: req.Env, Stdin: req.Stdin}); err != nil {
		e.store.DeleteSession(context.WithoutCancel(ctx), id)
		return model.GuestSession{}, errdefs.Invalid("starting session %q on vm %q: %w", req.Name, vm.Name, err)
	}
	e.Touch(vm.ID)
	return gs, nil
}

// refreshSession brings a session's status up to date from its state on the
// work disk: over SSH while the VM runs, else from the stopped VM's disk. A
// session that was running when its VM stopped is lost unless it wrote an
// exit code.
func (e *Engine) refreshSession(ctx context.Context, vm model.VMRecord, gs *model.GuestSession, gc *guest.Client, offline *offlineDisk) {
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
	now := e.deps.Now().UTC()
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
	e.store.UpdateSession(context.WithoutCancel(ctx), *gs)
}

// offlineDisk reads session state from a stopped VM's work disk.
type offlineDisk struct {
	e  *Engine
	vm model.VMRecord
}

// guestDiskFree reports whether no VMM can have the VM's work disk open, so
// the host may mount it.
func (e *Engine) guestDiskFree(ctx context.Context, vm model.VMRecord) bool {
	if alive, _ := e.vmAlive(ctx, vm); alive {
		return false
	}
	if vm.Runtime.VMM != "" {
		if _, found := e.findVMM(vm); found {
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
		return o.e.deps.DiskFiles.WithImageMounted(ctx, o.vm.Runtime.WorkDiskPath, func(mnt string) error {
			// The disk is the guest's: no directory on the way may be a
			// symlink, or it could point the host at its own files.
			dir := filepath.Join(mnt, rel)
			for p := mnt; p != dir; {
				next := filepath.Join(p, strings.SplitN(strings.TrimPrefix(dir, p+"/"), "/", 2)[0])
				st, err := os.Lstat(next)
				if err != nil {
					return errdefs.NotFound("session %s has no state on the work disk", id)
				}
				if !st.IsDir() {
					return errdefs.Conflict("session %s: %s on the work disk is not a directory", id, strings.TrimPrefix(next, mnt))
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
		b, err := o.e.deps.DiskFiles.ReadFileFromImage(ctx, o.vm.Runtime.WorkDiskPath, "/"+filepath.Join(rel, name))
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

// ListSessions lists a VM's sessions with their status brought up to date.
func (e *Engine) ListSessions(ctx context.Context, vmName string) ([]model.GuestSession, error) {
	vm, err := e.GetVM(ctx, vmName)
	if err != nil {
		return nil, err
	}
	sessions, err := e.store.ListSessions(ctx, vm.ID)
	if err != nil {
		return nil, err
	}
	gc, offline := e.sessionAccess(ctx, vm)
	for i := range sessions {
		e.refreshSession(ctx, vm, &sessions[i], gc, offline)
	}
	if sessions == nil {
		sessions = []model.GuestSession{}
	}
	return sessions, nil
}

// sessionAccess picks how to read a VM's sessions: SSH while it is alive,
// else its work disk when no guest has it.
func (e *Engine) sessionAccess(ctx context.Context, vm model.VMRecord) (*guest.Client, *offlineDisk) {
	if alive, _ := e.vmAlive(ctx, vm); alive {
		if gc, err := e.guests.get(ctx, vm, 3*time.Second); err == nil {
			return gc, nil
		}
		return nil, nil
	}
	if e.guestDiskFree(ctx, vm) {
		return nil, &offlineDisk{e: e, vm: vm}
	}
	return nil, nil
}

func (e *Engine) session(ctx context.Context, vmName, name string) (model.VMRecord, model.GuestSession, error) {
	vm, err := e.GetVM(ctx, vmName)
	if err != nil {
		return vm, model.GuestSession{}, err
	}
	gs, err := e.store.GetSession(ctx, vm.ID, name)
	if err != nil {
		return vm, gs, errdefs.NotFound("session %q not found on vm %q", name, vm.Name)
	}
	return vm, gs, nil
}

// LogOptions choose what SessionLogs writes.
type LogOptions struct {
	Stream string // stdout (default) or stderr
	Tail   int    // last lines only; 0 = all
	Follow bool
}

// CheckLogOptions validates and fills o.
func CheckLogOptions(o *LogOptions) error {
	if o.Stream == "" {
		o.Stream = "stdout"
	}
	if o.Stream != "stdout" && o.Stream != "stderr" {
		return errdefs.Invalid("invalid stream %q: want stdout or stderr", o.Stream)
	}
	if o.Tail < 0 {
		return errdefs.Invalid("invalid tail %d: want a number of lines >= 0", o.Tail)
	}
	return nil
}

// SessionLogs writes a session's log to w: over SSH while the VM runs
// (following it with o.Follow), else from the stopped VM's work disk.
// started is called once, before the first byte, when the logs can be read.
func (e *Engine) SessionLogs(ctx context.Context, vmName, name string, o LogOptions, started func(), w io.Writer) error {
	if err := CheckLogOptions(&o); err != nil {
		return err
	}
	vm, gs, err := e.session(ctx, vmName, name)
	if err != nil {
		return err
	}
	gc, offline := e.sessionAccess(ctx, vm)
	if gc != nil {
		defer e.Busy(vm.ID)() // reading a running VM's session output is using it
	}
	switch {
	case gc != nil && o.Follow:
		started()
		gc.FollowSessionLogs(ctx, gs.ID, o.Stream, o.Tail, w)
		return nil
	case gc != nil:
		started()
		return gc.SessionLogs(ctx, gs.ID, o.Stream, o.Tail, w)
	case offline != nil:
		return offline.withSessionDir(ctx, gs.ID, func(dir string) error {
			started()
			return guest.ReadSessionLogDir(dir, o.Stream, o.Tail, w)
		})
	}
	return errdefs.Conflict("vm %q: its work disk is in use and its guest does not answer; logs cannot be read now", vm.Name)
}

// SendSession writes data to a session's stdin.
func (e *Engine) SendSession(ctx context.Context, vmName, name string, data io.Reader) error {
	vm, gs, err := e.session(ctx, vmName, name)
	if err != nil {
		return err
	}
	if !gs.Stdin {
		return errdefs.Conflict("session %q has no stdin pipe (start it with --stdin)", gs.Name)
	}
	gc, err := e.guests.get(ctx, vm, 3*time.Second)
	if err != nil {
		return err
	}
	e.refreshSession(ctx, vm, &gs, gc, nil)
	if gs.Status != model.SessionRunning {
		return errdefs.Conflict("session %q has ended (%s)", gs.Name, gs.Status)
	}
	e.Touch(vm.ID)
	if err := gc.SendToSession(ctx, gs.ID, data); err != nil {
		return errdefs.Conflict("sending to session %q: %w", gs.Name, err)
	}
	return nil
}

// StopSession signals a session (TERM by default), and kills it after grace.
func (e *Engine) StopSession(ctx context.Context, vmName, name, signal string, grace time.Duration) (model.GuestSession, error) {
	vm, gs, err := e.session(ctx, vmName, name)
	if err != nil {
		return gs, err
	}
	if signal == "" {
		signal = "TERM"
	}
	if grace <= 0 {
		grace = 5 * time.Second
	}
	gc, err := e.guests.get(ctx, vm, 3*time.Second)
	if err != nil {
		return gs, err
	}
	e.Touch(vm.ID)
	e.refreshSession(ctx, vm, &gs, gc, nil)
	if gs.Status == model.SessionRunning {
		if err := gc.StopSession(ctx, gs.ID, signal, grace); err != nil {
			return gs, errdefs.Invalid("stopping session %q: %w", gs.Name, err)
		}
		e.refreshSession(ctx, vm, &gs, gc, nil)
	}
	return gs, nil
}
