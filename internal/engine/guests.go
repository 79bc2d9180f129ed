package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
	"golang.org/x/crypto/ssh"
)

// guestPool keeps one SSH connection per running VM, reused by exec, cp and
// sessions so a command costs one SSH channel, not a handshake.
type guestPool struct {
	e       *Engine
	mu      sync.Mutex
	m       map[string]*guest.Client
	dialing map[string]*dialCall // one dial per VM at a time

	keyOnce sync.Once
	signer  ssh.Signer
	keyErr  error
}

// dialCall is a dial in progress that concurrent callers wait for.
type dialCall struct {
	done chan struct{}
	c    *guest.Client
	err  error
}

func newGuestPool(e *Engine) *guestPool {
	return &guestPool{e: e, m: make(map[string]*guest.Client), dialing: map[string]*dialCall{}}
}

// signerKey loads or creates the daemon's SSH key (0600 in the state dir).
func (p *guestPool) signerKey() (ssh.Signer, error) {
	p.keyOnce.Do(func() {
		if err := os.MkdirAll(dirOf(p.e.cfg.SSHKeyPath), 0o700); err != nil {
			p.keyErr = err
			return
		}
		p.signer, p.keyErr = guest.Keygen(p.e.cfg.SSHKeyPath)
	})
	return p.signer, p.keyErr
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}

func (e *Engine) sshPublicKey() ([]byte, error) {
	s, err := e.guests.signerKey()
	if err != nil {
		return nil, fmt.Errorf("loading ssh key %s: %w", e.cfg.SSHKeyPath, err)
	}
	return ssh.MarshalAuthorizedKey(s.PublicKey()), nil
}

// guestAddr is where a VM's SSH server answers.
func (e *Engine) guestAddr(vm model.VMRecord) string {
	if e.deps.GuestAddr != nil {
		return e.deps.GuestAddr(vm)
	}
	return net.JoinHostPort(vm.Runtime.GuestIP, "22")
}

// get returns a connected client for vm, dialing (and retrying up to wait)
// when there is none. The VM must be alive.
func (p *guestPool) get(ctx context.Context, vm model.VMRecord, wait time.Duration) (*guest.Client, error) {
	if vm.Spec.Options.Pool != "" && !hasPoolAccess(ctx) {
		return nil, errPoolMember(vm)
	}
	if alive, reason := p.e.vmAlive(ctx, vm); !alive {
		return nil, errdefs.Conflict("vm %q is not running (%s): start it with banger vm start %s", vm.Name, reason, vm.Name)
	}
	p.mu.Lock()
	c, ok := p.m[vm.ID]
	p.mu.Unlock()
	if ok {
		// A cheap liveness probe: a dead connection fails at once, and one
		// that does not answer within pingWait (a connection kept across a
		// suspension whose host side waits out a retransmission backoff)
		// is replaced too.
		if pingWithin(c, pingWait) == nil {
			return c, nil
		}
		// Drop this connection only: another caller may already have
		// replaced it with a live one that others are using.
		p.dropIf(vm.ID, c)
	}
	// One dial per VM at a time; concurrent callers share its result. A
	// burst of execs on a fresh VM once made as many SSH handshakes at once,
	// which a loaded guest (or dropbear's limit on unauthenticated
	// connections per address) answered by closing some: EOF.
	deadline := time.Now().Add(wait)
	joined := false
	p.mu.Lock()
	for {
		if c, ok := p.m[vm.ID]; ok {
			p.mu.Unlock()
			return c, nil
		}
		call, ok := p.dialing[vm.ID]
		if !ok {
			break
		}
		p.mu.Unlock()
		joined = true
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		// Another caller's dial failed (its wait may have been shorter, or
		// its client went away): dial ourselves while our own wait lasts.
		if call.err != nil && time.Until(deadline) <= 0 {
			return nil, call.err
		}
		p.mu.Lock()
	}
	if joined {
		// Part of the wait went on another caller's dial.
		wait = max(time.Until(deadline), 0).Round(time.Millisecond)
	}
	call := &dialCall{done: make(chan struct{})}
	p.dialing[vm.ID] = call
	p.mu.Unlock()
	call.c, call.err = p.dial(ctx, vm, wait)
	p.mu.Lock()
	delete(p.dialing, vm.ID)
	if call.err == nil {
		p.m[vm.ID] = call.c
	}
	p.mu.Unlock()
	close(call.done)
	return call.c, call.err
}

// dial connects to vm's SSH server, retrying up to wait.
func (p *guestPool) dial(ctx context.Context, vm model.VMRecord, wait time.Duration) (*guest.Client, error) {
	signer, err := p.signerKey()
	if err != nil {
		return nil, err
	}
	cfg := guest.Config{Addr: p.e.guestAddr(vm), Signer: signer, KnownHostsFile: knownHostsPath(vm), DialTimeout: 2 * time.Second}
	start := time.Now()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	dctx, exited := p.e.untilVMMExits(wctx, vm)
	c, err := guest.DialRetry(dctx, cfg, wait)
	if err != nil {
		if errors.Is(err, guest.ErrHostKeyChanged) {
			return nil, errdefs.Conflict("vm %q: %w", vm.Name, err)
		}
		if exited() {
			// A guest that panicked or powered off will never answer: say so
			// now instead of after the whole wait.
			return nil, errdefs.Unavailable("vm %q stopped while waiting %s for ssh at %s: its VMM process exited after %s%s", vm.Name, wait, cfg.Addr,
				time.Since(start).Round(time.Millisecond), consoleTail(vm.Runtime.LogPath))
		}
		return nil, errdefs.Unavailable("vm %q did not answer ssh at %s after %s: %w%s", vm.Name, cfg.Addr,
			time.Since(start).Round(time.Millisecond), err, consoleTail(vm.Runtime.LogPath))
	}
	if p.e.deps.GuestSessionsRoot != "" {
		c.SessionsRoot = p.e.deps.GuestSessionsRoot
	}
	// Right after a start, waited is the guest's boot to SSH: the bench
	// reads it to tell guest time from the host's start steps.
	p.e.log.Info("guest ssh connected", "vm", vm.Name, "waited", time.Since(start).Round(time.Millisecond))
	return c, nil
}

// dropIf closes and forgets c if it is still vm id's pooled connection.
func (p *guestPool) dropIf(id string, c *guest.Client) {
	p.mu.Lock()
	cur, ok := p.m[id]
	if ok && cur == c {
		delete(p.m, id)
	}
	p.mu.Unlock()
	c.Close()
}

func (p *guestPool) drop(id string) {
	p.mu.Lock()
	c, ok := p.m[id]
	delete(p.m, id)
	p.mu.Unlock()
	if ok {
		c.Close()
	}
}

func (p *guestPool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, c := range p.m {
		c.Close()
		delete(p.m, id)
	}
}

// untilVMMExits returns a context cancelled when vm's recorded VMM process
// exits (checked cheaply, by PID and start time, every 250 ms), and a
// function reporting whether that happened. The watch ends with ctx: callers
// cancel it once they stop waiting.
func (e *Engine) untilVMMExits(ctx context.Context, vm model.VMRecord) (context.Context, func() bool) {
	h, ok := e.handles.get(vm.ID)
	if !ok || h.PID == 0 {
		return ctx, func() bool { return false }
	}
	proc := system.Process{PID: h.PID, Start: h.PIDStart}
	wctx, cancel := context.WithCancel(ctx)
	var gone atomic.Bool
	go func() {
		defer cancel()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
				if !proc.Alive() {
					gone.Store(true)
					return
				}
			}
		}
	}()
	return wctx, gone.Load
}

// consoleTail renders the last lines of a console log for error messages,
// with a kernel panic line first when the tail starts after it (the panic's
// stack dump alone fills the tail).
func consoleTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		tail := lines[len(lines)-15:]
		for _, l := range lines[:len(lines)-15] {
			if strings.Contains(l, "Kernel panic") {
				tail = append([]string{l, "..."}, tail...)
				break
			}
		}
		lines = tail
	}
	return "\nlast console output (" + path + "):\n  " + strings.Join(lines, "\n  ")
}

// pingWait bounds the liveness probe of a pooled connection.
const pingWait = time.Second

// pingWithin pings c, giving up after wait; a connection given up on is
// dropped by the caller, which ends the pending ping.
func pingWithin(c *guest.Client, wait time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- c.Ping() }()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("no answer to a keepalive within %s", wait)
	}
}
