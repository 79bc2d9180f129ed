package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Console logs are written by the guest, so they are bounded: a running
// VM's log that grows past consoleLogMax is cut to its last consoleLogKeep
// bytes. Both VMMs write it in append mode, so cutting from outside is safe.
const (
	consoleLogMax  = 8 << 20
	consoleLogKeep = 1 << 20
)

// keepConsoles trims the console logs of running VMs until ctx is done.
func (e *Engine) keepConsoles(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.stopCh:
			return
		case <-t.C:
		}
		e.handles.mu.RLock()
		ids := make([]string, 0, len(e.handles.m))
		for id := range e.handles.m {
			ids = append(ids, id)
		}
		e.handles.mu.RUnlock()
		for _, id := range ids {
			vm, err := e.store.GetVMByID(ctx, id)
			if err != nil {
				continue
			}
			if cut, err := trimLog(vm.Runtime.LogPath, consoleLogMax, consoleLogKeep); err != nil {
				e.log.Warn("trimming console log", "vm", vm.Name, "err", err)
			} else if cut > 0 {
				e.log.Info("console log trimmed", "vm", vm.Name, "dropped_bytes", cut)
			}
		}
	}
}

// trimLog cuts path to its last keep bytes, after a marker line, when it is
// larger than max. It returns how many bytes were dropped.
func trimLog(path string, max, keep int64) (int64, error) {
	st, err := os.Stat(path)
	if err != nil || st.Size() <= max {
		return 0, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size := st.Size()
	tail := make([]byte, keep)
	n, err := f.ReadAt(tail, size-keep)
	if err != nil && err != io.EOF {
		return 0, err
	}
	tail = tail[:n]
	marker := []byte(fmt.Sprintf("[banger: console log over %d bytes; %d earlier bytes dropped]\n", max, size-keep))
	if _, err := f.WriteAt(append(marker, tail...), 0); err != nil {
		return 0, err
	}
	// Whatever the guest wrote since the read is lost with the cut; the
	// next writes land at the new end (append mode).
	if err := f.Truncate(int64(len(marker) + len(tail))); err != nil {
		return 0, err
	}
	return size - keep, nil
}

// ConsoleLog writes a VM's console log to w; with follow it keeps writing
// new output until ctx ends or the VM is deleted. A trimmed log or a new
// boot's log is read again from its start.
func (e *Engine) ConsoleLog(ctx context.Context, name string, follow bool, w io.Writer) error {
	vm, err := e.GetVM(ctx, name)
	if err != nil {
		return err
	}
	var off int64
	for {
		n, err := copyFileFrom(vm.Runtime.LogPath, off, w)
		if err != nil {
			return nil // the reader went away
		}
		off = n
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := e.store.GetVMByID(ctx, vm.ID); err != nil {
			return nil // deleted
		}
	}
}

// copyFileFrom writes path's bytes from off to its end to w and returns the
// new offset. A missing file is empty; a file now shorter than off (a new
// boot, or trimmed by keepConsoles) is read from its start.
func copyFileFrom(path string, off int64, w io.Writer) (int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	} else if err != nil {
		return off, nil
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() < off {
		off = 0
	}
	n, err := io.Copy(w, io.NewSectionReader(f, off, 1<<62))
	return off + n, err
}
