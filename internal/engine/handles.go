package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// handleCache is the daemon's in-memory view of what is currently true about
// each VM (VMM process, tap, loops, dm). It never touches SQLite; handles.json
// in each VM's directory is its crash-surviving scratch copy.
type handleCache struct {
	mu sync.RWMutex
	m  map[string]model.VMHandles // by VM id
}

func newHandleCache() *handleCache { return &handleCache{m: make(map[string]model.VMHandles)} }

func (c *handleCache) get(id string) (model.VMHandles, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	h, ok := c.m[id]
	return h, ok
}

func (c *handleCache) set(id string, h model.VMHandles) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[id] = h
}

func (c *handleCache) delete(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, id)
}

func (c *handleCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// writeHandlesFile stores h in path atomically: temp file, fsync, rename,
// fsync the directory. A crash leaves the old file or the new, never half.
func writeHandlesFile(path string, h model.VMHandles) error {
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, append(b, '\n'), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(mode); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// errCorruptHandles marks a handles file that exists but cannot be parsed.
var errCorruptHandles = errors.New("corrupt handles file")

// readHandlesFile loads a scratch file. A missing file is zero handles and
// no error; a corrupt one is zero handles and errCorruptHandles.
func readHandlesFile(path string) (model.VMHandles, error) {
	var h model.VMHandles
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return model.VMHandles{}, fmt.Errorf("%s: %w: %v", path, errCorruptHandles, err)
	}
	return h, nil
}

func removeHandlesFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// rediscoverHandles rebuilds a VM's handles: the scratch file for kernel
// objects (tap, loops, dm), and the OS for the process, which it prefers
// over the scratch file (the process whose argv holds exactly this VM's
// identity). When no process is found it still returns the scratch
// contents, without a PID, so teardown can check and remove the kernel
// objects. The scratch file is a hint: every undo proves before it acts.
func (e *Engine) rediscoverHandles(vm model.VMRecord) (model.VMHandles, error) {
	return rediscover(vm, e.findVMM)
}

func rediscover(vm model.VMRecord, find func(model.VMRecord) (system.Process, bool)) (model.VMHandles, error) {
	h, err := readHandlesFile(handlesPath(vm))
	if p, ok := find(vm); ok {
		h.PID, h.PIDStart = p.PID, p.Start
	} else {
		h.PID, h.PIDStart = 0, 0
	}
	return h, err
}
