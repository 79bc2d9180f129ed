package system

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"github.com/creack/pty"
)

// CommandSpec describes a command whose stdio the caller wires itself, such as
// a command run on behalf of an SSH session by banger's test SSH server.
type CommandSpec struct {
	Argv []string
	Dir  string
	Env  []string // nil: inherit
	// Stdin, Stdout and Stderr are ignored when TTY is set. A nil Stdin reads
	// /dev/null. Stdin is copied by a goroutine that Wait does not wait for,
	// so a reader that never returns cannot keep Wait blocked.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// TTY, when set, is the terminal (a PTY's tty side) that becomes the
	// command's stdin, stdout, stderr and controlling terminal, in a new session.
	TTY *os.File
	// NewProcessGroup starts the command in its own process group (implied
	// by TTY), so SignalGroup reaches it and every child it leaves behind.
	NewProcessGroup bool
}

// Command is a command started by StartCommand.
type Command struct {
	cmd        *exec.Cmd
	stdinWrite *os.File
}

// ExitStatus is how a command ended: Signal is non-zero when a signal
// killed it, and Code is then 128+signal, as a shell reports it.
type ExitStatus struct {
	Code   int
	Signal syscall.Signal
}

// StartCommand starts spec. Cancelling ctx kills the command.
func StartCommand(ctx context.Context, spec CommandSpec) (*Command, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("start command: empty argv")
	}
	cmd := exec.CommandContext(ctx, spec.Argv[0], spec.Argv[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = spec.Env
	c := &Command{cmd: cmd}
	if spec.TTY != nil {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = spec.TTY, spec.TTY, spec.TTY
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	} else {
		if spec.NewProcessGroup {
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		}
		cmd.Stdout, cmd.Stderr = spec.Stdout, spec.Stderr
		if spec.Stdin != nil {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, fmt.Errorf("start %s: stdin pipe: %w", spec.Argv[0], err)
			}
			defer r.Close()
			cmd.Stdin = r
			c.stdinWrite = w
		}
	}
	if err := cmd.Start(); err != nil {
		if c.stdinWrite != nil {
			c.stdinWrite.Close()
		}
		return nil, fmt.Errorf("start %s: %w", spec.Argv[0], err)
	}
	if c.stdinWrite != nil {
		go func() {
			io.Copy(c.stdinWrite, spec.Stdin) //nolint:errcheck // EPIPE once the command is gone is expected
			c.stdinWrite.Close()
		}()
	}
	return c, nil
}

// PID returns the command's process id.
func (c *Command) PID() int { return c.cmd.Process.Pid }

// Signal sends sig to the command.
func (c *Command) Signal(sig syscall.Signal) error {
	return c.cmd.Process.Signal(sig)
}

// SignalGroup sends sig to the command's process group; the command must
// have been started with NewProcessGroup or TTY.
func (c *Command) SignalGroup(sig syscall.Signal) error {
	return syscall.Kill(-c.cmd.Process.Pid, sig)
}

// Wait waits for the command to exit and for its output to be copied. A
// non-zero exit is not an error; err reports only failures to wait.
func (c *Command) Wait() (ExitStatus, error) {
	err := c.cmd.Wait()
	state := c.cmd.ProcessState
	if state == nil {
		return ExitStatus{Code: -1}, fmt.Errorf("wait %s: %w", c.cmd.Path, err)
	}
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return ExitStatus{Code: 128 + int(ws.Signal()), Signal: ws.Signal()}, nil
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return ExitStatus{Code: state.ExitCode()}, fmt.Errorf("wait %s: %w", c.cmd.Path, err)
	}
	return ExitStatus{Code: state.ExitCode()}, nil
}

// OpenPTY opens a pseudo-terminal pair: the controlling side (ptm) and the
// terminal a command runs on (tty).
func OpenPTY() (ptm, tty *os.File, err error) {
	ptm, tty, err = pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	return ptm, tty, nil
}

// SetTerminalSize sets the window size of a terminal, which sends SIGWINCH to
// its foreground process group.
func SetTerminalSize(f *os.File, rows, cols int) error {
	if err := pty.Setsize(f, &pty.Winsize{Rows: uint16(rows), Cols: uint16(cols)}); err != nil {
		return fmt.Errorf("set terminal size of %s: %w", f.Name(), err)
	}
	return nil
}
