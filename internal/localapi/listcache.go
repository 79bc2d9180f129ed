package localapi

import (
	"context"
	"encoding/json"
	"sort"
	"sync"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
)

// listCache keeps every VM's list entry (the record as JSON, without live
// facts) in memory in list order, so listing 10,000 VMs is a concatenation
// instead of a table scan and an encode. It holds bytes only (about 1 KB a
// VM), not records, to keep the daemon small. Every VM write the daemon
// makes goes through putVM or dropVM; it is filled from the store on the
// first list.
type listCache struct {
	mu      sync.RWMutex
	loaded  bool
	entries []*listEntry // sorted by (created, name), as the store lists
	byID    map[string]*listEntry
}

type listEntry struct {
	id      string
	created int64
	name    string
	running bool // recorded running: the view needs live facts
	json    []byte
}

func entryFor(vm model.VMRecord) (*listEntry, error) {
	b, err := json.Marshal(api.VM{VMRecord: vm})
	if err != nil {
		return nil, err
	}
	return &listEntry{id: vm.ID, created: vm.CreatedAt.UnixNano(), name: vm.Name, running: vm.Runtime.State == model.StateRunning, json: b}, nil
}

func (c *listCache) less(a *listEntry, created int64, name string) bool {
	return a.created < created || (a.created == created && a.name < name)
}

// load fills the cache from the store once.
func (c *listCache) load(ctx context.Context, list func(context.Context) ([]model.VMRecord, error)) error {
	c.mu.RLock()
	loaded := c.loaded
	c.mu.RUnlock()
	if loaded {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loaded {
		return nil
	}
	vms, err := list(ctx)
	if err != nil {
		return err
	}
	c.entries = make([]*listEntry, 0, len(vms))
	c.byID = make(map[string]*listEntry, len(vms))
	for _, vm := range vms {
		e, err := entryFor(vm)
		if err != nil {
			return err
		}
		c.entries = append(c.entries, e)
		c.byID[vm.ID] = e
	}
	sort.SliceStable(c.entries, func(i, j int) bool { return c.less(c.entries[i], c.entries[j].created, c.entries[j].name) })
	c.loaded = true
	return nil
}

// put records vm's current row (insert or update).
func (c *listCache) put(vm model.VMRecord) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded {
		return
	}
	e, err := entryFor(vm)
	if err != nil {
		c.loaded = false // reload from the store next time
		return
	}
	if old, ok := c.byID[vm.ID]; ok {
		*old = *e
		return
	}
	i := sort.Search(len(c.entries), func(i int) bool { return !c.less(c.entries[i], e.created, e.name) })
	c.entries = append(c.entries, nil)
	copy(c.entries[i+1:], c.entries[i:])
	c.entries[i] = e
	c.byID[vm.ID] = e
}

// drop forgets a deleted VM.
func (c *listCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byID[id]
	if !ok {
		return
	}
	delete(c.byID, id)
	i := sort.Search(len(c.entries), func(i int) bool { return !c.less(c.entries[i], e.created, e.name) })
	for ; i < len(c.entries); i++ {
		if c.entries[i] == e {
			c.entries = append(c.entries[:i], c.entries[i+1:]...)
			return
		}
	}
}

// each calls fn with every entry in list order, under the read lock.
func (c *listCache) each(fn func(e *listEntry) error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, e := range c.entries {
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// follow keeps the cache in step with the store's vms table through the
// engine's events.
func (c *listCache) follow(ev engine.Event) {
	switch ev.Kind {
	case engine.EventUpdated, engine.EventStarted, engine.EventStopped, engine.EventClaimed:
		// A claim renames a pool member and makes it an ordinary VM.
		c.put(ev.VM)
	case engine.EventDeleted:
		c.drop(ev.VM.ID)
	}
}
