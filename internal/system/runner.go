// Package system is banger's one seam to the operating system: every external
// tool runs through a Runner, and every process banger spawns or signals goes
// through the helpers here. No other package imports os/exec.
package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Runner runs an external command to completion and returns its stdout.
// Consumers declare the subset they need; ExecRunner is the real one.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// ExecRunner runs commands on the host. It sets LC_ALL=C so tool messages are
// parseable, and on cancellation sends SIGTERM, then SIGKILL after Grace.
type ExecRunner struct {
	Grace  time.Duration // default 2s
	Logger *slog.Logger  // optional; argv and duration at debug level
}

// CommandError describes a command that could not run or exited non-zero.
// Kind classifies well-known failures so callers use errors.Is.
type CommandError struct {
	Argv     []string
	ExitCode int // -1 when the command did not run or was killed
	Stderr   string
	Err      error
	Kind     error // one of the Err* sentinels, or nil
}

func (e *CommandError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("%s: exit %d: %s", strings.Join(e.Argv, " "), e.ExitCode, msg)
}

// Unwrap lets errors.Is match both the kind and the underlying error.
func (e *CommandError) Unwrap() []error {
	var errs []error
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	return errs
}

// Typed tool errors, parsed from stderr by Classify.
var (
	ErrNotFound = errors.New("not found")      // device, file or object does not exist
	ErrBusy     = errors.New("busy")           // device or resource busy
	ErrExists   = errors.New("already exists") // object exists
	ErrNoTool   = errors.New("tool not found") // executable missing
	ErrPerm     = errors.New("permission denied")
)

// Classify maps a tool's stderr to one of the Err* kinds, or nil.
func Classify(stderr string) error {
	s := strings.ToLower(stderr)
	switch {
	case strings.Contains(s, "no such device"), strings.Contains(s, "no such file"),
		strings.Contains(s, "not found"), strings.Contains(s, "does not exist"),
		strings.Contains(s, "cannot find device"), strings.Contains(s, "no such process"):
		return ErrNotFound
	case strings.Contains(s, "busy"):
		return ErrBusy
	case strings.Contains(s, "exists"):
		return ErrExists
	case strings.Contains(s, "permission denied"), strings.Contains(s, "operation not permitted"):
		return ErrPerm
	}
	return nil
}

// Run implements Runner.
func (r ExecRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	grace := r.Grace
	if grace == 0 {
		grace = 2 * time.Second
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = grace
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	if r.Logger != nil {
		r.Logger.Debug("exec", "argv", append([]string{name}, args...), "duration", time.Since(start), "err", err)
	}
	if err != nil {
		ce := &CommandError{Argv: append([]string{name}, args...), ExitCode: -1, Stderr: stderr.String(), Err: err}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ce.ExitCode = ee.ExitCode()
			ce.Kind = Classify(ce.Stderr)
		} else if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			ce.Kind = ErrNoTool
		}
		return stdout.Bytes(), ce
	}
	return stdout.Bytes(), nil
}

// LookPath finds an executable on PATH.
func LookPath(name string) (string, error) { return exec.LookPath(name) }
