package qemu

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
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

	mu       sync.Mutex
	status   string
	presses  int
	commands []string
	done     chan struct{} // closed when the VM powers off or QEMU quits
	once     sync.Once
}

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
	dec := json.NewDecoder(conn)
	negotiated := false
	for {
		var req struct {
			Execute string `json:"execute"`
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
// quit honoured), "wedged" (presses and quit ignored: only SIGKILL works).
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
	default:
		fmt.Fprintln(os.Stderr, "fake qemu: unknown mode", mode)
		return 1
	}
	writeLog := func() {
		if path := os.Getenv(fakeQEMUStateEnv); path != "" {
			_ = os.WriteFile(path, []byte(f.log()), 0o644)
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
