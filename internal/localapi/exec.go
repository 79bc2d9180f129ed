package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/guest"
)

// vmWaitSSH waits until the guest answers SSH (connecting the pool).
func (s *Server) vmWaitSSH(w http.ResponseWriter, r *http.Request) error {
	var req api.WaitSSHRequest
	if err := decode(r, &req, true); err != nil {
		return err
	}
	wait := time.Duration(req.TimeoutSeconds) * time.Second
	if wait <= 0 {
		wait = 60 * time.Second
	}
	if _, _, err := s.eng.Guest(r.Context(), r.PathValue("name"), wait); err != nil {
		return err
	}
	return writeJSON(w, struct{}{})
}

// vmExec runs a command in a guest. Errors found before the command
// starts are ordinary JSON errors; then the connection is upgraded and
// carries frames (api/stream.go) until the command's exit code.
func (s *Server) vmExec(w http.ResponseWriter, r *http.Request) error {
	var req api.ExecRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	gc, vm, err := s.eng.Guest(r.Context(), r.PathValue("name"), 5*time.Second)
	if err != nil {
		return err
	}
	// An OCI image's commands run with its ENV, WORKDIR and USER, and with
	// no command its ENTRYPOINT and CMD (a bare login shell on a terminal
	// stays a login shell, as root unless a user is asked for).
	argv, err := s.eng.GuestArgv(r.Context(), vm, engine.GuestCommand{Argv: req.Argv, User: req.User, Login: req.TTY})
	if err != nil {
		return err
	}
	if len(argv) == 0 && !req.TTY {
		return errdefs.Invalid("no command given")
	}
	defer s.eng.Busy(vm.ID)() // a VM running a command (exec, ssh) is not idle
	hj, ok := w.(http.Hijacker)
	if !ok {
		return fmt.Errorf("exec: connection cannot be upgraded")
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n%s: %s\r\n\r\n", api.UpgradeProtocol, api.VersionHeader, api.Version)
	if err := brw.Flush(); err != nil {
		return nil
	}
	// The command outlives the HTTP request's context, which ends at hijack.
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	fw := api.NewFrameWriter(conn)
	var stdin io.Reader
	stdinR, stdinW := io.Pipe()
	if req.Stdin || req.TTY {
		stdin = stdinR
	}
	resize := make(chan guest.Size, 4)
	go readExecFrames(brw.Reader, conn, stdinW, resize, cancel)

	var code int
	if req.TTY {
		code, err = gc.RunPTY(ctx, argv, req.Term, guest.Size{Cols: req.Cols, Rows: req.Rows}, stdin, fw.StreamWriter(api.FrameStdout), resize)
	} else {
		code, err = gc.Run(ctx, argv, stdin, fw.StreamWriter(api.FrameStdout), fw.StreamWriter(api.FrameStderr))
	}
	stdinR.Close()
	if err != nil && ctx.Err() == nil {
		b, _ := json.Marshal(api.Errorf(api.CodeInternal, "exec in vm %q: %v", vm.Name, err))
		fw.WriteFrame(api.FrameError, b)
		return nil
	}
	fw.WriteFrame(api.FrameExit, api.ExitPayload(code))
	return nil
}

// readExecFrames feeds client frames to the running command. A client that
// goes away cancels the command.
func readExecFrames(r *bufio.Reader, conn net.Conn, stdin *io.PipeWriter, resize chan<- guest.Size, cancel context.CancelFunc) {
	defer stdin.Close()
	for {
		t, p, err := api.ReadFrame(r)
		if err != nil {
			cancel()
			return
		}
		switch t {
		case api.FrameStdin:
			if _, err := stdin.Write(p); err != nil {
				// The command stopped reading; keep draining frames.
				continue
			}
		case api.FrameStdinEOF:
			stdin.Close()
		case api.FrameSignal:
			// guest.Run turns cancellation into SIGINT for the remote command.
			cancel()
		case api.FrameResize:
			if cols, rows, err := api.ParseResize(p); err == nil {
				select {
				case resize <- guest.Size{Cols: cols, Rows: rows}:
				default:
				}
			}
		}
	}
}
