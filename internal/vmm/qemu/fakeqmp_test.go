package qemu

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// fakeQMP serves QEMU's monitor protocol on a unix socket the way a
// "-qmp unix:...,server=on,wait=off" monitor does: one client at a time,
// greeting first, capabilities negotiation required, events interleaved.
// Its state is what a guest and QEMU would show: run status, power button
// presses, whether QEMU was told to quit.
type fakeQMP struct {
	ln net.Listener

	// Behaviour, set before serve.
	greeting        string // raw greeting line; "" = a QEMU 7.2 greeting
	offAfterPresses int    // power off on this press of the button; 0 = never (no acpid)
	ignoreQuit      bool   // reply to quit but keep running (a wedged QEMU)
	quitNoReply     bool   // close the socket on quit without replying
	silent          bool   // accept connections but never speak
	name            string // what query-name reports
	migrateFail     bool   // migrate ends "failed" without writing
	stream          string // what migrate writes into the descriptor

	mu       sync.Mutex
	status   string
	presses  int
	commands []string
	done     chan struct{} // closed when the VM powers off or QEMU quits
	once     sync.Once
	// Save support: descriptors received with commands (SCM_RIGHTS), the
	// named ones (getfd), the migration's status.
	received  []*os.File
	named     map[string]*os.File
	migration string
}

// rightsReader reads a unix connection and keeps the descriptors that
// arrive as SCM_RIGHTS, as QEMU's monitor does.
type rightsReader struct {
	c *net.UnixConn
	f *fakeQMP
}

func (r rightsReader) Read(p []byte) (int, error) {
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, _, _, err := r.c.ReadMsgUnix(p, oob)
	if oobn > 0 {
		msgs, _ := syscall.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			fds, _ := syscall.ParseUnixRights(&m)
			for _, fd := range fds {
				r.f.mu.Lock()
				r.f.received = append(r.f.received, os.NewFile(uintptr(fd), "received"))
				r.f.mu.Unlock()
			}
		}
	}
	return n, err
}

// fakeStream is what the fake QEMU migrates into a state file.
const fakeStream = "QEVM fake migration stream\n"

const qemuGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

func newFakeQMP(path string) (*fakeQMP, error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	return &fakeQMP{ln: ln, status: "running", name: guestName(baseMachine().ID), done: make(chan struct{})}, nil
}

// serve answers clients one after the other until the listener closes or
// the VM stops.
func (f *fakeQMP) serve() {
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		stop := f.session(conn)
		conn.Close()
		if stop {
			f.ln.Close()
			return
		}
	}
}

func (f *fakeQMP) stopped() { f.once.Do(func() { close(f.done) }) }

// log returns the commands received so far, one per line.
func (f *fakeQMP) log() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.commands, "\n")
}

// session serves one client; it reports whether QEMU has stopped.
func (f *fakeQMP) session(conn net.Conn) bool {
	if f.silent {
		var b [1]byte
		_, _ = conn.Read(b[:]) // until the client gives up
		return false
	}
	g := f.greeting
	if g == "" {
		g = qemuGreeting
	}
	send := func(v any) {
		b, _ := json.Marshal(v)
		_, _ = conn.Write(append(b, '\n'))
	}
	reply := func(v any) { send(map[string]any{"return": v}) }
	fail := func(class, desc string) {
		send(map[string]any{"error": map[string]string{"class": class, "desc": desc}})
	}
	event := func(name string, data any) {
		send(map[string]any{"event": name, "data": data,
			"timestamp": map[string]int64{"seconds": time.Now().Unix(), "microseconds": 0}})
	}
	_, _ = conn.Write([]byte(g + "\n"))
	var in io.Reader = conn
	if uc, ok := conn.(*net.UnixConn); ok {
		in = rightsReader{c: uc, f: f}
	}
	dec := json.NewDecoder(in)
	negotiated := false
	for {
		var req struct {
			Execute   string `json:"execute"`
			Arguments struct {
				FDName string `json:"fdname"`
				URI    string `json:"uri"`
			} `json:"arguments"`
		}
		if err := dec.Decode(&req); err != nil {
			return false
		}
		f.mu.Lock()
		f.commands = append(f.commands, req.Execute)
		f.mu.Unlock()
		if !negotiated && req.Execute != "qmp_capabilities" {
			fail("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
			continue
		}
		switch req.Execute {
		case "qmp_capabilities":
			if negotiated {
				fail("CommandNotFound", "Capabilities negotiation is already complete, command ignored")
				continue
			}
			negotiated = true
			reply(struct{}{})
		case "query-name":
			reply(map[string]string{"name": f.name})
		case "query-status":
			f.mu.Lock()
			st := f.status
			f.mu.Unlock()
			reply(map[string]any{"status": st, "running": st == "running"})
		case "system_powerdown":
			event("POWERDOWN", struct{}{})
			reply(struct{}{})
			f.mu.Lock()
			f.presses++
			off := f.offAfterPresses > 0 && f.presses >= f.offAfterPresses
			if off {
				f.status = "shutdown"
			}
			f.mu.Unlock()
			if off {
				event("SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"})
				f.stopped()
				return true
			}
		case "query-version":
			reply(map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": "Debian"})
		case "migrate-set-parameters", "set_link":
			reply(struct{}{})
		case "stop":
			f.mu.Lock()
			f.status = "paused"
			f.mu.Unlock()
			event("STOP", struct{}{})
			reply(struct{}{})
		case "cont":
			f.mu.Lock()
			f.status = "running"
			f.mu.Unlock()
			event("RESUME", struct{}{})
			reply(struct{}{})
		case "getfd":
			f.mu.Lock()
			if len(f.received) == 0 {
				f.mu.Unlock()
				fail("GenericError", "No file descriptor supplied via SCM_RIGHTS")
				continue
			}
			if f.named == nil {
				f.named = map[string]*os.File{}
			}
			f.named[req.Arguments.FDName] = f.received[len(f.received)-1]
			f.received = f.received[:len(f.received)-1]
			f.mu.Unlock()
			reply(struct{}{})
		case "closefd":
			f.mu.Lock()
			if fd := f.named[req.Arguments.FDName]; fd != nil {
				fd.Close()
				delete(f.named, req.Arguments.FDName)
			}
			f.mu.Unlock()
			reply(struct{}{})
		case "migrate":
			name, ok := strings.CutPrefix(req.Arguments.URI, "fd:")
			f.mu.Lock()
			fd := f.named[name]
			delete(f.named, name)
			f.mu.Unlock()
			if !ok || fd == nil {
				fail("GenericError", fmt.Sprintf("File descriptor named '%s' has not been found", name))
				continue
			}
			f.mu.Lock()
			if f.migrateFail {
				f.migration = "failed"
			} else {
				// Like QEMU: write at the descriptor's offset, then close it.
				_, _ = fd.Write([]byte(f.stream))
				f.migration = "completed"
				f.status = "postmigrate"
			}
			f.mu.Unlock()
			fd.Close()
			reply(struct{}{})
		case "query-migrate":
			f.mu.Lock()
			st := map[string]any{"status": f.migration}
			if f.migration == "failed" {
				st["error-desc"] = "Unable to write to file: No space left on device"
			}
			f.mu.Unlock()
			reply(st)
		case "migrate_cancel":
			reply(struct{}{})
		case "quit":
			if f.quitNoReply {
				f.stopped()
				return true
			}
			reply(struct{}{})
			if f.ignoreQuit {
				continue
			}
			event("SHUTDOWN", map[string]any{"guest": false, "reason": "host-qmp-quit"})
			f.stopped()
			return true
		default:
			fail("CommandNotFound", fmt.Sprintf("The command %s has not been found", req.Execute))
		}
	}
}

// Fake QEMU processes: TestMain turns the test binary into one when
// fakeQEMUEnv is set, so Identify, FindProcess and Shutdown can be tested
// against real processes without QEMU or root.
const (
	fakeQEMUEnv      = "BANGER_FAKE_QEMU"       // mode, see fakeQEMUMain
	fakeQEMUStateEnv = "BANGER_FAKE_QEMU_STATE" // file receiving the command log
)

// fakeQEMUMain runs as a separate process. Its argv is "-name <name> -qmp
// <token>" like QEMU's. Modes: "sleep" (no monitor at all), "acpid-late" (the first power
// button press is lost, the second powers off), "no-acpid" (presses ignored,
// quit honoured), "wedged" (presses and quit ignored: only SIGKILL works),
// "migrate" (no acpid; stop, getfd, migrate into the descriptor, cont and
// quit as QEMU does), "migrate-fail" (likewise, but migrations fail).
func fakeQEMUMain(mode string) int {
	var sock, name string
	for i := 1; i+1 < len(os.Args); i++ {
		switch os.Args[i] {
		case "-qmp":
			sock, _, _ = strings.Cut(strings.TrimPrefix(os.Args[i+1], "unix:"), ",")
		case "-name":
			name = os.Args[i+1]
		}
	}
	if mode == "sleep" || sock == "" {
		time.Sleep(time.Minute)
		return 0
	}
	f, err := newFakeQMP(sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	f.name = name
	switch mode {
	case "acpid-late":
		f.offAfterPresses = 2
	case "no-acpid":
	case "wedged":
		f.ignoreQuit = true
	case "migrate":
		f.stream = fakeStream
	case "migrate-fail":
		f.migrateFail = true
	default:
		fmt.Fprintln(os.Stderr, "fake qemu: unknown mode", mode)
		return 1
	}
	// The log is replaced whole (written aside, renamed): the process may
	// be SIGKILLed at any moment, and a log truncated by a kill in the
	// middle of a rewrite read as no commands at all.
	writeLog := func() {
		if path := os.Getenv(fakeQEMUStateEnv); path != "" {
			if os.WriteFile(path+".tmp", []byte(f.log()), 0o644) == nil {
				_ = os.Rename(path+".tmp", path)
			}
		}
	}
	go func() {
		for {
			writeLog()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go f.serve()
	select {
	case <-f.done:
	case <-time.After(time.Minute): // never outlive a crashed test by long
	}
	writeLog()
	return 0
}
