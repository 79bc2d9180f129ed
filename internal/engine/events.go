package engine

import (
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// EventKind names what happened to a VM.
type EventKind string

// The events the engine emits. Updated follows every write of a VM's
// record (state changes included); Started, Stopped and Deleted mark the
// lifecycle edges publishers act on.
const (
	EventUpdated EventKind = "updated"
	EventStarted EventKind = "started"
	EventStopped EventKind = "stopped"
	EventDeleted EventKind = "deleted"
)

// Event is one thing that happened to a VM, with the record as it was then.
type Event struct {
	Kind EventKind
	VM   model.VMRecord
	Time time.Time
}

// eventBus delivers events to subscribers synchronously, in order, on the
// goroutine that made the change (the VM's lock is held): subscribers must
// be quick and must not call back into the engine for the same VM.
type eventBus struct {
	mu   sync.RWMutex
	subs []func(Event)
}

// Subscribe registers fn for every event from now on. Publishers (DNS,
// port forwards) and the local API's list cache subscribe at wiring time.
func (e *Engine) Subscribe(fn func(Event)) {
	e.events.mu.Lock()
	defer e.events.mu.Unlock()
	e.events.subs = append(e.events.subs, fn)
}

func (e *Engine) emit(kind EventKind, vm model.VMRecord) {
	ev := Event{Kind: kind, VM: vm, Time: e.deps.Now().UTC()}
	e.events.mu.RLock()
	subs := e.events.subs
	e.events.mu.RUnlock()
	for _, fn := range subs {
		fn(ev)
	}
}
