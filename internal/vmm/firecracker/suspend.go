package firecracker

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Suspend pauses m's guest, writes a full snapshot (VM state and memory)
// into dir and ends Firecracker; Launch with the returned Incoming loads it
// into a fresh process.
func (d *Driver) Suspend(ctx context.Context, m vmm.Machine, p system.Process, dir string) (vmm.Incoming, error) {
	state, mem := filepath.Join(dir, "fc.vmstate"), filepath.Join(dir, "fc.mem")
	if err := d.Pause(ctx, m, p); err != nil {
		return vmm.Incoming{}, fmt.Errorf("suspending vm %s: %w", m.ID, err)
	}
	info, err := d.CreateSnapshot(ctx, m, p, state, mem)
	if err != nil {
		d.Resume(context.WithoutCancel(ctx), m, p)
		return vmm.Incoming{}, fmt.Errorf("suspending vm %s: %w", m.ID, err)
	}
	if err := d.Shutdown(ctx, m, p, 0, true); err != nil {
		return vmm.Incoming{}, fmt.Errorf("suspending vm %s: %w", m.ID, err)
	}
	return vmm.Incoming{File: state, MemFile: mem, VMMVersion: info.Version}, nil
}

// SetGuestTime is a no-op: Firecracker corrects the clock at load
// (clock_realtime) where its version can.
func (d *Driver) SetGuestTime(ctx context.Context, m vmm.Machine, t time.Time) error { return nil }
