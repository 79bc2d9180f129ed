package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// ExitError is a guest command that exited non-zero, as returned by Output.
type ExitError struct {
	Command string
	Code    int
	Stderr  string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = "no stderr"
	}
	return fmt.Sprintf("guest command %q: exit %d: %s", shortCmd(e.Command), e.Code, msg)
}

// shortCmd keeps error messages readable when the command is a long script.
func shortCmd(cmd string) string {
	const limit = 120
	if len(cmd) <= limit {
		return cmd
	}
	return cmd[:limit] + "..."
}

// ShellQuote quotes s for a POSIX shell so that it arrives as exactly one
// word, byte for byte. Words made only of safe characters are left bare.
func ShellQuote(s string) string {
	if s == "" {
		return "''"
	}
	safe := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_@%+=:,./-", c) >= 0) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// quoteArgv joins argv into one shell command line, each word quoted. The
// line starts with exec so the guest's shell becomes the command: signals
// sent to the session then reach the command itself, not a shell that would
// die and leave it running.
func quoteArgv(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty argv")
	}
	words := make([]string, len(argv))
	for i, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return "", fmt.Errorf("argument %d contains a NUL byte", i)
		}
		words[i] = ShellQuote(a)
	}
	return "exec " + strings.Join(words, " "), nil
}

// Run runs argv in the guest, each word shell-quoted so it arrives byte for
// byte. stdout and stderr stream separately as they come; stdin may be nil.
// It returns the exit code, 128+signo for a command killed by a signal.
// Cancelling ctx sends the command SIGINT and, if it still runs 2s later,
// closes the session; the error then wraps ctx.Err().
func (c *Client) Run(ctx context.Context, argv []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	cmd, err := quoteArgv(argv)
	if err != nil {
		return -1, fmt.Errorf("run in guest %s: %w", c.addr, err)
	}
	return c.run(ctx, cmd, stdin, stdout, stderr)
}

// RunScript runs script with the guest's sh (`sh -c script`).
func (c *Client) RunScript(ctx context.Context, script string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	return c.Run(ctx, []string{"sh", "-c", script}, stdin, stdout, stderr)
}

// Output runs script and returns its stdout. A non-zero exit is an *ExitError
// carrying stderr.
func (c *Client) Output(ctx context.Context, script string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	code, err := c.RunScript(ctx, script, nil, &stdout, &stderr)
	if err != nil {
		return stdout.Bytes(), err
	}
	if code != 0 {
		return stdout.Bytes(), &ExitError{Command: script, Code: code, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

// startAttempts bounds startCommand's tries.
const startAttempts = 4

// startCommand opens a session and starts cmd on it. A session the server
// closes before it answers the exec request (EOF; seen from dropbear on a
// loaded guest with several sessions opening at once on one connection)
// never ran the command: the server answers an exec only once its child
// is started, and stdin is read only after that answer. So it is retried
// on a new session while the connection itself still answers.
func (c *Client) startCommand(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (*ssh.Session, error) {
	for attempt := 1; ; attempt++ {
		sess, err := c.conn.NewSession()
		if err != nil {
			if retryableStart(err) && attempt < startAttempts && c.Ping() == nil && sleepCtx(ctx, time.Duration(attempt)*50*time.Millisecond) {
				continue
			}
			return nil, fmt.Errorf("open ssh session to guest %s: %w", c.addr, err)
		}
		if stdin != nil {
			sess.Stdin = stdin
		}
		sess.Stdout, sess.Stderr = stdout, stderr
		err = sess.Start(cmd)
		if err == nil {
			return sess, nil
		}
		sess.Close()
		if retryableStart(err) && attempt < startAttempts && c.Ping() == nil && sleepCtx(ctx, time.Duration(attempt)*50*time.Millisecond) {
			continue
		}
		return nil, fmt.Errorf("start %q in guest %s: %w", shortCmd(cmd), c.addr, err)
	}
}

func retryableStart(err error) bool { return errors.Is(err, io.EOF) }

// sleepCtx waits d unless ctx ends first (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *Client) run(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("run %q in guest %s: %w", shortCmd(cmd), c.addr, err)
	}
	sess, err := c.startCommand(ctx, cmd, stdin, stdout, stderr)
	if err != nil {
		return -1, err
	}
	defer sess.Close()
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case <-ctx.Done():
		}
		sess.Signal(ssh.SIGINT) //nolint:errcheck // best effort; the close below is the backstop
		t := time.NewTimer(c.cancelGrace)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			sess.Close()
		}
	}()
	waitErr := sess.Wait()
	close(done)
	code, err := exitCode(waitErr)
	if ctx.Err() != nil {
		return code, fmt.Errorf("run %q in guest %s: %w", shortCmd(cmd), c.addr, ctx.Err())
	}
	if err != nil {
		return code, fmt.Errorf("run %q in guest %s: %w", shortCmd(cmd), c.addr, err)
	}
	return code, nil
}

// exitCode turns the result of Session.Wait into an exit code. A command
// killed by a signal gives 128+signo, as a shell reports it.
func exitCode(err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *ssh.ExitError
	if errors.As(err, &ee) {
		if name := ee.Signal(); name != "" {
			if n := unix.SignalNum("SIG" + name); n != 0 {
				return 128 + int(n), nil
			}
		}
		return ee.ExitStatus(), nil
	}
	return -1, err
}

// Interactive runs argv (a login shell when argv is empty) on a guest PTY
// and returns its exit code. When in is a terminal it is put in raw mode for
// the duration, the remote terminal takes its size and follows it on
// SIGWINCH, and its type comes from $TERM. Cancelling ctx closes the session.
func (c *Client) Interactive(ctx context.Context, argv []string, in *os.File, out, errOut io.Writer) (int, error) {
	sess, err := c.conn.NewSession()
	if err != nil {
		return -1, fmt.Errorf("open ssh session to guest %s: %w", c.addr, err)
	}
	defer sess.Close()

	fd := int(in.Fd())
	isTerm := term.IsTerminal(fd)
	rows, cols := 24, 80
	if isTerm {
		if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
			cols, rows = w, h
		}
	}
	termName := os.Getenv("TERM")
	if termName == "" {
		termName = "xterm"
	}
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := sess.RequestPty(termName, rows, cols, modes); err != nil {
		return -1, fmt.Errorf("request pty from guest %s: %w", c.addr, err)
	}
	sess.Stdin, sess.Stdout, sess.Stderr = in, out, errOut

	if isTerm {
		state, err := term.MakeRaw(fd)
		if err != nil {
			return -1, fmt.Errorf("set terminal raw: %w", err)
		}
		defer term.Restore(fd, state) //nolint:errcheck
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		stopWinch := make(chan struct{})
		defer close(stopWinch)
		go func() {
			for {
				select {
				case <-stopWinch:
					return
				case <-winch:
					if w, h, err := term.GetSize(fd); err == nil {
						sess.WindowChange(h, w) //nolint:errcheck // a lost resize is cosmetic
					}
				}
			}
		}()
	}

	if len(argv) == 0 {
		err = sess.Shell()
	} else {
		var cmd string
		if cmd, err = quoteArgv(argv); err == nil {
			err = sess.Start(cmd)
		}
	}
	if err != nil {
		return -1, fmt.Errorf("start interactive %q in guest %s: %w", argv, c.addr, err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	code, err := exitCode(sess.Wait())
	if ctx.Err() != nil {
		return code, fmt.Errorf("interactive %q in guest %s: %w", argv, c.addr, ctx.Err())
	}
	if err != nil {
		return code, fmt.Errorf("interactive %q in guest %s: %w", argv, c.addr, err)
	}
	return code, nil
}
