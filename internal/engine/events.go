package engine

import (
	"context"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// EventKind names what happened to a VM.
type EventKind string

// The events the engine emits. Updated follows every write of a VM's
// record (state changes included); Started, Stopped and Deleted mark the
// lifecycle edges publishers act on. The others say why something happened
// or report what the daemon found; the event log records them all but
// Updated.
const (
	EventUpdated EventKind = "updated"
	EventCreated EventKind = "created"
	EventStarted EventKind = "started"
	EventStopped EventKind = "stopped"
	EventDeleted EventKind = "deleted"
	// Suspended and Resumed are reserved for VM snapshots (not yet).
	EventSuspended  EventKind = "suspended"
	EventResumed    EventKind = "resumed"
	EventTTLExpired EventKind = "ttl-expired"
	EventVMMExited  EventKind = "vmm-exited" // the VMM exited on its own while the daemon ran
	EventReconciled EventKind = "reconciled" // startup reconcile kept or demoted a VM (Cause says which)
	EventGCRemoved  EventKind = "gc-removed" // gc removed an orphaned host object (Cause names it)
	EventClaimed    EventKind = "claimed"    // a warm pool's member was handed over (Prev: its member name)
)

// Event is one thing that happened to a VM, with the record as it was then.
type Event struct {
	Kind EventKind
	VM   model.VMRecord
	Time time.Time
	// Cause says why, in a few words ("ttl expired", "vmm exited"); empty
	// for an operation a client asked for.
	Cause string
	// Took is how long the operation took (start, stop, delete).
	Took time.Duration
	// Replay marks an edge announced again for subscribers that rebuild
	// their state (reconcile announcing a VM it kept as started): nothing
	// new happened, and the event log skips it.
	Replay bool
	// Prev is the VM's name before the event, when it changed (a pool
	// member claimed under the caller's name).
	Prev string
}

// eventBus delivers events to subscribers synchronously, in order, on the
// goroutine that made the change (the VM's lock is held): subscribers must
// be quick and must not call back into the engine for the same VM.
type eventBus struct {
	mu   sync.RWMutex
	subs []func(Event)
}

// Subscribe registers fn for every event from now on. Publishers (DNS,
// port forwards), the local API's list cache, the event log and the
// metrics subscribe at wiring time.
func (e *Engine) Subscribe(fn func(Event)) {
	e.events.mu.Lock()
	defer e.events.mu.Unlock()
	e.events.subs = append(e.events.subs, fn)
}

func (e *Engine) emit(kind EventKind, vm model.VMRecord) {
	e.emitEvent(Event{Kind: kind, VM: vm})
}

func (e *Engine) emitEvent(ev Event) {
	ev.Time = e.deps.Now().UTC()
	e.lives.follow(ev)
	e.poolsFollow(ev)
	e.events.mu.RLock()
	subs := e.events.subs
	e.events.mu.RUnlock()
	for _, fn := range subs {
		fn(ev)
	}
}

// causeKey carries why an operation runs (a TTL, an idle timeout, a
// restart) down to the events it emits.
type causeKey struct{}

// withCause marks ctx's operations as done for cause, unless a cause is set.
func withCause(ctx context.Context, cause string) context.Context {
	if causeOf(ctx) != "" {
		return ctx
	}
	return context.WithValue(ctx, causeKey{}, cause)
}

func causeOf(ctx context.Context) string {
	c, _ := ctx.Value(causeKey{}).(string)
	return c
}

// RecordGCRemoved tells the event log that gc removed a host object (of
// VM vmName, "" for none known).
func (e *Engine) RecordGCRemoved(kind, name, vmName, detail string) {
	cause := kind + " " + name
	if detail != "" {
		cause += " (" + detail + ")"
	}
	e.emitEvent(Event{Kind: EventGCRemoved, VM: model.VMRecord{Name: vmName}, Cause: cause})
}
