package system

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"syscall"
)

// RunAsSpec describes a short-lived command run under another identity.
type RunAsSpec struct {
	UID, GID uint32
	// Groups are the supplementary groups; nil means none (root's are dropped).
	Groups []uint32
	Argv   []string
	Env    []string // nil: inherit
	Dir    string   // "" means "/", which every user can enter
}

// RunAs runs spec.Argv to completion as spec.UID:spec.GID and returns its
// stdout. It exists so tests can prove what an unprivileged caller is
// allowed (the daemon's SO_PEERCRED check); it needs CAP_SETUID and
// CAP_SETGID. Failures are *CommandError with stderr, like ExecRunner's.
func RunAs(ctx context.Context, spec RunAsSpec) ([]byte, error) {
	if len(spec.Argv) == 0 {
		return nil, errors.New("run as: empty argv")
	}
	cmd := exec.CommandContext(ctx, spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	groups := spec.Groups
	if groups == nil {
		groups = []uint32{}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: spec.UID, Gid: spec.GID, Groups: groups}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		ce := &CommandError{Argv: spec.Argv, ExitCode: -1, Stderr: stderr.String(), Err: err}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ce.ExitCode = ee.ExitCode()
		} else if errors.Is(err, exec.ErrNotFound) {
			ce.Kind = ErrNoTool
		} else if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			ce.Kind = ErrPerm
		}
		return stdout.Bytes(), ce
	}
	return stdout.Bytes(), nil
}
