package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeSystem records what the commands asked for.
type fakeSystem struct {
	mu       sync.Mutex
	calls    []string
	keyDelay time.Duration // InstallHostKey takes this long
	fail     error         // every call fails with it
}

func (f *fakeSystem) note(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	return f.fail
}

func (f *fakeSystem) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *fakeSystem) SetTime(t time.Time) error {
	return f.note("time " + t.UTC().Format(time.RFC3339Nano))
}
func (f *fakeSystem) SetIP(a netip.Prefix, gw netip.Addr) error {
	return f.note("ip " + a.String() + " " + gw.String())
}
func (f *fakeSystem) SetMAC(mac net.HardwareAddr) error { return f.note("mac " + mac.String()) }
func (f *fakeSystem) SetHostname(n string) error        { return f.note("hostname " + n) }
func (f *fakeSystem) Reseed(seed []byte) error          { return f.note("reseed " + hex.EncodeToString(seed)) }
func (f *fakeSystem) InstallHostKey(b []byte) (string, error) {
	f.note("key begins")
	time.Sleep(f.keyDelay)
	return ServerDropbear, f.note("key installed")
}

func TestHandle(t *testing.T) {
	k, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ line, answer, call string }{
		{"a1 ping\n", "a1 ok\n", ""},
		{"a2 set-time 1700000000123456789 nearest\r\n", "a2 ok 1700000000\n", "time 2023-11-14T22:13:20.123456789Z"},
		{"a3 set-ip 172.30.0.9/24 172.30.0.1", "a3 ok\n", "ip 172.30.0.9/24 172.30.0.1"},
		{"a4 set-ip 172.30.0.9/24", "a4 ok\n", "ip 172.30.0.9/24 invalid IP"},
		{"a5 set-mac 02:00:00:00:00:0a", "a5 ok\n", "mac 02:00:00:00:00:0a"},
		{"a6 set-hostname web-2.x", "a6 ok\n", "hostname web-2.x"},
		{"a7 reseed 00ff", "a7 ok\n", "reseed 00ff"},
		{"a8 set-hostkey " + hex.EncodeToString(k.Dropbear), "a8 ok dropbear\n", "key installed"},
		// Bad input: a clear error, nothing done.
		{"c1 set-time soon", "c1 err set-time: want nanoseconds since the epoch\n", ""},
		{"c2 set-time -5", "c2 err set-time: want nanoseconds since the epoch\n", ""},
		{"c3 set-ip 172.30.0.9", "c3 err set-ip: want ADDR/LEN [GATEWAY]\n", ""},
		{"c4 set-ip fd00::1/64", "c4 err set-ip: want ADDR/LEN [GATEWAY]\n", ""},
		{"c5 set-ip 172.30.0.9/24 gw", "c5 err set-ip: bad gateway gw\n", ""},
		{"c6 set-mac 02:00:00:00:00", "c6 err set-mac: want aa:bb:cc:dd:ee:ff\n", ""},
		{"c7 set-hostname -x", "c7 err set-hostname: bad name\n", ""},
		{"c8 set-hostname a/b", "c8 err set-hostname: bad name\n", ""},
		{"c9 reseed abc", "c9 err reseed: want hex bytes\n", ""},
		{"d1 reseed", "d1 err reseed: want hex bytes\n", ""},
		{"d2 set-hostkey 00ff", "d2 err set-hostkey: want dropbear's ed25519 key file in hex\n", ""},
		{"d4 frobnicate", "d4 err unknown command frobnicate\n", ""},
		{"d5 relink 172.30.0.1", "d5 err unknown command relink\n", ""},
	} {
		sys := &fakeSystem{}
		var console strings.Builder
		s := Server{Sys: sys, Console: &console}
		answer, ok := s.Handle(tc.line)
		if !ok || answer != tc.answer {
			t.Errorf("%q: answer %q, want %q", tc.line, answer, tc.answer)
		}
		// The console hears of failures only, with the error.
		_, msg, failed := strings.Cut(tc.answer, " err ")
		if want := "banger-agent: " + msg; failed && console.String() != want || !failed && console.Len() != 0 {
			t.Errorf("%q: console %q", tc.line, console.String())
		}
		calls := sys.got()
		if tc.call == "" && len(calls) != 0 || tc.call != "" && !slices.Contains(calls, tc.call) {
			t.Errorf("%q: calls %q, want %q", tc.line, calls, tc.call)
		}
	}
	// Not requests: no answer at all.
	for _, line := range []string{"", "ping", "a;b ping", "\n"} {
		if answer, ok := (&Server{Sys: &fakeSystem{}}).Handle(line); ok {
			t.Errorf("%q answered %q", line, answer)
		}
	}
	// A failure of the system is the command's error, on one line.
	s := Server{Sys: &fakeSystem{fail: errors.New("no such\ndevice")}}
	if answer, _ := s.Handle("e1 set-mac 02:00:00:00:00:0a"); answer != "e1 err set-mac: cannot set 02:00:00:00:00:0a on eth0: no such device\n" {
		t.Errorf("failure answer %q", answer)
	}
	// regen-hostkey makes a key, installs it and reports its public half.
	sys := &fakeSystem{}
	if answer, _ := (&Server{Sys: sys}).Handle("e2 regen-hostkey"); !strings.HasPrefix(answer, "e2 ok ssh-ed25519 AAAA") || !slices.Contains(sys.got(), "key installed") {
		t.Errorf("regen-hostkey: %q, calls %q", answer, sys.got())
	}
}

// fakePort reads its chunks in turn, an empty chunk being an empty read
// (no host end connected), then reads empty until closed; it keeps what is
// written.
type fakePort struct {
	mu     sync.Mutex
	chunks []string
	out    strings.Builder
	reads  int
}

func (p *fakePort) Read(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reads++
	if len(p.chunks) == 0 {
		return 0, io.EOF
	}
	c := p.chunks[0]
	p.chunks = p.chunks[1:]
	if c == "" {
		return 0, io.EOF
	}
	return copy(b, c), nil
}

func (p *fakePort) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *fakePort) written() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Serve answers in request order, runs the commands in that order, waits
// out empty reads, and completes a line cut by one.
func TestServe(t *testing.T) {
	k, _ := NewHostKey()
	sys := &fakeSystem{keyDelay: 50 * time.Millisecond}
	port := &fakePort{chunks: []string{"", "", "s1 ping\ns2 set-hostkey " + hex.EncodeToString(k.Dropbear) + "\ns3 set-mac 02:00:00:00:00:0b\ns4 set-hos",
		"", "tname c1\nb;d line\ns5 frob\n"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&Server{Sys: sys, Poll: 5 * time.Millisecond}).Serve(ctx, port) }()
	want := "s1 ok\ns2 ok dropbear\ns3 ok\ns4 ok\ns5 err unknown command frob\n"
	deadline := time.Now().Add(5 * time.Second)
	for port.written() != want && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Serve = %v", err)
	}
	if got := port.written(); got != want {
		t.Fatalf("answers %q, want %q", got, want)
	}
	if calls, want := sys.got(), []string{"key begins", "key installed", "mac 02:00:00:00:00:0b", "hostname c1"}; !slices.Equal(calls, want) {
		t.Errorf("calls %q, want %q", calls, want)
	}
	port.mu.Lock()
	reads := port.reads
	port.mu.Unlock()
	if reads > 400 {
		t.Errorf("%d reads while idle: the empty reads are not waited out", reads)
	}
}

// An answer that cannot be written ends Serve with the error.
func TestServeWriteFails(t *testing.T) {
	err := (&Server{Sys: &fakeSystem{}}).Serve(context.Background(), struct {
		io.Reader
		io.Writer
	}{strings.NewReader("w1 ping\n"), failWriter{}})
	if err == nil || !strings.Contains(err.Error(), "answering: broken") {
		t.Errorf("Serve = %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken") }

// With Wait set, an empty read waits on it instead of sleeping Poll, and a
// failing Wait ends Serve.
func TestServeWait(t *testing.T) {
	port := &fakePort{chunks: []string{"", "", "w1 ping\n", ""}}
	var waits atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	s := &Server{Sys: &fakeSystem{}, Poll: time.Hour, Wait: func(ctx context.Context) error {
		if waits.Add(1) == 3 {
			return errors.New("port gone")
		}
		return nil
	}}
	go func() { done <- s.Serve(ctx, port) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "port gone") {
			t.Errorf("Serve = %v, want the wait's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve slept Poll instead of waiting on Wait")
	}
	if got := port.written(); got != "w1 ok\n" || waits.Load() != 3 {
		t.Errorf("answers %q after %d waits", got, waits.Load())
	}
}
