package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/banger-dev/banger/internal/api"
)

// ExecStream is a command running in a guest. The connection to the daemon
// carries its stdin one way and its output and exit code the other; Wait
// reads them. Methods that send (Write, CloseStdin, Signal, Resize) may be
// called from other goroutines while Wait runs. Close it when done.
type ExecStream struct {
	rwc io.ReadWriteCloser
	br  *bufio.Reader
	fw  *api.FrameWriter
}

// Exec starts a command in a running guest. With req.Stdin the command reads
// what is written to the stream (until CloseStdin); without it, its stdin is
// empty. With req.TTY it runs on a pseudo-terminal (an empty Argv is the
// login shell) and its output comes as stdout only. Errors before the
// command starts (no such VM, VM not running, guest not answering) are
// returned here; once it runs, the stream is no longer tied to ctx: end it
// with Signal or Close.
func (c *Client) Exec(ctx context.Context, name string, req ExecRequest) (*ExecStream, error) {
	resp, err := c.send(ctx, request{route: api.RouteVMExec, params: []string{name}, body: req, upgrade: true})
	if err != nil {
		return nil, err
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, fmt.Errorf("exec in vm %q: the daemon's answer (%s) cannot carry a stream", name, resp.Status)
	}
	return &ExecStream{rwc: rwc, br: bufio.NewReader(rwc), fw: api.NewFrameWriter(rwc)}, nil
}

// Write sends p to the command's stdin.
func (s *ExecStream) Write(p []byte) (int, error) {
	return s.fw.StreamWriter(api.FrameStdin).Write(p)
}

// CloseStdin ends the command's stdin.
func (s *ExecStream) CloseStdin() error { return s.fw.WriteFrame(api.FrameStdinEOF, nil) }

// CopyStdin sends r to the command's stdin, then ends it. It returns when r
// ends or the stream breaks.
func (s *ExecStream) CopyStdin(r io.Reader) error {
	_, err := io.Copy(s, r)
	if cerr := s.CloseStdin(); err == nil {
		err = cerr
	}
	return err
}

// Signal sends a signal ("INT", "TERM", "KILL", ...) to the command.
func (s *ExecStream) Signal(name string) error {
	return s.fw.WriteFrame(api.FrameSignal, []byte(name))
}

// Resize tells a TTY command its terminal's new size.
func (s *ExecStream) Resize(cols, rows int) error {
	return s.fw.WriteFrame(api.FrameResize, api.ResizePayload(cols, rows))
}

// Wait copies the command's output to stdout and stderr until it exits and
// returns its exit code. An error means the command's outcome is unknown:
// the guest connection failed (an *Error from the daemon) or the stream
// broke.
func (s *ExecStream) Wait(stdout, stderr io.Writer) (int, error) {
	for {
		t, p, err := api.ReadFrame(s.br)
		if err != nil {
			return 0, fmt.Errorf("connection to bangerd lost during exec: %w", err)
		}
		switch t {
		case api.FrameStdout:
			stdout.Write(p)
		case api.FrameStderr:
			stderr.Write(p)
		case api.FrameExit:
			return api.ParseExit(p)
		case api.FrameError:
			var e Error
			if json.Unmarshal(p, &e) == nil {
				return 0, &e
			}
			return 0, errors.New(string(p))
		}
	}
}

// Close ends the stream; a command still running is cancelled by the daemon.
func (s *ExecStream) Close() error { return s.rwc.Close() }
