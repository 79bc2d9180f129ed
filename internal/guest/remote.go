package guest

import (
	"context"
	"fmt"
	"io"

	"golang.org/x/crypto/ssh"
)

// Ping checks that the connection still answers, with one keepalive request.
func (c *Client) Ping() error {
	_, _, err := c.conn.SendRequest("keepalive@banger", true, nil)
	return err
}

// Size is a terminal size.
type Size struct{ Cols, Rows int }

// RunPTY runs argv (a login shell when empty) on a guest PTY fed from
// stdin, for a caller whose terminal is elsewhere (the daemon relaying a
// CLI's terminal). Sizes received on resize follow the remote terminal.
// Cancelling ctx sends SIGHUP and closes the session.
func (c *Client) RunPTY(ctx context.Context, argv []string, termName string, size Size, stdin io.Reader, stdout io.Writer, resize <-chan Size) (int, error) {
	sess, err := c.conn.NewSession()
	if err != nil {
		return -1, fmt.Errorf("open ssh session to guest %s: %w", c.addr, err)
	}
	defer sess.Close()
	if termName == "" {
		termName = "xterm"
	}
	if size.Cols <= 0 || size.Rows <= 0 {
		size = Size{80, 24}
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty(termName, size.Rows, size.Cols, modes); err != nil {
		return -1, fmt.Errorf("request pty from guest %s: %w", c.addr, err)
	}
	if stdin != nil {
		sess.Stdin = stdin
	}
	sess.Stdout, sess.Stderr = stdout, stdout
	if len(argv) == 0 {
		err = sess.Shell()
	} else {
		cmd, qerr := quoteArgv(argv)
		if qerr != nil {
			return -1, qerr
		}
		err = sess.Start(cmd)
	}
	if err != nil {
		return -1, fmt.Errorf("start on guest %s: %w", c.addr, err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				sess.Signal(ssh.SIGHUP) //nolint:errcheck
				sess.Close()
				return
			case s, ok := <-resize:
				if !ok {
					resize = nil
					continue
				}
				sess.WindowChange(s.Rows, s.Cols) //nolint:errcheck
			}
		}
	}()
	return exitCode(sess.Wait())
}
