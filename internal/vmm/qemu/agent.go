package qemu

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"
)

// The guest agent answers line commands on a virtio-serial port, so the
// host can change a restored guest's clock, address, MAC, hostname, RNG
// and SSH host key without reaching it over its network (which, for a
// clone, still carries its source's identity). The guest side is
// /usr/lib/banger/agent in the minimal image; docs/snapshots.md has the
// protocol.
//
// Each request is one line "<id> <command> [args...]" and each answer one
// line "<id> ok [text]" or "<id> err <message>". The id matters because a
// virtio-serial port holds a guest write while no host end is connected:
// an answer to a client that gave up arrives at the next one, which skips
// lines that are not its own.

// defaultAgentTimeout bounds one command when ctx has no deadline.
const defaultAgentTimeout = 10 * time.Second

// AgentError is an "err" answer from the guest agent.
type AgentError struct {
	Command string
	Message string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("guest agent %s: %s", e.Command, e.Message)
}

// AgentClient talks to one VM's guest agent through QEMU's socket for its
// virtio-serial port. The zero value is not usable; use Agent.
type AgentClient struct {
	path string
}

// Agent returns a client for the guest agent behind the socket at path
// (AgentSocket of the VM's machine).
func Agent(path string) AgentClient { return AgentClient{path: path} }

// Do sends one command line (e.g. "set-hostname web2") and returns the
// text of an "ok" answer. An "err" answer is an *AgentError. Each call
// connects, asks and disconnects: QEMU serves one client at a time.
func (a AgentClient) Do(ctx context.Context, cmd string) (string, error) {
	answers, err := a.DoAll(ctx, cmd)
	if err != nil {
		return "", err
	}
	return answers[0], nil
}

// DoAll sends several commands over one connection, which the agent runs
// in order, and returns the text of each "ok" answer. It stops at the
// first failure (an *AgentError for an "err" answer); the agent still
// runs the commands after it. One connection saves the agent's wake-up
// (it polls every 20 to 50 ms while no host end is connected) per command.
func (a AgentClient) DoAll(ctx context.Context, cmds ...string) ([]string, error) {
	if len(cmds) == 0 {
		return nil, nil
	}
	c, err := a.open(ctx, cmds[0])
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.DoAll(ctx, cmds...)
}

// AgentConn is one open connection to a guest agent, for a caller that
// does something between batches of commands (a clone's link comes up
// between its identity and its relink) without paying for a new
// connection. Close it when done: QEMU serves one client at a time.
type AgentConn struct {
	conn   net.Conn
	r      *bufio.Reader
	prefix string
	next   int // the number of the next command's id
	ctx    context.Context
	cancel context.CancelFunc
	stop   func() bool
}

// Open connects to the agent for several batches of commands; ctx bounds
// the whole connection (defaultAgentTimeout when it has no deadline).
func (a AgentClient) Open(ctx context.Context) (*AgentConn, error) {
	return a.open(ctx, "connect")
}

func (a AgentClient) open(ctx context.Context, name string) (*AgentConn, error) {
	name, _, _ = strings.Cut(strings.TrimSpace(name), " ")
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, defaultAgentTimeout)
	}
	var d net.Dialer
	var conn net.Conn
	var err error
	for wait := 5 * time.Millisecond; ; wait = min(wait*2, 100*time.Millisecond) {
		// A chardev socket serves one client; a second waits in the backlog
		// or gets EAGAIN when it is full.
		conn, err = d.DialContext(ctx, "unix", a.path)
		if err == nil || !errors.Is(err, syscall.EAGAIN) {
			break
		}
		select {
		case <-ctx.Done():
			cancel()
			return nil, fmt.Errorf("guest agent %s: %w", name, ctx.Err())
		case <-time.After(wait):
		}
	}
	if err != nil {
		cancel()
		return nil, fmt.Errorf("guest agent %s: %w", name, err)
	}
	var idb [4]byte
	_, _ = rand.Read(idb[:])
	return &AgentConn{
		conn:   conn,
		r:      bufio.NewReader(conn),
		prefix: hex.EncodeToString(idb[:]),
		ctx:    ctx,
		cancel: cancel,
		stop:   context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) }), //nolint:errcheck
	}, nil
}

// Close ends the connection.
func (c *AgentConn) Close() error {
	c.stop()
	c.cancel()
	return c.conn.Close()
}

// DoAll sends cmds, which the agent runs in order, and returns the text of
// each "ok" answer, as AgentClient.DoAll does. Answers left unread by an
// earlier failed batch are skipped by their ids.
func (c *AgentConn) DoAll(ctx context.Context, cmds ...string) ([]string, error) {
	if len(cmds) == 0 {
		return nil, nil
	}
	cmds = slices.Clone(cmds)
	for i, cmd := range cmds {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" || strings.ContainsAny(cmd, "\r\n") {
			return nil, fmt.Errorf("guest agent: bad command %q", cmd)
		}
		cmds[i] = cmd
	}
	name, _, _ := strings.Cut(cmds[0], " ")
	if ctx.Err() != nil || c.ctx.Err() != nil {
		return nil, fmt.Errorf("guest agent %s: %w", name, cmp.Or(ctx.Err(), c.ctx.Err()))
	}
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck
	defer stop()
	first := c.next
	c.next += len(cmds)
	var req strings.Builder
	for i, cmd := range cmds {
		fmt.Fprintf(&req, "%s-%d %s\n", c.prefix, first+i, cmd)
	}
	if _, err := io.WriteString(c.conn, req.String()); err != nil {
		return nil, fmt.Errorf("guest agent %s: %w", name, c.ctxErr(ctx, err))
	}
	answers := make([]string, 0, len(cmds))
	for len(answers) < len(cmds) {
		i := len(answers)
		name, _, _ := strings.Cut(cmds[i], " ")
		line, err := c.r.ReadString('\n')
		if err != nil {
			return answers, fmt.Errorf("guest agent %s: no answer: %w", name, c.ctxErr(ctx, err))
		}
		gotID, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		if gotID != fmt.Sprintf("%s-%d", c.prefix, first+i) {
			continue // an answer meant for an earlier client or batch
		}
		status, text, _ := strings.Cut(rest, " ")
		switch status {
		case "ok":
			answers = append(answers, text)
		case "err":
			return answers, &AgentError{Command: name, Message: text}
		default:
			return answers, fmt.Errorf("guest agent %s: unexpected answer %q", name, rest)
		}
	}
	return answers, nil
}

func (c *AgentConn) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return agentCtxErr(c.ctx, err)
}

func agentCtxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Ping checks that the agent answers.
func (a AgentClient) Ping(ctx context.Context) error {
	_, err := a.Do(ctx, "ping")
	return err
}

// SetTime steps the guest's wall clock to t at once, to the nearest whole
// second (the guest's date sets whole seconds; waiting for the next second
// boundary instead would cost half a second on average at every resume).
// An agent too old for "nearest" ignores it and waits for the boundary.
func (a AgentClient) SetTime(ctx context.Context, t time.Time) error {
	_, err := a.Do(ctx, setTimeCommand(t))
	return err
}

func setTimeCommand(t time.Time) string { return fmt.Sprintf("set-time %d nearest", t.UnixNano()) }

// SetIP replaces eth0's IPv4 address with ip/prefixLen and the default
// route with one via gateway ("" = none).
func (a AgentClient) SetIP(ctx context.Context, ip string, prefixLen int, gateway string) error {
	cmd := fmt.Sprintf("set-ip %s/%d", ip, prefixLen)
	if gateway != "" {
		cmd += " " + gateway
	}
	_, err := a.Do(ctx, cmd)
	return err
}

// SetMAC gives eth0 the MAC address mac (aa:bb:cc:dd:ee:ff).
func (a AgentClient) SetMAC(ctx context.Context, mac string) error {
	_, err := a.Do(ctx, "set-mac "+strings.ToLower(mac))
	return err
}

// SetHostname sets the guest's hostname, /etc/hostname and /etc/hosts.
func (a AgentClient) SetHostname(ctx context.Context, name string) error {
	_, err := a.Do(ctx, "set-hostname "+name)
	return err
}

// Reseed sends 64 fresh random bytes for the guest to mix into its RNG
// (see the agent's reseed command for what that does and does not do).
func (a AgentClient) Reseed(ctx context.Context) error {
	var seed [64]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return err
	}
	_, err := a.Do(ctx, "reseed "+hex.EncodeToString(seed[:]))
	return err
}

// RegenHostKey makes the guest replace its SSH host key (served from its
// SSH server's next connection) and returns the new public key
// ("ssh-ed25519 AAAA...").
func (a AgentClient) RegenHostKey(ctx context.Context) (string, error) {
	return a.Do(ctx, "regen-hostkey")
}
