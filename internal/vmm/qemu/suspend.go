package qemu

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
)

// Suspend saves m's guest (memory and devices) into dir and ends QEMU, so
// its RAM is freed; Launch with the returned Incoming restores it.
func (d *Driver) Suspend(ctx context.Context, m vmm.Machine, p system.Process, dir string) (vmm.Incoming, error) {
	state := filepath.Join(dir, "qemu.state")
	if _, err := d.Save(ctx, m, p, state, false); err != nil {
		return vmm.Incoming{}, fmt.Errorf("suspending vm %s: %w", m.ID, err)
	}
	return vmm.Incoming{File: state}, nil
}

// SetGuestTime sets the restored guest's clock through banger's agent.
func (d *Driver) SetGuestTime(ctx context.Context, m vmm.Machine, t time.Time) error {
	return Agent(AgentSocket(m)).SetTime(ctx, t)
}
