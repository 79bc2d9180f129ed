// Package events is the daemon's event log: it follows the engine's events,
// keeps the lifecycle ones (created, started, stopped, deleted, ttl-expired,
// vmm-exited, reconciled, gc-removed, ...) with their times and causes in a
// bounded table of the store, and streams them live to followers.
//
// The engine calls Handle synchronously with a VM's lock held, so Handle
// only numbers the event, queues it and hands it to followers; one writer
// goroutine stores queued events in batches. Readers wait for what was
// queued before they asked to be written, so a list never misses an event
// that happened before it.
package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
)

// DefaultKeep is how many events the log keeps when not configured.
const DefaultKeep = 10000

// followerBuffer is how many events a follower may lag behind before it is
// dropped (its stream ends with ErrFellBehind).
const followerBuffer = 1024

// ErrFellBehind ends a follower that did not keep up.
var ErrFellBehind = errors.New("event stream fell behind; follow again")

// Store is what the log needs of the store.
type Store interface {
	AppendEvents(ctx context.Context, evs []model.Event, keep int) error
	ListEvents(ctx context.Context, vmName string, after int64) ([]model.Event, error)
	LastEventSeq(ctx context.Context) (int64, error)
}

// Log is the event log of one daemon.
type Log struct {
	st   Store
	keep int
	log  *slog.Logger

	mu        sync.Mutex
	cond      *sync.Cond // signals the writer (queue filled, closed) and readers (written)
	seq       int64      // last number given
	written   int64      // last number stored (or given up on)
	queue     []model.Event
	followers map[*follower]struct{}
	closed    bool
	done      chan struct{} // closed when the writer returned
}

type follower struct {
	vm string
	ch chan model.Event
}

// New makes a log over st, keeping its newest keep events (DefaultKeep
// when keep <= 0), and starts its writer; Close stops it.
func New(ctx context.Context, st Store, keep int, logger *slog.Logger) (*Log, error) {
	if keep <= 0 {
		keep = DefaultKeep
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	last, err := st.LastEventSeq(ctx)
	if err != nil {
		return nil, err
	}
	l := &Log{st: st, keep: keep, log: logger, seq: last, written: last, followers: map[*follower]struct{}{}, done: make(chan struct{})}
	l.cond = sync.NewCond(&l.mu)
	go l.write()
	return l, nil
}

// Entry turns an engine event into a log entry; ok is false for events the
// log does not keep (record updates, re-announced states).
func Entry(ev engine.Event) (model.Event, bool) {
	if ev.Kind == engine.EventUpdated || ev.Replay {
		return model.Event{}, false
	}
	cause := ev.Cause
	if cause == "" {
		switch ev.Kind {
		case engine.EventCreated, engine.EventStarted, engine.EventStopped, engine.EventDeleted:
			cause = "request"
		}
	}
	return model.Event{Time: ev.Time, Kind: string(ev.Kind), VMID: ev.VM.ID, VMName: ev.VM.Name, Cause: cause,
		TookMillis: ev.Took.Milliseconds()}, true
}

// Handle follows an engine event (engine.Subscribe).
func (l *Log) Handle(ev engine.Event) {
	e, ok := Entry(ev)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.seq++
	e.Seq = l.seq
	l.queue = append(l.queue, e)
	l.cond.Broadcast()
	for f := range l.followers {
		if f.vm != "" && f.vm != e.VMName {
			continue
		}
		select {
		case f.ch <- e:
		default:
			close(f.ch)
			delete(l.followers, f)
		}
	}
}

// write stores queued events in batches until Close.
func (l *Log) write() {
	defer close(l.done)
	for {
		l.mu.Lock()
		for len(l.queue) == 0 && !l.closed {
			l.cond.Wait()
		}
		batch, closed := l.queue, l.closed
		l.queue = nil
		l.mu.Unlock()
		if len(batch) > 0 {
			if err := l.st.AppendEvents(context.Background(), batch, l.keep); err != nil {
				l.log.Error("storing events", "n", len(batch), "err", err)
			}
			l.mu.Lock()
			l.written = batch[len(batch)-1].Seq
			l.cond.Broadcast()
			l.mu.Unlock()
		}
		if closed && len(batch) == 0 {
			return
		}
	}
}

// flushed waits until every event numbered up to seq is stored.
func (l *Log) flushed(seq int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.written < seq && !l.closed {
		l.cond.Wait()
	}
}

// List returns the kept events, oldest first; with vm, only that VM's.
func (l *Log) List(ctx context.Context, vm string) ([]model.Event, error) {
	l.mu.Lock()
	upto := l.seq
	l.mu.Unlock()
	l.flushed(upto)
	return l.st.ListEvents(ctx, vm, 0)
}

// Mentions reports whether a kept event names vm.
func (l *Log) Mentions(ctx context.Context, vm string) (bool, error) {
	evs, err := l.List(ctx, vm)
	return len(evs) > 0, err
}

// Follow calls fn with the kept events (vm's only, when vm is set), then
// with each new one as it happens, until ctx ends (nil), fn fails (its
// error), the log closes (nil) or the follower falls behind
// (ErrFellBehind). No event is missed or repeated between the two.
func (l *Log) Follow(ctx context.Context, vm string, fn func(model.Event) error) error {
	f := &follower{vm: vm, ch: make(chan model.Event, followerBuffer)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.followers[f] = struct{}{}
	upto := l.seq
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		if _, ok := l.followers[f]; ok {
			delete(l.followers, f)
			close(f.ch)
		}
		l.mu.Unlock()
	}()
	l.flushed(upto)
	past, err := l.st.ListEvents(ctx, vm, 0)
	if err != nil {
		return err
	}
	for _, e := range past {
		if e.Seq > upto {
			break // also queued for the follower: sent below
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-f.ch:
			if !ok {
				l.mu.Lock()
				closed := l.closed
				l.mu.Unlock()
				if closed {
					return nil
				}
				return ErrFellBehind
			}
			if e.Seq <= upto {
				continue
			}
			if err := fn(e); err != nil {
				return err
			}
		}
	}
}

// Close stores what is queued, ends every follower and stops the writer.
func (l *Log) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return
	}
	l.closed = true
	for f := range l.followers {
		close(f.ch)
		delete(l.followers, f)
	}
	l.cond.Broadcast()
	l.mu.Unlock()
	<-l.done
}
