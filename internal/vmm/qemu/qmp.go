package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/failpoint"
)

// QMPError is an error response from QEMU's monitor ({"error":{"class","desc"}}).
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpEvent is an asynchronous QMP event such as POWERDOWN or SHUTDOWN.
type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// qmpMessage is any line QEMU sends: greeting, reply, error or event.
type qmpMessage struct {
	QMP    *json.RawMessage `json:"QMP,omitempty"`
	Return json.RawMessage  `json:"return,omitempty"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error,omitempty"`
	Event string          `json:"event,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// qmpClient is one short-lived QMP session. A "-qmp unix:" socket serves a
// single client at a time (a second connect hangs until the first closes),
// so every operation dials, talks and closes; nothing holds a session open.
type qmpClient struct {
	conn   net.Conn
	dec    *json.Decoder
	events []qmpEvent
}

// dialQMP connects to the QMP socket at path, reads the greeting and
// negotiates capabilities. Every read and write is bounded by ctx's deadline
// or timeout, whichever comes first.
func dialQMP(ctx context.Context, path string, timeout time.Duration) (*qmpClient, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	var conn net.Conn
	var err error
	for wait := 5 * time.Millisecond; ; wait = min(wait*2, 100*time.Millisecond) {
		conn, err = d.DialContext(ctx, "unix", path)
		// QEMU's QMP socket serves one client at a time with a backlog of
		// one: EAGAIN means another client has it now, so wait our turn.
		if err == nil || !errors.Is(err, syscall.EAGAIN) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial qmp: %w (monitor busy with another client)", err)
		case <-time.After(wait):
		}
	}
	if err != nil {
		return nil, fmt.Errorf("dial qmp: %w", err) // the net error names the path
	}
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dial qmp %s: %w", path, err)
	}
	c := &qmpClient{conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	var greeting qmpMessage
	if err := c.dec.Decode(&greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting on %s: %w", path, err)
	}
	if greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("read qmp greeting on %s: not a QMP greeting", path)
	}
	if _, err := c.execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("negotiate qmp on %s: %w", path, err)
	}
	return c, nil
}

// execute sends one command and returns its "return" value. Events that
// arrive before the reply are kept in c.events.
// Failpoints around every QMP command that changes something (tests only).
var (
	fpCommandBefore = failpoint.New("vmm.qemu.command.before")
	fpCommandAfter  = failpoint.New("vmm.qemu.command.after")
)

func (c *qmpClient) execute(command string, args any) (json.RawMessage, error) {
	if !strings.HasPrefix(command, "query-") && command != "qmp_capabilities" {
		if err := fpCommandBefore.Hit(context.Background()); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", command, err)
		}
		defer fpCommandAfter.Hit(context.Background())
	}
	b, err := encodeCommand(command, args)
	if err != nil {
		return nil, err
	}
	if _, err := c.conn.Write(b); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	return c.readReply(command)
}

func encodeCommand(command string, args any) ([]byte, error) {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	return append(b, '\n'), nil
}

// executeWithFile sends command with f's descriptor attached as SCM_RIGHTS
// ancillary data, as getfd expects: QEMU keeps the descriptor that arrives
// with the command's bytes, so both go out in one sendmsg. This is how a
// sandboxed QEMU (no open of host paths it was not given, no exec) gets a
// file to migrate into.
func (c *qmpClient) executeWithFile(command string, args any, f *os.File) (json.RawMessage, error) {
	if err := fpCommandBefore.Hit(context.Background()); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	defer fpCommandAfter.Hit(context.Background())
	uc, ok := c.conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("qmp %s: descriptors travel only over a unix socket", command)
	}
	b, err := encodeCommand(command, args)
	if err != nil {
		return nil, err
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	var n int
	var werr error
	if err := raw.Control(func(fd uintptr) {
		n, _, werr = uc.WriteMsgUnix(b, syscall.UnixRights(int(fd)), nil)
	}); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	if werr != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, werr)
	}
	if n != len(b) {
		return nil, fmt.Errorf("qmp %s: short write (%d of %d bytes)", command, n, len(b))
	}
	return c.readReply(command)
}

// readReply reads until the reply to command, keeping events in c.events.
func (c *qmpClient) readReply(command string) (json.RawMessage, error) {
	for {
		var msg qmpMessage
		if err := c.dec.Decode(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("qmp %s: read reply: %w", command, err)
		}
		switch {
		case msg.Event != "":
			c.events = append(c.events, qmpEvent{Event: msg.Event, Data: msg.Data})
		case msg.Error != nil:
			return nil, &QMPError{Command: command, Class: msg.Error.Class, Desc: msg.Error.Desc}
		case msg.Return != nil:
			return msg.Return, nil
		}
	}
}

// status runs query-status and returns the run state ("running", "paused",
// "shutdown", ...).
func (c *qmpClient) status() (string, error) {
	raw, err := c.execute("query-status", nil)
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", fmt.Errorf("qmp query-status: %w", err)
	}
	return st.Status, nil
}

// name runs query-name and returns QEMU's -name.
func (c *qmpClient) name() (string, error) {
	raw, err := c.execute("query-name", nil)
	if err != nil {
		return "", err
	}
	var n struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", fmt.Errorf("qmp query-name: %w", err)
	}
	return n.Name, nil
}

// quit asks QEMU to exit at once. QEMU may close the socket before its reply
// reaches us; that counts as success.
func (c *qmpClient) quit() error {
	_, err := c.execute("quit", nil)
	if err != nil && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
		return nil
	}
	return err
}

// Close ends the session so the next client can connect.
func (c *qmpClient) Close() error { return c.conn.Close() }
