package engine

import (
	"bytes"
	"context"
	"fmt"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/units"
)

// Lifetimes: a VM may have a TTL (at ExpiresAt it is deleted, or stopped)
// and an idle timeout (stopped after that long without exec, ssh, session
// or forwarded-connection activity). Both are stored with the VM, so they
// survive daemon restarts; the reaper applies them under the VM's lock, and
// applies at startup what expired while the daemon was down.

// MinIdleTimeout is the shortest idle timeout: shorter than a boot, a VM
// could be stopped before anyone had a chance to use it.
const MinIdleTimeout = 30 * time.Second

// Lifetime is what a VM is asked to live: zero values for no limit.
type Lifetime struct {
	TTL         time.Duration
	TTLAction   model.TTLAction // delete (default) or stop
	IdleTimeout time.Duration
}

// MaxTTL is the configured longest TTL and idle timeout (max_ttl).
func MaxTTL(cfg config.Config) (time.Duration, error) {
	s := cfg.MaxTTL
	if s == "" {
		s = config.Defaults().MaxTTL
	}
	d, err := units.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("max_ttl %q: want a positive duration such as 30d or 12h", cfg.MaxTTL)
	}
	return d, nil
}

// checkLifetime refuses a lifetime the engine will not apply; bad input is
// ErrInvalidArgument.
func (e *Engine) checkLifetime(l Lifetime) error {
	max := e.maxTTL
	switch {
	case l.TTL < 0:
		return errdefs.Invalid("invalid ttl %s: want a positive duration", l.TTL)
	case l.TTL > max:
		return errdefs.Invalid("invalid ttl %s: beyond max_ttl %s", l.TTL, max)
	case l.IdleTimeout < 0:
		return errdefs.Invalid("invalid idle timeout %s: want a positive duration", l.IdleTimeout)
	case l.IdleTimeout > 0 && l.IdleTimeout < MinIdleTimeout:
		return errdefs.Invalid("invalid idle timeout %s: shorter than a boot; want at least %s", l.IdleTimeout, MinIdleTimeout)
	case l.IdleTimeout > max:
		return errdefs.Invalid("invalid idle timeout %s: beyond max_ttl %s", l.IdleTimeout, max)
	}
	return checkTTLAction(l.TTLAction, l.TTL > 0)
}

func checkTTLAction(a model.TTLAction, hasTTL bool) error {
	switch a {
	case "", model.TTLDelete, model.TTLStop, model.TTLSuspend:
	default:
		return errdefs.Invalid("invalid ttl action %q: want delete, stop or suspend", a)
	}
	if a != "" && !hasTTL {
		return errdefs.Invalid("a ttl action (%s) needs a ttl", a)
	}
	return nil
}

// setLifetime writes a checked lifetime into a VM's options, counting the
// TTL from now.
func (e *Engine) setLifetime(o *model.VMOptions, l Lifetime) {
	o.ExpiresAt, o.TTLAction = time.Time{}, ""
	if l.TTL > 0 {
		o.ExpiresAt = e.deps.Now().UTC().Add(l.TTL).Round(time.Second)
		o.TTLAction = l.TTLAction
		if o.TTLAction == "" {
			o.TTLAction = model.TTLDelete
		}
	}
	o.IdleTimeoutSeconds = int64(l.IdleTimeout / time.Second)
}

// TTLChange changes a VM's TTL: a new TTL from now, time added to the
// current expiry, or none.
type TTLChange struct {
	TTL    time.Duration // from now; with Add, added to the current expiry
	Add    bool
	Clear  bool
	Action model.TTLAction // "" keeps the current action
}

// SetTTL changes a VM's TTL (vm ttl NAME 1h). The new expiry may not be
// further than max_ttl from now.
func (e *Engine) SetTTL(ctx context.Context, name string, c TTLChange) (model.VMRecord, error) {
	if c.Clear && (c.TTL != 0 || c.Add || c.Action != "") {
		return model.VMRecord{}, errdefs.Invalid("clearing a ttl takes no duration or action")
	}
	if !c.Clear && c.TTL <= 0 {
		return model.VMRecord{}, errdefs.Invalid("invalid ttl %s: want a positive duration", c.TTL)
	}
	if err := checkTTLAction(c.Action, !c.Clear); err != nil {
		return model.VMRecord{}, err
	}
	return e.locked(ctx, name, func(vm *model.VMRecord) error {
		o := &vm.Spec.Options
		if vm.Runtime.State == model.StateDeleting {
			return errdefs.Conflict("vm %q is being deleted", vm.Name)
		}
		now := e.deps.Now().UTC()
		switch {
		case c.Clear:
			o.ExpiresAt, o.TTLAction = time.Time{}, ""
		default:
			base := now
			if c.Add && !o.ExpiresAt.IsZero() {
				base = o.ExpiresAt
			}
			exp := base.Add(c.TTL).Round(time.Second)
			if exp.Sub(now) > e.maxTTL {
				return errdefs.Invalid("invalid ttl: the vm would expire in %s, beyond max_ttl %s", exp.Sub(now).Round(time.Second), e.maxTTL)
			}
			o.ExpiresAt = exp
			if c.Action != "" {
				o.TTLAction = c.Action
			}
			if o.TTLAction == "" {
				o.TTLAction = model.TTLDelete
			}
		}
		return e.commitState(ctx, vm, vm.Runtime.State, vm.Runtime.LastError)
	})
}

// lifeIndex follows every VM's lifetime and activity in memory, so the
// reaper never scans the store.
type lifeIndex struct {
	mu      sync.Mutex
	vms     map[string]lifeEntry // VMs with a TTL or an idle timeout, by id
	last    map[string]time.Time // last activity, by VM id
	active  map[string]int       // streams in progress (exec, ssh, followed session logs)
	outputs map[string]int64     // bytes of running sessions' output, at the last look
	acting  map[string]time.Time // a lifetime being applied (or retried after this time)
	since   time.Time            // the daemon's start: idle is counted from here at the latest
	busy    func(vmID string) bool
}

type lifeEntry struct {
	name    string
	expires time.Time
	action  model.TTLAction
	idle    time.Duration
	running bool
}

func (l *lifeIndex) init(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.vms = map[string]lifeEntry{}
	l.last = map[string]time.Time{}
	l.active = map[string]int{}
	l.outputs = map[string]int64{}
	l.acting = map[string]time.Time{}
	l.since = now
}

// note records vm's lifetime (or forgets it, deleted).
func (l *lifeIndex) note(vm model.VMRecord, deleted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.vms == nil || vm.ID == "" {
		return
	}
	o := vm.Spec.Options
	if deleted || (o.ExpiresAt.IsZero() && o.IdleTimeoutSeconds == 0) {
		delete(l.vms, vm.ID)
		if deleted {
			delete(l.last, vm.ID)
			delete(l.outputs, vm.ID)
		}
		return
	}
	l.vms[vm.ID] = lifeEntry{name: vm.Name, expires: o.ExpiresAt, action: o.TTLAction,
		idle: time.Duration(o.IdleTimeoutSeconds) * time.Second, running: vm.Runtime.State == model.StateRunning}
}

// follow keeps the index in step with the engine's events.
func (l *lifeIndex) follow(ev Event) {
	if ev.VM.ID == "" || ev.Replay {
		return
	}
	switch ev.Kind {
	case EventUpdated, EventCreated:
		l.note(ev.VM, false)
	case EventDeleted:
		l.note(ev.VM, true)
	}
}

func (l *lifeIndex) touch(id string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last != nil && now.After(l.last[id]) {
		l.last[id] = now
	}
}

// Touch records activity on a VM now (a forwarded connection, a session
// command), which resets its idle timeout.
func (e *Engine) Touch(vmID string) { e.lives.touch(vmID, e.deps.Now()) }

// Busy marks a VM in use until done is called (an exec or ssh stream, a
// followed session log): a VM in use is never idle.
func (e *Engine) Busy(vmID string) (done func()) {
	l := &e.lives
	l.mu.Lock()
	if l.active != nil {
		l.active[vmID]++
	}
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			if l.active != nil {
				if l.active[vmID]--; l.active[vmID] <= 0 {
					delete(l.active, vmID)
				}
			}
			l.mu.Unlock()
			e.Touch(vmID)
		})
	}
}

// SetBusyCheck adds what else keeps a VM busy (open forwarded connections).
func (e *Engine) SetBusyCheck(fn func(vmID string) bool) {
	e.lives.mu.Lock()
	defer e.lives.mu.Unlock()
	e.lives.busy = fn
}

// LastActivity is when a VM was last used, as the idle timeout counts it
// (the daemon's start when nothing happened since).
func (e *Engine) LastActivity(vmID string) time.Time {
	l := &e.lives
	l.mu.Lock()
	defer l.mu.Unlock()
	t := l.last[vmID]
	if t.Before(l.since) {
		t = l.since
	}
	return t
}

// due lists the VMs whose TTL expired and those idle too long, and marks
// them being acted on.
func (l *lifeIndex) due(now time.Time) (expired, idle []string) {
	l.mu.Lock()
	busy := l.busy
	var idleCandidates []string
	for id, v := range l.vms {
		if t, ok := l.acting[id]; ok && now.Before(t) {
			continue
		}
		if !v.expires.IsZero() && !now.Before(v.expires) {
			expired = append(expired, id)
			l.acting[id] = now.Add(time.Hour)
			continue
		}
		if v.idle <= 0 || !v.running {
			continue
		}
		if l.active[id] > 0 {
			l.last[id] = now
			continue
		}
		last := l.last[id]
		if last.Before(l.since) {
			last = l.since
		}
		if now.Sub(last) >= v.idle {
			idleCandidates = append(idleCandidates, id)
		}
	}
	l.mu.Unlock()
	// The busy check (the publisher's) runs without the index's lock.
	for _, id := range idleCandidates {
		if busy != nil && busy(id) {
			l.touchAt(id, now)
			continue
		}
		l.mu.Lock()
		l.acting[id] = now.Add(time.Hour)
		l.mu.Unlock()
		idle = append(idle, id)
	}
	return expired, idle
}

func (l *lifeIndex) touchAt(id string, now time.Time) { l.touch(id, now) }

// done ends an action on a VM; after a failure it is retried after retry.
func (l *lifeIndex) done(id string, now time.Time, retry time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if retry > 0 {
		l.acting[id] = now.Add(retry)
		return
	}
	delete(l.acting, id)
}

// reapLifetimes applies TTLs and idle timeouts every tick until ctx ends or
// the engine closes; it starts after reconcile, so what expired while the
// daemon was down is applied at once.
func (e *Engine) reapLifetimes(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		expired, idle := e.lives.due(e.deps.Now())
		for _, id := range expired {
			go e.expire(ctx, id)
		}
		for _, id := range idle {
			go e.stopIdle(ctx, id)
		}
		select {
		case <-ctx.Done():
			return
		case <-e.stopCh:
			return
		case <-t.C:
		}
	}
}

// expire applies a VM's TTL under its lock: delete it, or stop it and
// clear the TTL (a stopped VM started again lives on).
func (e *Engine) expire(ctx context.Context, id string) {
	retry := time.Duration(0)
	defer func() { e.lives.done(id, e.deps.Now(), retry) }()
	unlock := e.lockVM(ctx, id)
	defer unlock()
	vm, err := e.store.GetVMByID(ctx, id)
	if err != nil {
		return // deleted meanwhile
	}
	o := vm.Spec.Options
	now := e.deps.Now()
	if o.ExpiresAt.IsZero() || now.Before(o.ExpiresAt) {
		return // extended or cleared meanwhile
	}
	action := o.TTLAction
	if action == "" {
		action = model.TTLDelete
	}
	late := ""
	if d := now.Sub(o.ExpiresAt); d > 5*time.Second {
		late = fmt.Sprintf(", applied %s late (the daemon was down)", d.Round(time.Second))
	}
	e.emitEvent(Event{Kind: EventTTLExpired, VM: vm, Cause: fmt.Sprintf("expired at %s; action %s%s", o.ExpiresAt.Format(time.RFC3339), action, late)})
	e.log.Info("vm ttl expired", "vm", vm.Name, "action", action, "expired_at", o.ExpiresAt)
	cctx := withCause(ctx, "ttl expired")
	switch action {
	case model.TTLSuspend:
		if vm.Runtime.State != model.StateRunning {
			break
		}
		if err := e.suspendLocked(cctx, &vm); err != nil {
			e.log.Error("suspending a vm whose ttl expired", "vm", vm.Name, "err", err)
			retry = 30 * time.Second
			return
		}
		vm.Spec.Options.ExpiresAt, vm.Spec.Options.TTLAction = time.Time{}, ""
		e.commitState(cctx, &vm, vm.Runtime.State, "suspended: ttl expired at "+o.ExpiresAt.Format(time.RFC3339))
	case model.TTLStop:
		if err := e.stopLocked(cctx, &vm, false, 10*time.Second); err != nil && vm.Runtime.State != model.StateStopped {
			e.log.Error("stopping a vm whose ttl expired", "vm", vm.Name, "err", err)
			retry = 30 * time.Second
			return
		}
		vm.Spec.Options.ExpiresAt, vm.Spec.Options.TTLAction = time.Time{}, ""
		last := vm.Runtime.LastError
		if last == "" {
			last = "ttl expired at " + o.ExpiresAt.Format(time.RFC3339)
		}
		e.commitState(cctx, &vm, vm.Runtime.State, last)
	default:
		if err := e.deleteLocked(cctx, &vm, false); err != nil {
			e.log.Error("deleting a vm whose ttl expired", "vm", vm.Name, "err", err)
			retry = 30 * time.Second
		}
	}
}

// stopIdle stops a VM idle for its idle timeout, under its lock, unless it
// was used meanwhile or a running session's output grew.
func (e *Engine) stopIdle(ctx context.Context, id string) {
	retry := time.Duration(0)
	defer func() { e.lives.done(id, e.deps.Now(), retry) }()
	unlock := e.lockVM(ctx, id)
	defer unlock()
	vm, err := e.store.GetVMByID(ctx, id)
	if err != nil || vm.Runtime.State != model.StateRunning || vm.Spec.Options.IdleTimeoutSeconds == 0 {
		return
	}
	idle := time.Duration(vm.Spec.Options.IdleTimeoutSeconds) * time.Second
	now := e.deps.Now()
	last := e.LastActivity(id)
	if now.Sub(last) < idle || e.busyNow(id) {
		return
	}
	if e.sessionOutputGrew(ctx, vm) {
		e.lives.touch(id, now)
		return
	}
	cause := fmt.Sprintf("idle timeout: no activity for %s", now.Sub(last).Round(time.Second))
	e.log.Info("stopping an idle vm", "vm", vm.Name, "idle_timeout", idle, "last_activity", last)
	if err := e.stopLocked(withCause(ctx, cause), &vm, false, 10*time.Second); err != nil && vm.Runtime.State != model.StateStopped {
		e.log.Error("stopping an idle vm", "vm", vm.Name, "err", err)
		retry = 30 * time.Second
		return
	}
	if vm.Runtime.LastError == "" {
		e.commitState(ctx, &vm, vm.Runtime.State, "stopped: "+cause)
	}
}

// busyNow reports an exec or ssh stream in progress or an open forwarded
// connection.
func (e *Engine) busyNow(id string) bool {
	l := &e.lives
	l.mu.Lock()
	n, busy := l.active[id], l.busy
	l.mu.Unlock()
	return n > 0 || (busy != nil && busy(id))
}

// sessionOutputGrew reports whether a running session of vm wrote output
// since the last look (the first look counts as activity: the daemon may
// have restarted). Only asked of VMs about to be stopped for idleness.
func (e *Engine) sessionOutputGrew(ctx context.Context, vm model.VMRecord) bool {
	sessions, err := e.store.ListSessions(ctx, vm.ID)
	if err != nil {
		return false
	}
	var running []string
	for _, gs := range sessions {
		if gs.Status == model.SessionRunning {
			running = append(running, gs.ID)
		}
	}
	if len(running) == 0 {
		return false
	}
	gc, err := e.guests.get(ctx, vm, 3*time.Second)
	if err != nil {
		return false
	}
	var paths []string
	for _, id := range running {
		paths = append(paths, path.Join(gc.SessionsRoot, id, "stdout.log"), path.Join(gc.SessionsRoot, id, "stderr.log"))
	}
	var out bytes.Buffer
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	gc.Run(cctx, append([]string{"stat", "-c", "%s"}, paths...), nil, &out, nil)
	var total int64
	for _, f := range strings.Fields(out.String()) {
		n, _ := strconv.ParseInt(f, 10, 64)
		total += n
	}
	l := &e.lives
	l.mu.Lock()
	defer l.mu.Unlock()
	prev, seen := l.outputs[vm.ID]
	l.outputs[vm.ID] = total
	return !seen || total != prev
}
