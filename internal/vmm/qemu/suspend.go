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

	"github.com/banger-dev/banger/internal/agent"
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
// SSH host key, the clock) and returns the new host key. It all goes over
// one connection to the agent, which otherwise waits for its next poll at
// every new one. The clone is kept off the network meanwhile by its
// caller, host-side (its tap is down): the guest's own link stays up, so
// its kernel sees no carrier change, which it would act on only up to a
// second later.
func (d *Driver) PrepareClone(ctx context.Context, m vmm.Machine, id vmm.CloneIdentity) (string, []byte, error) {
	c, err := Agent(AgentSocket(m)).Open(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("clone %s: %w", m.ID, err)
	}
	defer c.Close()
	pub, priv, err := giveIdentity(ctx, c, id)
	if err != nil {
		return "", nil, fmt.Errorf("clone %s: %w", m.ID, err)
	}
	return pub, priv, nil
}

// agentDoer is an agent connection or client: what giveIdentity needs.
type agentDoer interface {
	DoAll(ctx context.Context, cmds ...string) ([]string, error)
}

// giveIdentity runs the agent's part of PrepareClone and returns the
// guest's new host key: its public half, and the private key in dropbear's
// file format (nil when the guest made the key). The key is made here and
// installed by the agent, which spares the guest a key generation (a few
// hundred ms under TCG); an agent too old for set-hostkey generates one
// (regen-hostkey) and reports it. The key goes first: the guest's SSH
// server restarts with it while the agent does the rest.
func giveIdentity(ctx context.Context, a agentDoer, id vmm.CloneIdentity) (string, []byte, error) {
	seed := make([]byte, 32)
	rand.Read(seed)
	key, err := agent.NewHostKey()
	if err != nil {
		return "", nil, fmt.Errorf("host key: %w", err)
	}
	rest := []string{"set-mac " + id.MAC, fmt.Sprintf("set-ip %s/%d %s", id.IP, id.PrefixLen, id.Gateway),
		"set-hostname " + id.Hostname, "reseed " + hex.EncodeToString(seed), setTimeCommand(time.Now())}
	answers, err := a.DoAll(ctx, append([]string{"ping", "set-hostkey " + hex.EncodeToString(key.Dropbear)}, rest...)...)
	pub, priv := key.Public, key.Dropbear
	if err == nil && len(answers) > 1 && answers[1] == agent.ServerOpenSSH {
		// The guest runs OpenSSH's server: its disk keeps the key in
		// OpenSSH's format (agent.GuestKeyFiles).
		if priv, _, err = agent.OpenSSHKey(key.Dropbear); err != nil {
			return "", nil, fmt.Errorf("host key: %w", err)
		}
	}
	var ae *AgentError
	if len(answers) == 1 && errors.As(err, &ae) && ae.Command == "set-hostkey" && strings.HasPrefix(ae.Message, "unknown command") {
		// The rest ran too, unchecked: run it again, after the older key
		// command.
		rest[len(rest)-1] = setTimeCommand(time.Now())
		priv = nil
		if answers, err = a.DoAll(ctx, append([]string{"regen-hostkey"}, rest...)...); err == nil {
			pub = answers[0]
		}
	}
	return pub, priv, err
}

// SetHostname gives a running guest a new hostname through the agent (a
// warm pool's member claimed under a name of the caller's).
func (d *Driver) SetHostname(ctx context.Context, m vmm.Machine, name string) error {
	_, err := Agent(AgentSocket(m)).Do(ctx, "set-hostname "+name)
	return err
}

// PingAgent asks the guest agent of m's running guest for an answer.
func (d *Driver) PingAgent(ctx context.Context, m vmm.Machine) error {
	return Agent(AgentSocket(m)).Ping(ctx)
}
