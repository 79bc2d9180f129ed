package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
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
	pub, err := giveIdentity(ctx, Agent(AgentSocket(m)), id)
	if err != nil {
		return "", fmt.Errorf("clone %s: %w", m.ID, err)
	}
	if err := d.SetLink(ctx, m, true); err != nil {
		return "", fmt.Errorf("clone %s: link up: %w", m.ID, err)
	}
	if err := relink(ctx, Agent(AgentSocket(m)), id.Gateway); err != nil {
		return "", fmt.Errorf("clone %s: %w", m.ID, err)
	}
	return pub, nil
}

// giveIdentity runs the agent's part of PrepareClone and returns the
// guest's new host key. The key is made here and installed by the agent,
// which spares the guest a key generation (a few hundred ms under TCG); an
// agent too old for set-hostkey generates one (regen-hostkey) and reports
// it.
func giveIdentity(ctx context.Context, a AgentClient, id vmm.CloneIdentity) (string, error) {
	seed := make([]byte, 32)
	rand.Read(seed)
	if err := a.Ping(ctx); err != nil {
		return "", fmt.Errorf("guest agent: %w", err)
	}
	key, err := NewHostKey()
	if err != nil {
		return "", fmt.Errorf("host key: %w", err)
	}
	_, err = a.DoAll(ctx, "set-mac "+id.MAC, fmt.Sprintf("set-ip %s/%d %s", id.IP, id.PrefixLen, id.Gateway),
		"set-hostname "+id.Hostname, "reseed "+hex.EncodeToString(seed), "set-hostkey "+hex.EncodeToString(key.Dropbear), setTimeCommand(time.Now()))
	pub := key.Public
	var ae *AgentError
	if errors.As(err, &ae) && ae.Command == "set-hostkey" && strings.HasPrefix(ae.Message, "unknown command") {
		var answers []string
		if answers, err = a.DoAll(ctx, "regen-hostkey", setTimeCommand(time.Now())); err == nil {
			pub = answers[0]
		}
	}
	return pub, err
}

// SetHostname gives a running guest a new hostname through the agent (a
// warm pool's member claimed under a name of the caller's).
func (d *Driver) SetHostname(ctx context.Context, m vmm.Machine, name string) error {
	_, err := Agent(AgentSocket(m)).Do(ctx, "set-hostname "+name)
	return err
}

// relink has the guest take its device down and up once its link is back,
// so that it sends at once: the kernel handles a carrier coming back at
// most once a second after the previous link event (the link went down at
// restore), and about half the clones stayed silent for a second. An agent
// without relink is left to that second.
func relink(ctx context.Context, a AgentClient, gateway string) error {
	var ae *AgentError
	if _, err := a.Do(ctx, "relink "+gateway); err != nil && !(errors.As(err, &ae) && strings.HasPrefix(ae.Message, "unknown command")) {
		return err
	}
	return nil
}
