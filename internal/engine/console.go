package daemon

import (
	"context"
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
func (d *Daemon) keepConsoles(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.shutdownCh:
			return
		case <-t.C:
		}
		d.handles.mu.RLock()
		ids := make([]string, 0, len(d.handles.m))
		for id := range d.handles.m {
			ids = append(ids, id)
		}
		d.handles.mu.RUnlock()
		for _, id := range ids {
			vm, err := d.store.GetVMByID(ctx, id)
			if err != nil {
				continue
			}
			if cut, err := trimLog(vm.Runtime.LogPath, consoleLogMax, consoleLogKeep); err != nil {
				d.log.Warn("trimming console log", "vm", vm.Name, "err", err)
			} else if cut > 0 {
				d.log.Info("console log trimmed", "vm", vm.Name, "dropped_bytes", cut)
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
