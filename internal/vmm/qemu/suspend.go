package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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

// SaveForSnapshot pauses m's guest and saves its state into file, leaving
// it paused so the caller can copy consistent disks; Resume continues it.
func (d *Driver) SaveForSnapshot(ctx context.Context, m vmm.Machine, p system.Process, file string) error {
	if err := d.Pause(ctx, m, p); err != nil {
		return err
	}
	if _, err := d.Save(ctx, m, p, file, true); err != nil {
		d.Resume(context.WithoutCancel(ctx), m, p)
		return err
	}
	return nil
}

// PrepareClone gives a guest restored from another VM's state its own
// identity through the agent (MAC, address, hostname, fresh entropy, a new
// SSH host key, the clock), then brings its link up. It returns the new
// host key.
func (d *Driver) PrepareClone(ctx context.Context, m vmm.Machine, id vmm.CloneIdentity) (string, error) {
	seed := make([]byte, 32)
	rand.Read(seed)
	a := Agent(AgentSocket(m))
	if err := a.Ping(ctx); err != nil {
		return "", fmt.Errorf("clone %s: guest agent: %w", m.ID, err)
	}
	answers, err := a.DoAll(ctx, "set-mac "+id.MAC, fmt.Sprintf("set-ip %s/%d %s", id.IP, id.PrefixLen, id.Gateway),
		"set-hostname "+id.Hostname, "reseed "+hex.EncodeToString(seed), "regen-hostkey", setTimeCommand(time.Now()))
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", m.ID, err)
	}
	if err := d.SetLink(ctx, m, true); err != nil {
		return "", fmt.Errorf("clone %s: link up: %w", m.ID, err)
	}
	return answers[4], nil
}

// SetHostname gives a running guest a new hostname through the agent (a
// warm pool's member claimed under a name of the caller's).
func (d *Driver) SetHostname(ctx context.Context, m vmm.Machine, name string) error {
	_, err := Agent(AgentSocket(m)).Do(ctx, "set-hostname "+name)
	return err
}
