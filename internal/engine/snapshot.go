package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Snapshots: a named point in time of a VM (its memory and device state,
// root and work disks), taken from a running VM (paused briefly while its
// state is saved and its disks copied) or a suspended one. New VMs are made
// from one (vm create --from, vm fork): each gets its own id, name, IP,
// MAC, DNS name, tap and disk copies, and on its first start the snapshot's
// state is restored with the link down, the guest agent gives it its
// identity (MAC, address, hostname, fresh entropy, a new SSH host key, the
// clock), and only then its link comes up. Snapshots live in
// STATE_DIR/snapshots/<name> with a meta.json.

// Snapshot describes a snapshot.
type Snapshot struct {
	Name       string       `json:"name"`
	SourceVM   string       `json:"source_vm"`
	SourceID   string       `json:"source_id"`
	Image      string       `json:"image"`
	VMM        string       `json:"vmm"`
	Accel      string       `json:"accel"`
	Spec       model.VMSpec `json:"spec"`
	State      string       `json:"state"`              // the VMM's saved state file
	MemFile    string       `json:"mem_file,omitempty"` // Firecracker's guest memory file
	RootDisk   string       `json:"root_disk"`
	WorkDisk   string       `json:"work_disk"`
	Size       int64        `json:"size"` // bytes on disk, all files
	CreatedAt  time.Time    `json:"created_at"`
	Temporary  bool         `json:"temporary,omitempty"` // made by vm fork, removed after
	UsedBy     []string     `json:"used_by,omitempty"`   // VMs made from it not yet started
	Pools      []string     `json:"pools,omitempty"`     // warm pools made from it
	VMMVersion string       `json:"vmm_version,omitempty"`
	// Sessions were running in the source when it was taken: a clone ends
	// its copies of them and lists them as forked.
	Sessions []model.GuestSession `json:"sessions,omitempty"`
}

// StateForgetter is a VMM driver that keeps something derived from a
// snapshot's state file (the QEMU driver's split of its memory): the engine
// tells it when the file goes away.
type StateForgetter interface {
	ForgetState(file string)
}

// forgetSnapshotState tells snap's VMM driver the snapshot is gone.
func (e *Engine) forgetSnapshotState(snap Snapshot) {
	if drv, err := e.driverFor(snap.VMM); err == nil && snap.State != "" {
		if f, ok := drv.(StateForgetter); ok {
			f.ForgetState(snap.State)
		}
	}
}

// SnapshotSaver is what the engine needs of a VMM to snapshot and clone.
type SnapshotSaver interface {
	SaveForSnapshot(ctx context.Context, m vmm.Machine, p system.Process, file string) error
	Resume(ctx context.Context, m vmm.Machine, p system.Process) error
	PrepareClone(ctx context.Context, m vmm.Machine, id vmm.CloneIdentity) (pub string, priv []byte, err error)
	// PingAgent asks the guest agent of m's running guest for an answer.
	PingAgent(ctx context.Context, m vmm.Machine) error
}

// agentCheckTimeout bounds the wait for a running source's guest agent
// before a snapshot: a busy TCG guest answers in well under a second.
var agentCheckTimeout = 10 * time.Second

// checkAgent refuses to snapshot a running VM whose guest has no agent
// answering: no clone of it could get an identity of its own (its start
// would wait for the agent and fail a minute later). An answer is
// remembered for the VMM process it came from.
func (e *Engine) checkAgent(ctx context.Context, saver SnapshotSaver, vm model.VMRecord, m vmm.Machine, h model.VMHandles) error {
	if v, ok := e.agents.Load(vm.ID); ok && v.(uint64) == h.PIDStart && h.PIDStart != 0 {
		return nil
	}
	actx, cancel := context.WithTimeout(ctx, agentCheckTimeout)
	defer cancel()
	if err := saver.PingAgent(actx, m); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errdefs.Conflict("vm %q: its guest did not answer on banger's guest agent channel (%v): snapshots and forks need the agent in the guest to give each clone its own identity; images built or pulled by this banger have it, older ones do not (build or pull them again)", vm.Name, err)
	}
	e.agentAnswered(vm.ID, h)
	return nil
}

// agentAnswered remembers that VM id's agent answered in the VMM of h.
func (e *Engine) agentAnswered(id string, h model.VMHandles) {
	if h.PIDStart != 0 {
		e.agents.Store(id, h.PIDStart)
	}
}

func (e *Engine) snapshotDir(name string) string {
	return filepath.Join(e.cfg.StateDir, "snapshots", name)
}

func (e *Engine) readSnapshot(name string) (Snapshot, error) {
	var s Snapshot
	if err := validName(name); err != nil {
		return s, errdefs.Invalid("snapshot %w", err)
	}
	b, err := os.ReadFile(filepath.Join(e.snapshotDir(name), "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return s, errdefs.NotFound("snapshot %q not found", name)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("snapshot %q: %w", name, err)
	}
	return s, nil
}

// GetSnapshot describes a snapshot and the VMs that still need it.
func (e *Engine) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	s, err := e.readSnapshot(name)
	if err != nil {
		return s, err
	}
	vms, _ := e.store.ListVMs(ctx)
	for _, vm := range vms {
		if vm.Spec.Options.From == name && !fileExists(rootDiskPath(vm)) {
			s.UsedBy = append(s.UsedBy, vm.Name)
		}
	}
	s.Pools = e.poolsUsing(ctx, name)
	return s, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// ListSnapshots lists the snapshots, oldest first.
func (e *Engine) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	ents, err := os.ReadDir(filepath.Join(e.cfg.StateDir, "snapshots"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	out := []Snapshot{}
	for _, ent := range ents {
		if s, err := e.GetSnapshot(ctx, ent.Name()); err == nil {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out, nil
}

// DeleteSnapshot removes a snapshot no VM still needs.
func (e *Engine) DeleteSnapshot(ctx context.Context, name string) error {
	s, err := e.GetSnapshot(ctx, name)
	if errors.Is(err, errdefs.ErrNotFound) && validName(name) == nil && fileExists(e.snapshotDir(name)) {
		// A snapshot interrupted before its meta.json (a crash while saving)
		// is no snapshot; its directory is removed so the name is free.
		e.log.Info("removing an incomplete snapshot", "snapshot", name)
		return os.RemoveAll(e.snapshotDir(name))
	}
	if err != nil {
		return err
	}
	if len(s.Pools) > 0 {
		return errdefs.Conflict("snapshot %q is used by pool %s: delete the pool first (banger pool delete)", name, strings.Join(s.Pools, ", "))
	}
	if len(s.UsedBy) > 0 {
		return errdefs.Conflict("snapshot %q is needed by vm %s (not started yet): start or delete them first", name, strings.Join(s.UsedBy, ", "))
	}
	defer e.forgetSnapshotState(s)
	return os.RemoveAll(e.snapshotDir(name))
}

// SnapshotVM takes a named snapshot of a running or suspended VM. A running
// VM is paused while its state is saved and its disks copied, then goes on.
func (e *Engine) SnapshotVM(ctx context.Context, vmName, snapName string) (Snapshot, error) {
	var snap Snapshot
	_, err := e.locked(ctx, vmName, func(vm *model.VMRecord) error {
		var err error
		snap, err = e.snapshotLocked(ctx, vm, snapName, false)
		return err
	})
	return snap, err
}

func (e *Engine) snapshotLocked(ctx context.Context, vm *model.VMRecord, name string, temporary bool) (Snapshot, error) {
	if name == "" {
		name = vm.Name + "-" + e.deps.Now().UTC().Format("20060102-150405")
		if len(name) > model.MaxNameLen {
			name = "snap-" + newID()[:12]
		}
	}
	if err := validName(name); err != nil {
		return Snapshot{}, errdefs.Invalid("snapshot %w", err)
	}
	dir := e.snapshotDir(name)
	if fileExists(dir) {
		return Snapshot{}, errdefs.AlreadyExists("snapshot %q already exists (banger snapshot delete %s frees the name)", name, name)
	}
	if vm.Spec.Options.Pool != "" {
		return Snapshot{}, errPoolMember(*vm)
	}
	if vm.Runtime.RootDiskMethod == "dm-snapshot" {
		return Snapshot{}, errdefs.Conflict("vm %q: snapshots of dm-snapshot root disks are not supported yet", vm.Name)
	}
	suspended := vm.Runtime.State == model.StateSuspended
	var saver SnapshotSaver
	if !suspended {
		if alive, reason := e.vmAlive(ctx, *vm); !alive {
			return Snapshot{}, errdefs.Conflict("vm %q is not running or suspended (%s): nothing to snapshot", vm.Name, reason)
		}
		drv, err := e.driverFor(vm.Runtime.VMM)
		if err != nil {
			return Snapshot{}, err
		}
		var ok bool
		if saver, ok = drv.(SnapshotSaver); !ok {
			return Snapshot{}, errdefs.Conflict("vm %q: snapshots of running %s VMs are not supported yet (suspend it first)", vm.Name, vm.Runtime.VMM)
		}
	}
	var h model.VMHandles
	var m vmm.Machine
	if !suspended {
		h, _ = e.handles.get(vm.ID)
		m = e.machine(*vm, model.Image{}, "", h)
		if err := e.checkAgent(ctx, saver, *vm, m, h); err != nil {
			return Snapshot{}, err
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return Snapshot{}, err
	}
	fail := func(err error) (Snapshot, error) {
		os.RemoveAll(dir)
		return Snapshot{}, err
	}
	snap := Snapshot{Name: name, SourceVM: vm.Name, SourceID: vm.ID, Image: vm.Image, VMM: vm.Runtime.VMM, Accel: vm.Runtime.Accel,
		Spec: vm.Spec, RootDisk: filepath.Join(dir, "root.img"), WorkDisk: filepath.Join(dir, "work.ext4"),
		CreatedAt: e.deps.Now().UTC(), Temporary: temporary}
	snap.Spec.Options.From = ""
	snap.Spec.Options.Pool = ""
	if ss, err := e.store.ListSessions(ctx, vm.ID); err == nil {
		for _, s := range ss {
			if s.Status == model.SessionRunning {
				snap.Sessions = append(snap.Sessions, s)
			}
		}
	}
	copyDisks := func() error {
		for _, c := range [][2]string{{rootDiskPath(*vm), snap.RootDisk}, {vm.Runtime.WorkDiskPath, snap.WorkDisk}} {
			if _, err := e.deps.Runner.Run(ctx, "cp", "--reflink=auto", "--sparse=always", c[0], c[1]); err != nil {
				return fmt.Errorf("copying %s: %w", c[0], err)
			}
		}
		return nil
	}
	start := time.Now()
	if suspended {
		in, err := readIncoming(*vm)
		if err != nil {
			return fail(errdefs.Conflict("vm %q: its saved state: %w", vm.Name, err))
		}
		snap.State = filepath.Join(dir, filepath.Base(in.File))
		if _, err := e.deps.Runner.Run(ctx, "cp", "--reflink=auto", "--sparse=always", in.File, snap.State); err != nil {
			return fail(err)
		}
		if in.MemFile != "" {
			snap.MemFile = filepath.Join(dir, filepath.Base(in.MemFile))
			if _, err := e.deps.Runner.Run(ctx, "cp", "--reflink=auto", "--sparse=always", in.MemFile, snap.MemFile); err != nil {
				return fail(err)
			}
		}
		snap.VMMVersion = in.VMMVersion
		if err := copyDisks(); err != nil {
			return fail(err)
		}
	} else {
		p := system.Process{PID: h.PID, Start: h.PIDStart}
		snap.State = filepath.Join(dir, "qemu.state")
		if err := saver.SaveForSnapshot(ctx, m, p, snap.State); err != nil {
			return fail(fmt.Errorf("snapshot of vm %q: %w", vm.Name, err))
		}
		err := copyDisks()
		if rerr := saver.Resume(context.WithoutCancel(ctx), m, p); rerr != nil {
			e.log.Error("resuming a vm after its snapshot", "vm", vm.Name, "err", rerr)
		}
		if err != nil {
			return fail(err)
		}
	}
	for _, f := range []string{snap.State, snap.MemFile, snap.RootDisk, snap.WorkDisk} {
		if st, err := os.Stat(f); err == nil {
			snap.Size += st.Size()
		}
	}
	if err := hit(ctx, fpSnapshotMetaBefore); err != nil {
		return fail(err)
	}
	b, _ := json.MarshalIndent(snap, "", "  ")
	if err := writeFileAtomic(filepath.Join(dir, "meta.json"), b, 0o600); err != nil {
		return fail(err)
	}
	e.log.Info("snapshot taken", "vm", vm.Name, "snapshot", name, "took", time.Since(start))
	return snap, nil
}

// checkFrom validates a create's snapshot and takes its machine.
func (e *Engine) checkFrom(req *CreateSpec) error {
	snap, err := e.readSnapshot(req.Options.From)
	if err != nil {
		return err
	}
	if req.Image != "" && req.Image != snap.Image {
		return errdefs.Invalid("vm from snapshot %q runs its image %q, not %q", snap.Name, snap.Image, req.Image)
	}
	drv, err := e.driverFor(snap.VMM)
	if err != nil {
		return err
	}
	if _, ok := drv.(SnapshotSaver); !ok {
		return errdefs.Conflict("%s cannot clone VMs from snapshots yet", snap.VMM)
	}
	req.Image = snap.Image
	req.VMM = snap.VMM
	// The restored machine must be the snapshot's.
	req.VCPUs, req.MemoryMiB = snap.Spec.VCPUs, snap.Spec.MemoryMiB
	req.DiskSizeBytes, req.WorkDiskBytes = snap.Spec.DiskSizeBytes, snap.Spec.WorkDiskBytes
	return nil
}

// cloneIncoming is the state a VM made from a snapshot restores at its
// first start (nil for any other start).
func (e *Engine) cloneIncoming(vm model.VMRecord) (*vmm.Incoming, *Snapshot, error) {
	if vm.Spec.Options.From == "" || fileExists(rootDiskPath(vm)) {
		return nil, nil, nil
	}
	snap, err := e.readSnapshot(vm.Spec.Options.From)
	if err != nil {
		return nil, nil, fmt.Errorf("vm %q is made from snapshot %q: %w", vm.Name, vm.Spec.Options.From, err)
	}
	// Clones share the snapshot's memory (docs/snapshots.md).
	return &vmm.Incoming{File: snap.State, MemFile: snap.MemFile, VMMVersion: snap.VMMVersion, ShareMemory: true}, &snap, nil
}

// copyFromSnapshot gives a clone its own copies of the snapshot's disks.
func (e *Engine) copyFromSnapshot(ctx context.Context, snap *Snapshot, from, to string) error {
	if fileExists(to) {
		return nil
	}
	tmp := to + ".partial"
	os.Remove(tmp)
	if _, err := e.deps.Runner.Run(ctx, "cp", "--reflink=auto", "--sparse=always", from, tmp); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("copying snapshot %q's disk: %w", snap.Name, err)
	}
	return os.Rename(tmp, to)
}

// identifyClone gives a restored clone its own identity (see PrepareClone).
func (e *Engine) identifyClone(ctx context.Context, r *run) error {
	saver, ok := r.drv.(SnapshotSaver)
	if !ok {
		return errdefs.Conflict("%s cannot clone VMs yet", r.vm.Runtime.VMM)
	}
	nc := e.NetConfig()
	gw := nc.Gateway()
	pfx := nc.Subnet.Bits()
	if !gw.IsValid() {
		gw = netip.IPv4Unspecified()
	}
	m := e.machine(*r.vm, r.im, r.rootDev, r.h)
	ictx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	began := time.Now()
	key, priv, err := saver.PrepareClone(ictx, m, vmm.CloneIdentity{MAC: r.vm.Runtime.GuestMAC, IP: r.vm.Runtime.GuestIP, PrefixLen: pfx,
		Gateway: gw.String(), Hostname: r.vm.Name})
	if err != nil {
		return err
	}
	agentTook := time.Since(began)
	// Where a slow identity step went: the guest's agent, or the host
	// keeping the key (an fsync).
	defer func() {
		e.log.Info("clone identity", "vm", r.vm.Name, "agent", agentTook.Round(100*time.Microsecond),
			"host_key", (time.Since(began) - agentTook).Round(100*time.Microsecond))
	}()
	// The guest keeps a key the host made on tmpfs only (a write to its
	// disk's file system costs a clone just restored hundreds of ms of CPU
	// under TCG): the host keeps it and writes it to the clone's disk
	// before its next cold boot (writeGuestConfig).
	e.agentAnswered(r.vm.ID, r.h)
	if err := saveCloneHostKey(*r.vm, priv); err != nil {
		return err
	}
	// The clone's new host key, as its agent reported it over the host-only
	// channel, is pinned before anything connects: the first SSH contact is
	// already checked.
	if err := guest.PinHostKey(knownHostsPath(*r.vm), e.guestAddr(*r.vm), key); err != nil {
		return fmt.Errorf("pinning the clone's host key: %w", err)
	}
	return nil
}

// cloneHostKeyPath holds a clone's SSH host key (dropbear's file format, or
// OpenSSH's for a guest that runs OpenSSH's server),
// made by the host at its restore; absent when the guest made its own.
func cloneHostKeyPath(vm model.VMRecord) string {
	return filepath.Join(vm.Runtime.VMDir, "ssh_host_key")
}

// saveCloneHostKey keeps priv for the clone's next cold boot (mode 0600,
// written atomically), or forgets an earlier key when the guest made this
// one itself (nil).
func saveCloneHostKey(vm model.VMRecord, priv []byte) error {
	p := cloneHostKeyPath(vm)
	if priv == nil {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("forgetting the clone's old host key: %w", err)
		}
		return nil
	}
	if err := writeFileAtomic(p, priv, 0o600); err != nil {
		return fmt.Errorf("keeping the clone's host key: %w", err)
	}
	return nil
}

// forkSessions ends, in a new clone, the sessions that were running in its
// source when the snapshot was taken, and records them for the clone as
// forked, with their logs up to that point.
func (e *Engine) forkSessions(ctx context.Context, vm model.VMRecord, snap *Snapshot) error {
	if snap == nil || len(snap.Sessions) == 0 {
		return nil
	}
	gc, err := e.guests.get(poolAccess(ctx), vm, time.Minute)
	if err != nil {
		return fmt.Errorf("ending the source's sessions in the clone: %w", err)
	}
	now := e.deps.Now().UTC()
	for _, s := range snap.Sessions {
		id := newID()
		if err := gc.ForkSession(ctx, s.ID, id); err != nil {
			return err
		}
		dir := path.Join(guest.SessionsDir, id)
		s.ID, s.VMID, s.Status, s.EndedAt, s.ExitCode = id, vm.ID, model.SessionForked, &now, nil
		s.StdoutPath, s.StderrPath = path.Join(dir, "stdout.log"), path.Join(dir, "stderr.log")
		if err := e.store.CreateSession(ctx, s); err != nil && !errors.Is(err, errdefs.ErrAlreadyExists) {
			return fmt.Errorf("recording forked session %q: %w", s.Name, err)
		}
	}
	return nil
}

// ForkVM makes count new VMs from a running VM (snapshotted on the fly; it
// pauses briefly and goes on) and starts them.
func (e *Engine) ForkVM(ctx context.Context, name string, count int) ([]model.VMRecord, error) {
	if count < 1 || count > 100 {
		return nil, errdefs.Invalid("invalid fork count %d: want 1 to 100", count)
	}
	var snap Snapshot
	src, err := e.locked(ctx, name, func(vm *model.VMRecord) error {
		var err error
		snap, err = e.snapshotLocked(ctx, vm, "fork-"+newID()[:12], true)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		os.RemoveAll(e.snapshotDir(snap.Name))
		e.forgetSnapshotState(snap)
	}()
	// Clones are made one at a time (names and addresses are allocated
	// under the store's lock) and started together.
	var names []string
	for range count {
		vm, err := e.CreateVM(ctx, CreateSpec{Name: forkName(src.Name), Options: model.VMOptions{From: snap.Name,
			Unconfined: src.Spec.Options.Unconfined, CPUQuota: src.Spec.Options.CPUQuota, Net: src.Spec.Options.Net}})
		if err != nil {
			for _, n := range names {
				e.DeleteVM(context.WithoutCancel(ctx), n, true)
			}
			return nil, fmt.Errorf("fork %d of %d: %w", len(names)+1, count, err)
		}
		names = append(names, vm.Name)
	}
	started := make([]model.VMRecord, count)
	errs := make([]error, count)
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started[i], errs[i] = e.StartVM(ctx, n)
		}()
	}
	wg.Wait()
	var out []model.VMRecord
	var failed []error
	for i, n := range names {
		if errs[i] != nil {
			e.DeleteVM(context.WithoutCancel(ctx), n, true)
			failed = append(failed, fmt.Errorf("fork %s: %w", n, errs[i]))
			continue
		}
		out = append(out, started[i])
	}
	return out, errors.Join(failed...)
}

func forkName(src string) string {
	base := src
	if len(base) > 20 {
		base = base[:20]
	}
	return fmt.Sprintf("%s-fork-%s", strings.TrimRight(base, "-"), newID()[:6])
}

// sweepLeftovers runs once after startup reconcile and removes what an
// interrupted operation of an earlier daemon left in the state dir, all of
// it older than this daemon: snapshot directories without a meta.json (a
// save or disk copy cut short), temporary fork snapshots no unstarted clone
// needs, and atomic-write temporaries (".NAME.tmp*") in VM directories.
func (e *Engine) sweepLeftovers(ctx context.Context, before time.Time) {
	old := func(p string) bool {
		st, err := os.Lstat(p)
		return err == nil && st.ModTime().Before(before)
	}
	root := filepath.Join(e.cfg.StateDir, "snapshots")
	ents, _ := os.ReadDir(root)
	for _, ent := range ents {
		name := ent.Name()
		dir := filepath.Join(root, name)
		if !ent.IsDir() || validName(name) != nil || !old(dir) {
			continue
		}
		s, err := e.GetSnapshot(ctx, name)
		switch {
		case errors.Is(err, errdefs.ErrNotFound) && !fileExists(filepath.Join(dir, "meta.json")):
			e.log.Info("removing an incomplete snapshot left by an interrupted save", "snapshot", name)
		case err == nil && s.Temporary && len(s.UsedBy) == 0 && len(s.Pools) == 0:
			e.log.Info("removing a fork's temporary snapshot left by an interrupted fork", "snapshot", name)
		default:
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			e.log.Warn("removing a leftover snapshot", "snapshot", name, "err", err)
		}
	}
	vms, err := e.store.ListVMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		for _, dir := range []string{vm.Runtime.VMDir, suspendDir(vm)} {
			tmps, _ := filepath.Glob(filepath.Join(dir, ".*.tmp*"))
			for _, t := range tmps {
				if st, err := os.Lstat(t); err == nil && st.Mode().IsRegular() && old(t) {
					e.log.Info("removing a temporary file left by an interrupted write", "file", t)
					os.Remove(t)
				}
			}
		}
	}
}
