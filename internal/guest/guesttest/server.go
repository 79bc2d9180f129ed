// Package guesttest runs an in-process SSH server that stands in for a banger
// guest in tests: public-key auth, "exec" requests run as `sh -c <command>` in
// a directory on the host, the "sftp" subsystem, "signal", "env", and enough
// of "pty-req", "window-change" and "shell" for interactive sessions.
package guesttest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
)

// Options configures a Server. Only ClientKey is required.
type Options struct {
	ClientKey ssh.PublicKey // the one key the server accepts
	HostKey   ssh.Signer    // nil: a fresh ed25519 key
	// MoreHostKeys are offered too, as a server with keys of several
	// types does.
	MoreHostKeys []ssh.Signer
	Addr         string   // listen address; default 127.0.0.1:0
	Dir          string   // commands' working directory; default t.TempDir()
	Env          []string // commands' environment; nil: the test's own
	// Shell runs an exec request's command string with the string appended;
	// default {"/bin/sh", "-c"}. Its first element alone is the login shell.
	Shell []string
	// NoSFTPSubsystem refuses the "sftp" subsystem, like a server that has no
	// sftp-server where it expects one.
	NoSFTPSubsystem bool
	// DropExecs closes the channel of the first DropExecs exec requests
	// without answering or running them, as a loaded dropbear was seen to.
	DropExecs int
}

// Server is a running test SSH server.
type Server struct {
	Addr    string
	HostKey ssh.Signer
	Dir     string

	opts   Options
	config *ssh.ServerConfig
	ln     net.Listener
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	accepted int // connections accepted so far
	dropped  int // exec requests dropped (DropExecs)
	conns    map[net.Conn]bool
	cmds     map[*system.Command]bool
}

// dropExec reports whether this exec request is one to drop (DropExecs).
func (s *Server) dropExec() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dropped < s.opts.DropExecs {
		s.dropped++
		return true
	}
	return false
}

// Start starts a server and stops it when the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.HostKey == nil {
		opts.HostKey = NewSigner(t)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := New(opts)
	if err != nil {
		t.Fatalf("guesttest: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// New starts a server outside a test (e.g. as a testscript command); the
// caller closes it. ClientKey and Dir are required.
func New(opts Options) (*Server, error) {
	if opts.ClientKey == nil {
		return nil, errors.New("guesttest: Options.ClientKey is required")
	}
	if opts.Dir == "" {
		return nil, errors.New("guesttest: Options.Dir is required")
	}
	if opts.HostKey == nil {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		if opts.HostKey, err = ssh.NewSignerFromKey(priv); err != nil {
			return nil, err
		}
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Env == nil {
		opts.Env = os.Environ()
	}
	if len(opts.Shell) == 0 {
		opts.Shell = []string{"/bin/sh", "-c"}
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", opts.Addr, err)
	}
	want := opts.ClientKey.Marshal()
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if string(key.Marshal()) != string(want) {
				return nil, errors.New("unknown public key")
			}
			return nil, nil
		},
	}
	cfg.AddHostKey(opts.HostKey)
	for _, k := range opts.MoreHostKeys {
		cfg.AddHostKey(k)
	}
	s := &Server{
		Addr:    ln.Addr().String(),
		HostKey: opts.HostKey,
		Dir:     opts.Dir,
		opts:    opts,
		config:  cfg,
		ln:      ln,
		conns:   map[net.Conn]bool{},
		cmds:    map[*system.Command]bool{},
	}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// NewSigner returns a fresh ed25519 SSH key.
func NewSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return signer
}

// Close stops listening, drops every connection and kills the commands still
// running for them.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	for cmd := range s.cmds {
		cmd.SignalGroup(syscall.SIGKILL) //nolint:errcheck
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Accepted is how many connections the server has accepted.
func (s *Server) Accepted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

func (s *Server) accept() {
	defer s.wg.Done()
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return
		}
		s.conns[nc] = true
		s.accepted++
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(nc)
			s.mu.Lock()
			delete(s.conns, nc)
			s.mu.Unlock()
		}()
	}
}

func (s *Server) serveConn(nc net.Conn) {
	defer nc.Close()
	_, chans, reqs, err := ssh.NewServerConn(nc, s.config)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	var wg sync.WaitGroup
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "only session channels") //nolint:errcheck
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveSession(ch, creqs)
		}()
	}
	wg.Wait()
}

// session is one SSH session channel.
type session struct {
	s    *Server
	ch   ssh.Channel
	env  []string
	ptm  *os.File // set after pty-req
	tty  *os.File
	mu   sync.Mutex
	cmd  *system.Command
	done chan struct{} // closed when the command's exit was sent
	// afterReply, when set by a request, runs once the request is answered.
	afterReply func()
}

func (s *Server) serveSession(ch ssh.Channel, reqs <-chan *ssh.Request) {
	ss := &session{s: s, ch: ch}
	defer func() {
		ss.mu.Lock()
		cmd := ss.cmd
		ss.mu.Unlock()
		if cmd != nil {
			// The client went away: leave nothing of its command behind.
			cmd.SignalGroup(syscall.SIGKILL) //nolint:errcheck
			<-ss.done
		}
		if ss.ptm != nil {
			ss.ptm.Close()
		}
		if ss.tty != nil {
			ss.tty.Close()
		}
		ch.Close()
	}()
	for req := range reqs {
		if req.Type == "exec" && s.dropExec() {
			return
		}
		ok := ss.handle(req)
		if req.WantReply {
			req.Reply(ok, nil) //nolint:errcheck
		}
		// Only now may the command's end close the channel: a reply after
		// the close would be lost and the client would see EOF.
		if ss.afterReply != nil {
			go ss.afterReply()
			ss.afterReply = nil
		}
	}
}

func (ss *session) handle(req *ssh.Request) bool {
	switch req.Type {
	case "env":
		var m struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false
		}
		ss.env = append(ss.env, m.Name+"="+m.Value)
		return true
	case "pty-req":
		var m struct {
			Term             string
			Cols, Rows, W, H uint32
			Modes            string
		}
		if ssh.Unmarshal(req.Payload, &m) != nil || ss.ptm != nil {
			return false
		}
		ptm, tty, err := system.OpenPTY()
		if err != nil {
			return false
		}
		ss.ptm, ss.tty = ptm, tty
		ss.env = append(ss.env, "TERM="+m.Term)
		return system.SetTerminalSize(ptm, int(m.Rows), int(m.Cols)) == nil
	case "window-change":
		var m struct{ Cols, Rows, W, H uint32 }
		if ssh.Unmarshal(req.Payload, &m) != nil || ss.ptm == nil {
			return false
		}
		return system.SetTerminalSize(ss.ptm, int(m.Rows), int(m.Cols)) == nil
	case "exec":
		var m struct{ Command string }
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false
		}
		return ss.start(append(append([]string{}, ss.s.opts.Shell...), m.Command))
	case "shell":
		return ss.start([]string{ss.s.opts.Shell[0]})
	case "subsystem":
		var m struct{ Name string }
		if ssh.Unmarshal(req.Payload, &m) != nil || m.Name != "sftp" || ss.s.opts.NoSFTPSubsystem || ss.started() {
			return false
		}
		srv, err := sftp.NewServer(ss.ch)
		if err != nil {
			return false
		}
		ss.mu.Lock()
		ss.done = make(chan struct{})
		ss.mu.Unlock()
		ss.afterReply = func() {
			defer close(ss.done)
			srv.Serve() //nolint:errcheck // ends when the client closes
			ss.sendExit(system.ExitStatus{})
		}
		return true
	case "signal":
		var m struct{ Signal string }
		if ssh.Unmarshal(req.Payload, &m) != nil {
			return false
		}
		sig := unix.SignalNum("SIG" + m.Signal)
		ss.mu.Lock()
		cmd := ss.cmd
		ss.mu.Unlock()
		if sig == 0 || cmd == nil {
			return false
		}
		return cmd.Signal(sig) == nil
	}
	return false
}

func (ss *session) started() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.cmd != nil || ss.done != nil
}

func (ss *session) start(argv []string) bool {
	if ss.started() {
		return false
	}
	spec := system.CommandSpec{
		Argv: argv,
		Dir:  ss.s.Dir,
		Env:  append(append([]string{}, ss.s.opts.Env...), ss.env...),
		// Commands that detach (guest sessions) call setsid themselves.
		NewProcessGroup: true,
	}
	var outputDone chan struct{}
	if ss.tty != nil {
		spec.TTY = ss.tty
	} else {
		spec.Stdin, spec.Stdout, spec.Stderr = ss.ch, ss.ch, ss.ch.Stderr()
	}
	cmd, err := system.StartCommand(context.Background(), spec)
	if err != nil {
		return false
	}
	if ss.tty != nil {
		// Only the command holds the tty now, so the ptm reads EIO once it
		// and its children are gone.
		ss.tty.Close()
		ss.tty = nil
		outputDone = make(chan struct{})
		go func() {
			io.Copy(ss.ch, ss.ptm) //nolint:errcheck // ends with EIO
			close(outputDone)
		}()
		go io.Copy(ss.ptm, ss.ch) //nolint:errcheck
	}
	ss.s.mu.Lock()
	ss.s.cmds[cmd] = true
	ss.s.mu.Unlock()
	ss.mu.Lock()
	ss.cmd = cmd
	ss.done = make(chan struct{})
	ss.mu.Unlock()
	ss.afterReply = func() {
		defer close(ss.done)
		st, _ := cmd.Wait()
		if outputDone != nil {
			<-outputDone
		}
		ss.s.mu.Lock()
		delete(ss.s.cmds, cmd)
		ss.s.mu.Unlock()
		ss.mu.Lock()
		ss.cmd = nil
		ss.mu.Unlock()
		ss.sendExit(st)
	}
	return true
}

// sendExit reports how the command ended, as exit-signal for a signal (what
// sshd and dropbear do) or exit-status, and closes the channel.
func (ss *session) sendExit(st system.ExitStatus) {
	if st.Signal != 0 {
		msg := struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: strings.TrimPrefix(unix.SignalName(st.Signal), "SIG")}
		ss.ch.SendRequest("exit-signal", false, ssh.Marshal(&msg)) //nolint:errcheck
	} else {
		msg := struct{ Status uint32 }{uint32(st.Code)}
		ss.ch.SendRequest("exit-status", false, ssh.Marshal(&msg)) //nolint:errcheck
	}
	ss.ch.Close()
}
