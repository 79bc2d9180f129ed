package qemu

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startFakeQMP serves a fake monitor in this process; configure adjusts its
// behaviour before it serves.
func startFakeQMP(t *testing.T, configure func(*fakeQMP)) (*fakeQMP, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	f, err := newFakeQMP(sock)
	if err != nil {
		t.Fatal(err)
	}
	if configure != nil {
		configure(f)
	}
	go f.serve()
	t.Cleanup(func() { f.ln.Close() })
	return f, sock
}

func TestQMPNegotiatesAndQueriesStatus(t *testing.T) {
	f, sock := startFakeQMP(t, nil)
	c, err := dialQMP(context.Background(), sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.status()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st != "running" {
		t.Errorf("status = %q, want running", st)
	}
	// A second session works once the first closed (one client at a time).
	c, err = dialQMP(context.Background(), sock, time.Second)
	if err != nil {
		t.Fatalf("second session: %v", err)
	}
	c.Close()
	if got, want := waitLog(f, 3), "qmp_capabilities\nquery-status\nqmp_capabilities"; got != want {
		t.Errorf("server saw\n%s\nwant\n%s", got, want)
	}
}

// waitLog waits until the fake has logged n commands (the last one may still
// be in flight when the client returns).
func waitLog(f *fakeQMP, n int) string {
	for range 200 {
		if l := f.log(); strings.Count(l, "\n")+1 >= n && l != "" {
			return l
		}
		time.Sleep(5 * time.Millisecond)
	}
	return f.log()
}

func TestQMPErrorResponse(t *testing.T) {
	_, sock := startFakeQMP(t, nil)
	c, err := dialQMP(context.Background(), sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.execute("no-such-command", nil)
	var qe *QMPError
	if !errors.As(err, &qe) {
		t.Fatalf("error %v is not a *QMPError", err)
	}
	if qe.Class != "CommandNotFound" || qe.Command != "no-such-command" {
		t.Errorf("QMPError = %+v", qe)
	}
	// The session survives an error reply.
	if st, err := c.status(); err != nil || st != "running" {
		t.Errorf("status after error = %q, %v", st, err)
	}
	// Negotiating twice is an error too, as in QEMU.
	if _, err := c.execute("qmp_capabilities", nil); !errors.As(err, &qe) {
		t.Errorf("second qmp_capabilities: %v, want a QMPError", err)
	}
}

func TestQMPPowerdownEvent(t *testing.T) {
	f, sock := startFakeQMP(t, func(f *fakeQMP) { f.offAfterPresses = 2 })
	c, err := dialQMP(context.Background(), sock, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.execute("system_powerdown", nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if len(c.events) != 1 || c.events[0].Event != "POWERDOWN" {
		t.Errorf("events = %+v, want one POWERDOWN", c.events)
	}
	// The helper used by Shutdown: second press powers the fake guest off.
	if err := powerdown(context.Background(), sock); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		t.Fatal("fake guest did not power off after the second press")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.presses != 2 || f.status != "shutdown" {
		t.Errorf("presses %d status %q, want 2 shutdown", f.presses, f.status)
	}
}

func TestQMPQuit(t *testing.T) {
	for _, noReply := range []bool{false, true} {
		f, sock := startFakeQMP(t, func(f *fakeQMP) { f.quitNoReply = noReply })
		if err := quit(context.Background(), sock); err != nil {
			t.Errorf("quit (reply=%v): %v", !noReply, err)
		}
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Fatalf("fake did not quit (reply=%v)", !noReply)
		}
	}
}

func TestQMPRejectsNonQMPGreeting(t *testing.T) {
	_, sock := startFakeQMP(t, func(f *fakeQMP) { f.greeting = `{"hello": "not qemu"}` })
	c, err := dialQMP(context.Background(), sock, time.Second)
	if err == nil {
		c.Close()
		t.Fatal("dialQMP accepted a non-QMP greeting")
	}
	if !strings.Contains(err.Error(), "greeting") {
		t.Errorf("error %q does not name the greeting", err)
	}
}

func TestQMPSilentServerTimesOut(t *testing.T) {
	// A busy "-qmp unix:" monitor accepts the connection but says nothing
	// until its current client leaves: the dial must give up, not hang.
	_, sock := startFakeQMP(t, func(f *fakeQMP) { f.silent = true })
	c, err := dialQMP(context.Background(), sock, 200*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatal("dialQMP succeeded against a silent monitor")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := dialQMP(ctx, sock, time.Second); err == nil {
		t.Fatal("dialQMP succeeded with a cancelled context")
	}
}

func TestQMPNoSocket(t *testing.T) {
	if _, err := dialQMP(context.Background(), filepath.Join(t.TempDir(), "none.sock"), time.Second); err == nil {
		t.Fatal("dialQMP succeeded without a socket")
	}
}
