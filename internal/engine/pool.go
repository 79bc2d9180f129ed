package engine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/failpoint"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/units"
	"github.com/banger-dev/banger/internal/vmm"
)

// Warm pools: a pool keeps Size VMs restored from its snapshot, given their
// own identity, their SSH server answered and their host key pinned, then
// paused (the VMM stays up, its vCPUs stopped). A claim takes the oldest
// ready member, lets it run again, corrects its clock, optionally renames
// it, and hands it over as an ordinary VM; the pool then makes a new member
// in the background, one at a time.
//
// What a pool is lives in the store (its row); which VMs are its members
// too (their options name the pool). Whether a member is ready is what its
// VMM says: at startup each member whose QEMU answers "paused" is ready
// again, any other member (half made when the daemon died, stopped, ...)
// is deleted and made anew. docs/snapshots.md has the design.

// Pauser is what the engine needs of a VMM to keep pool members.
type Pauser interface {
	Pause(ctx context.Context, m vmm.Machine, p system.Process) error
	Resume(ctx context.Context, m vmm.Machine, p system.Process) error
	RunState(ctx context.Context, m vmm.Machine, p system.Process) (string, error)
	SetHostname(ctx context.Context, m vmm.Machine, name string) error
}

// The pool's failpoints: a member recorded, started, and paused (ready).
var (
	fpPoolMemberCreated = failpoint.New("pool.member.created")
	fpPoolMemberStarted = failpoint.New("pool.member.started")
	fpPoolMemberReady   = failpoint.New("pool.member.ready")
	fpPoolClaimResumed  = failpoint.New("pool.claim.resumed")
)

// MaxPoolSize bounds a pool's size.
const MaxPoolSize = 64

// PoolInfo describes a pool and its members now.
type PoolInfo struct {
	model.Pool
	Ready     int      // members paused and ready to claim
	Warming   int      // members being made
	Members   []string // member VM names, ready ones first
	LastError string   // why the last member could not be made ("" once one was)
}

// poolSet is the running pools of the engine.
type poolSet struct {
	mu   sync.Mutex
	runs map[string]*poolRun
	ctx  context.Context // the engine's; nil until startPools
}

// poolRun is one pool's state and its refill loop. Guarded by poolSet.mu.
type poolRun struct {
	def     model.Pool
	ready   []string // ids of members ready to claim, oldest first
	warming int
	lastErr string
	kick    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
}

type poolAccessKey struct{}

// poolAccess marks the engine's own use of a pool member's guest (while
// making it): every other use is refused, as the member is paused.
func poolAccess(ctx context.Context) context.Context {
	return context.WithValue(ctx, poolAccessKey{}, true)
}

func hasPoolAccess(ctx context.Context) bool { v, _ := ctx.Value(poolAccessKey{}).(bool); return v }

// errPoolMember refuses the use of a VM a pool keeps paused.
func errPoolMember(vm model.VMRecord) error {
	return errdefs.Conflict("vm %q is a warm member of pool %q (kept paused): claim one with banger vm run --pool %s", vm.Name, vm.Spec.Options.Pool, vm.Spec.Options.Pool)
}

// PoolSpec is what CreatePool needs.
type PoolSpec struct {
	Name     string
	Snapshot string
	Size     int
}

// CreatePool records a pool and starts filling it.
func (e *Engine) CreatePool(ctx context.Context, spec PoolSpec) (PoolInfo, error) {
	if err := validName(spec.Name); err != nil {
		return PoolInfo{}, errdefs.Invalid("pool %w", err)
	}
	if spec.Size < 1 || spec.Size > MaxPoolSize {
		return PoolInfo{}, errdefs.Invalid("invalid pool size %d: want 1 to %d", spec.Size, MaxPoolSize)
	}
	if spec.Snapshot == "" {
		return PoolInfo{}, errdefs.Invalid("a pool needs a snapshot (--from SNAP)")
	}
	req := CreateSpec{Options: model.VMOptions{From: spec.Snapshot}}
	if err := e.checkFrom(&req); err != nil {
		return PoolInfo{}, err
	}
	drv, err := e.driverFor(req.VMM)
	if err != nil {
		return PoolInfo{}, err
	}
	if _, ok := drv.(Pauser); !ok {
		return PoolInfo{}, errdefs.Conflict("%s cannot keep paused VMs for a pool", req.VMM)
	}
	// Members stay in memory: refuse a pool the host cannot hold.
	over, _ := units.ParseSize(e.cfg.MemoryOverhead)
	need := int64(spec.Size) * (int64(req.MemoryMiB)<<20 + over)
	if avail, err := system.MemAvailable(); err == nil && need > avail {
		return PoolInfo{}, errdefs.Invalid("a pool of %d VMs of %d MiB needs about %d MiB; the host has %d MiB available",
			spec.Size, req.MemoryMiB, need>>20, avail>>20)
	}
	def := model.Pool{Name: spec.Name, Snapshot: spec.Snapshot, Size: spec.Size, CreatedAt: e.deps.Now().UTC()}
	if err := e.store.CreatePool(ctx, def); err != nil {
		if errors.Is(err, errdefs.ErrAlreadyExists) {
			return PoolInfo{}, errdefs.AlreadyExists("pool %q already exists", spec.Name)
		}
		return PoolInfo{}, err
	}
	e.log.Info("pool created", "pool", def.Name, "snapshot", def.Snapshot, "size", def.Size)
	e.runPool(def, nil)
	return e.GetPool(ctx, def.Name)
}

// GetPool describes a pool.
func (e *Engine) GetPool(ctx context.Context, name string) (PoolInfo, error) {
	def, err := e.store.GetPool(ctx, name)
	if err != nil {
		return PoolInfo{}, err
	}
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		return PoolInfo{}, err
	}
	info := PoolInfo{Pool: def, Members: []string{}}
	e.pools.mu.Lock()
	pr := e.pools.runs[name]
	var ready []string
	if pr != nil {
		ready = slices.Clone(pr.ready)
		info.Warming, info.LastError = pr.warming, pr.lastErr
	}
	e.pools.mu.Unlock()
	info.Ready = len(ready)
	var others []string
	for _, vm := range vms {
		if vm.Spec.Options.Pool != name {
			continue
		}
		if slices.Contains(ready, vm.ID) {
			info.Members = append(info.Members, vm.Name)
		} else {
			others = append(others, vm.Name)
		}
	}
	info.Members = append(info.Members, others...)
	return info, nil
}

// ListPools describes every pool, oldest first.
func (e *Engine) ListPools(ctx context.Context) ([]PoolInfo, error) {
	defs, err := e.store.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	out := []PoolInfo{}
	for _, d := range defs {
		if info, err := e.GetPool(ctx, d.Name); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// DeletePool stops refilling a pool, deletes its members (not the VMs
// claimed from it) and then its record.
func (e *Engine) DeletePool(ctx context.Context, name string) error {
	if _, err := e.store.GetPool(ctx, name); err != nil {
		return err
	}
	e.pools.mu.Lock()
	pr := e.pools.runs[name]
	delete(e.pools.runs, name)
	e.pools.mu.Unlock()
	if pr != nil {
		pr.cancel()
		<-pr.done
	}
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, vm := range vms {
		if vm.Spec.Options.Pool != name {
			continue
		}
		// Under the VM's lock, and only if it is still a member: a claim
		// may have taken it since the list was read.
		unlock := e.lockVM(ctx, vm.ID)
		cur, err := e.store.GetVMByID(ctx, vm.ID)
		if err == nil && cur.Spec.Options.Pool == name {
			err = e.deleteLocked(withCause(ctx, "pool deleted"), &cur, true)
		}
		unlock()
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		// The record stays so that a retry (or the next start) finds the
		// members left.
		e.runPoolIfMissing(name)
		return fmt.Errorf("deleting pool %q: %w", name, err)
	}
	if err := e.store.DeletePool(ctx, name); err != nil {
		return err
	}
	e.log.Info("pool deleted", "pool", name)
	return nil
}

// poolsUsing names the pools made from a snapshot.
func (e *Engine) poolsUsing(ctx context.Context, snap string) []string {
	defs, _ := e.store.ListPools(ctx)
	var out []string
	for _, d := range defs {
		if d.Snapshot == snap {
			out = append(out, d.Name)
		}
	}
	return out
}

// ClaimSpec is what a claim asks for: the VM's name ("" keeps the
// member's own).
type ClaimSpec struct {
	Pool string
	Name string
}

// ClaimFromPool hands over a ready member of a pool as an ordinary running
// VM. With no member ready it makes a VM from the pool's snapshot the slow
// way (a restore) rather than fail.
func (e *Engine) ClaimFromPool(ctx context.Context, spec ClaimSpec) (model.VMRecord, error) {
	def, err := e.store.GetPool(ctx, spec.Pool)
	if err != nil {
		return model.VMRecord{}, err
	}
	if spec.Name != "" {
		if err := validName(spec.Name); err != nil {
			return model.VMRecord{}, errdefs.Invalid("%w", err)
		}
		if _, err := e.store.GetVM(ctx, spec.Name); err == nil {
			return model.VMRecord{}, errdefs.AlreadyExists("vm %q already exists", spec.Name)
		}
	}
	defer e.kickPool(def.Name)
	for {
		id, ok := e.takeReady(def.Name)
		if !ok {
			break
		}
		vm, err := e.claimMember(ctx, def, id, spec.Name)
		if err == nil {
			return vm, nil
		}
		if errors.Is(err, errdefs.ErrAlreadyExists) || ctx.Err() != nil {
			return model.VMRecord{}, err
		}
		e.log.Warn("pool member could not be claimed; trying the next", "pool", def.Name, "err", err)
	}
	e.log.Info("pool has no member ready: restoring its snapshot for this claim", "pool", def.Name)
	opts, err := e.memberOptions(def, "")
	if err != nil {
		return model.VMRecord{}, err
	}
	vm, err := e.CreateVM(ctx, CreateSpec{Name: spec.Name, Options: opts})
	if err != nil {
		return vm, err
	}
	if vm, err = e.StartVM(ctx, vm.Name); err != nil {
		e.DeleteVM(context.WithoutCancel(ctx), vm.Name, true)
		return vm, err
	}
	return vm, nil
}

// takeReady pops the oldest ready member of a pool.
func (e *Engine) takeReady(pool string) (string, bool) {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	pr := e.pools.runs[pool]
	if pr == nil || len(pr.ready) == 0 {
		return "", false
	}
	id := pr.ready[0]
	pr.ready = pr.ready[1:]
	return id, true
}

// claimMember resumes member id and makes it an ordinary VM. A member that
// cannot be resumed is deleted (the pool makes another).
func (e *Engine) claimMember(ctx context.Context, def model.Pool, id, name string) (model.VMRecord, error) {
	unlock := e.lockVM(ctx, id)
	defer unlock()
	vm, err := e.store.GetVMByID(ctx, id)
	if err != nil {
		return vm, err
	}
	if vm.Spec.Options.Pool != def.Name {
		return vm, fmt.Errorf("vm %q is no longer a member of pool %q", vm.Name, def.Name)
	}
	drop := func(err error) (model.VMRecord, error) {
		e.deleteLocked(withCause(context.WithoutCancel(ctx), "pool member broken"), &vm, true)
		return vm, err
	}
	pz, m, p, err := e.pauserOf(vm)
	if err != nil {
		return drop(err)
	}
	if alive, reason := e.vmAlive(ctx, vm); !alive {
		return drop(fmt.Errorf("pool member %q is not alive: %s", vm.Name, reason))
	}
	old := vm.Name
	e.createMu.Lock() // names are taken under it
	if name != "" && name != vm.Name {
		if _, err := e.store.GetVM(ctx, name); err == nil {
			e.createMu.Unlock()
			e.returnReady(def.Name, id)
			return vm, errdefs.AlreadyExists("vm %q already exists", name)
		}
		vm.Name, vm.Runtime.DNSName = name, name+"."+e.cfg.DNSZone
	}
	vm.Spec.Options.Pool = ""
	err = e.store.UpdateVM(ctx, &vm)
	e.createMu.Unlock()
	if err != nil {
		vm.Name = old
		e.returnReady(def.Name, id)
		return vm, err
	}
	// From here the VM is the caller's: a failure leaves it an ordinary VM
	// (stopped for real if its VMM is gone), never a member again.
	writeRecordFile(vm)
	if err := pz.Resume(ctx, m, p); err != nil {
		e.log.Error("resuming a claimed pool member", "vm", vm.Name, "err", err)
		return vm, fmt.Errorf("claiming vm %q from pool %q: %w", vm.Name, def.Name, err)
	}
	if err := hit(ctx, fpPoolClaimResumed); err != nil {
		return vm, err
	}
	var errs []error
	if err := correctClock(ctx, pz, m); err != nil {
		errs = append(errs, fmt.Errorf("clock: %w", err))
	}
	if vm.Name != old {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := pz.SetHostname(hctx, m, vm.Name); err != nil {
			errs = append(errs, fmt.Errorf("hostname: %w", err))
		}
		cancel()
	}
	if err := errors.Join(errs...); err != nil {
		e.log.Warn("a claimed pool member kept some of its member identity", "vm", vm.Name, "err", err)
	}
	e.lives.touch(vm.ID, e.deps.Now())
	e.emitEvent(Event{Kind: EventClaimed, VM: vm, Cause: "pool " + def.Name, Prev: old})
	e.log.Info("vm claimed from pool", "vm", vm.Name, "pool", def.Name, "member", old)
	return vm, nil
}

// returnReady puts a member back at the head of its pool's ready list.
func (e *Engine) returnReady(pool, id string) {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	if pr := e.pools.runs[pool]; pr != nil {
		pr.ready = append([]string{id}, pr.ready...)
	}
}

func (e *Engine) kickPool(name string) {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	if pr := e.pools.runs[name]; pr != nil {
		select {
		case pr.kick <- struct{}{}:
		default:
		}
	}
}

// startPools runs once startup reconcile is done: it sorts each pool's
// members into ready ones (their VMM answers "paused") and others, which
// are deleted, and starts each pool's refill.
func (e *Engine) startPools(ctx context.Context) {
	e.pools.mu.Lock()
	e.pools.ctx = ctx
	if e.pools.runs == nil {
		e.pools.runs = map[string]*poolRun{}
	}
	e.pools.mu.Unlock()
	defs, err := e.store.ListPools(ctx)
	if err != nil {
		e.log.Error("listing pools", "err", err)
		return
	}
	known := map[string]bool{}
	for _, d := range defs {
		known[d.Name] = true
	}
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		e.log.Error("listing pool members", "err", err)
		return
	}
	ready := map[string][]string{}
	for _, vm := range vms {
		pool := vm.Spec.Options.Pool
		if pool == "" {
			continue
		}
		if known[pool] && e.memberPaused(ctx, vm) {
			ready[pool] = append(ready[pool], vm.ID)
			continue
		}
		e.log.Info("removing a pool member that is not ready", "vm", vm.Name, "pool", pool)
		if err := e.DeleteVM(withCause(ctx, "pool member not ready"), vm.Name, true); err != nil {
			e.log.Warn("removing a pool member", "vm", vm.Name, "err", err)
		}
	}
	for _, d := range defs {
		e.runPool(d, ready[d.Name])
	}
}

// memberPaused reports whether a member's VMM is alive and paused.
func (e *Engine) memberPaused(ctx context.Context, vm model.VMRecord) bool {
	unlock := e.lockVM(ctx, vm.ID)
	defer unlock()
	if alive, _ := e.vmAlive(ctx, vm); !alive {
		return false
	}
	pz, m, p, err := e.pauserOf(vm)
	if err != nil {
		return false
	}
	st, err := pz.RunState(ctx, m, p)
	return err == nil && st == "paused"
}

// pauserOf is a VM's VMM driver as a Pauser, with the machine and the
// process its handles name.
func (e *Engine) pauserOf(vm model.VMRecord) (Pauser, vmm.Machine, system.Process, error) {
	drv, err := e.driverFor(vm.Runtime.VMM)
	if err != nil {
		return nil, vmm.Machine{}, system.Process{}, err
	}
	pz, ok := drv.(Pauser)
	if !ok {
		return nil, vmm.Machine{}, system.Process{}, errdefs.Conflict("%s cannot keep paused VMs", vm.Runtime.VMM)
	}
	h, _ := e.handles.get(vm.ID)
	return pz, e.machine(vm, model.Image{}, "", h), system.Process{PID: h.PID, Start: h.PIDStart}, nil
}

func (e *Engine) runPoolIfMissing(name string) {
	def, err := e.store.GetPool(context.Background(), name)
	if err != nil {
		return
	}
	e.pools.mu.Lock()
	_, ok := e.pools.runs[name]
	e.pools.mu.Unlock()
	if !ok {
		e.runPool(def, nil)
	}
}

// runPool starts a pool's refill loop (once startPools gave the engine's
// context; before that, startPools picks the pool up from the store).
func (e *Engine) runPool(def model.Pool, ready []string) {
	e.pools.mu.Lock()
	defer e.pools.mu.Unlock()
	if e.pools.ctx == nil {
		return
	}
	if e.pools.runs == nil {
		e.pools.runs = map[string]*poolRun{}
	}
	if _, ok := e.pools.runs[def.Name]; ok {
		return
	}
	ctx, cancel := context.WithCancel(e.pools.ctx)
	pr := &poolRun{def: def, ready: ready, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	e.pools.runs[def.Name] = pr
	go e.refill(ctx, pr)
}

// refill makes members, one at a time, until the pool is full, then waits
// for a claim. A failure is recorded and retried after a growing pause.
func (e *Engine) refill(ctx context.Context, pr *poolRun) {
	defer close(pr.done)
	backoff := time.Second
	for {
		e.pools.mu.Lock()
		need := pr.def.Size - len(pr.ready) - pr.warming
		if need > 0 {
			pr.warming++
		}
		e.pools.mu.Unlock()
		if need <= 0 {
			select {
			case <-pr.kick:
				continue
			case <-ctx.Done():
				return
			case <-e.stopCh:
				return
			}
		}
		id, err := e.warmMember(ctx, pr.def)
		e.pools.mu.Lock()
		pr.warming--
		if err == nil {
			pr.ready = append(pr.ready, id)
			pr.lastErr = ""
		} else if ctx.Err() == nil {
			pr.lastErr = err.Error()
		}
		e.pools.mu.Unlock()
		if err == nil {
			backoff = time.Second
			continue
		}
		if ctx.Err() != nil {
			return
		}
		e.log.Warn("pool member could not be made", "pool", pr.def.Name, "err", err, "retry_in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		case <-e.stopCh:
			return
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// warmMember makes one member: recorded, restored from the snapshot with
// its own identity, its SSH server answering, then paused.
func (e *Engine) warmMember(ctx context.Context, def model.Pool) (string, error) {
	ctx = withCause(ctx, "pool "+def.Name)
	opts, err := e.memberOptions(def, def.Name)
	if err != nil {
		return "", err
	}
	vm, err := e.CreateVM(ctx, CreateSpec{Name: memberName(def.Name), Options: opts})
	if err != nil {
		return "", err
	}
	fail := func(err error) (string, error) {
		if derr := e.DeleteVM(context.WithoutCancel(ctx), vm.Name, true); derr != nil && !errors.Is(derr, errdefs.ErrNotFound) {
			e.log.Warn("removing a pool member that failed", "vm", vm.Name, "err", derr)
		}
		return "", err
	}
	if err := hit(ctx, fpPoolMemberCreated); err != nil {
		return fail(err)
	}
	if vm, err = e.StartVM(ctx, vm.Name); err != nil {
		return fail(err)
	}
	if err := hit(ctx, fpPoolMemberStarted); err != nil {
		return fail(err)
	}
	// Its SSH server answers and its new host key is pinned now, and the
	// connection is kept: a claim costs a resume, not a handshake.
	if _, err := e.guests.get(poolAccess(ctx), vm, 2*time.Minute); err != nil {
		return fail(err)
	}
	_, err = e.locked(ctx, vm.Name, func(v *model.VMRecord) error {
		if v.Spec.Options.Pool != def.Name {
			return errdefs.Conflict("vm %q left pool %q while it was made", v.Name, def.Name)
		}
		pz, m, p, err := e.pauserOf(*v)
		if err != nil {
			return err
		}
		return pz.Pause(ctx, m, p)
	})
	if err != nil {
		return fail(err)
	}
	if err := hit(ctx, fpPoolMemberReady); err != nil {
		return fail(err)
	}
	e.log.Info("pool member ready", "pool", def.Name, "vm", vm.Name)
	return vm.ID, nil
}

// memberOptions are the options of a VM made for pool def: its snapshot's
// source's (network policy, confinement), no lifetime.
func (e *Engine) memberOptions(def model.Pool, pool string) (model.VMOptions, error) {
	snap, err := e.readSnapshot(def.Snapshot)
	if err != nil {
		return model.VMOptions{}, fmt.Errorf("pool %q: %w", def.Name, err)
	}
	opts := snap.Spec.Options
	opts.From, opts.Pool = def.Snapshot, pool
	opts.ExpiresAt, opts.TTLAction, opts.IdleTimeoutSeconds = time.Time{}, "", 0
	return opts, nil
}

// memberName is a new member's name: the pool's, a short random suffix.
func memberName(pool string) string {
	base := pool
	if len(base) > model.MaxNameLen-7 {
		base = base[:model.MaxNameLen-7]
	}
	return strings.TrimRight(base, "-") + "-" + newID()[:6]
}

// poolsFollow keeps the ready lists true to events: a ready member deleted
// or stopped (by hand, or its VMM died) leaves its pool, a stopped one is
// deleted, and the pool makes another.
func (e *Engine) poolsFollow(ev Event) {
	pool := ev.VM.Spec.Options.Pool
	if pool == "" || (ev.Kind != EventDeleted && ev.Kind != EventStopped) {
		return
	}
	e.pools.mu.Lock()
	pr := e.pools.runs[pool]
	found := false
	if pr != nil {
		if i := slices.Index(pr.ready, ev.VM.ID); i >= 0 {
			pr.ready = slices.Delete(pr.ready, i, i+1)
			found = true
		}
	}
	ctx := e.pools.ctx
	e.pools.mu.Unlock()
	if !found {
		return
	}
	if ev.Kind == EventStopped && ctx != nil {
		name := ev.VM.Name
		go func() {
			if err := e.DeleteVM(withCause(ctx, "pool member stopped"), name, true); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				e.log.Warn("removing a stopped pool member", "vm", name, "err", err)
			}
		}()
	}
	e.kickPool(pool)
}
