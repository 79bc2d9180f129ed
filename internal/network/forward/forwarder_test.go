package forward

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// patience bounds waits for things that must happen promptly; it is a
// deadline against hangs, not a speed assertion.
const patience = 10 * time.Second

// vm is a fake VM for Target: a loopback address and a running flag.
type vm struct {
	running atomic.Bool
	ip      atomic.Value // string
}

func newVM(ip string) *vm {
	v := &vm{}
	v.ip.Store(ip)
	v.running.Store(true)
	return v
}

func (v *vm) target() (string, bool) { return v.ip.Load().(string), v.running.Load() }

// tcpEchoServer echoes every connection and half-closes after the client's EOF.
func tcpEchoServer(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func startForwarder(t testing.TB, opts Options, proto Proto, guestPort int, v *vm) *Forwarder {
	t.Helper()
	f, err := opts.Start(context.Background(), Spec{HostPort: 0, GuestPort: guestPort, Proto: proto}, v.target, nil)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func dialTCP(t testing.TB, addr net.Addr) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dialling forwarder: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// wantClosedByPeer reads from c and fails unless the read ends with EOF or a
// reset (not a deadline), meaning the forwarder dropped the connection.
func wantClosedByPeer(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(patience))
	_, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("connection still open; want EOF or reset")
	}
}

// wantRefused connects to the forwarder and fails unless the connection is
// refused: on loopback the forwarder's reset often lands before connect(2)
// returns, so a failed dial counts as refused as well.
func wantRefused(t *testing.T, addr net.Addr) {
	t.Helper()
	c, err := net.Dial("tcp", addr.String())
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial error %v, want a connection reset", err)
		}
		return
	}
	defer c.Close()
	wantClosedByPeer(t, c)
}

func TestTCPForwardsBytesExactly(t *testing.T) {
	port := tcpEchoServer(t)
	f := startForwarder(t, Options{}, TCP, port, newVM("127.0.0.1"))
	if f.Addr().(*net.TCPAddr).IP.String() != "127.0.0.1" {
		t.Fatalf("forwarder bound %v, want loopback by default", f.Addr())
	}
	c := dialTCP(t, f.Addr())

	payload := make([]byte, 4<<20)
	rand.Read(payload)
	writeErr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.CloseWrite() // half-close must reach the guest
		}
		writeErr <- err
	}()
	c.SetReadDeadline(time.Now().Add(patience))
	got, err := io.ReadAll(c) // ends at the echo server's FIN
	if err != nil {
		t.Fatalf("reading echo: %v", err)
	}
	if err := <-writeErr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("echoed %d bytes differ from the %d sent", len(got), len(payload))
	}
}

func TestTCPStoppedVMIsRefused(t *testing.T) {
	port := tcpEchoServer(t)
	v := newVM("127.0.0.1")
	v.running.Store(false)
	f := startForwarder(t, Options{}, TCP, port, v)
	wantRefused(t, f.Addr())

	// Once the VM runs, the same forwarder carries traffic.
	v.running.Store(true)
	c := dialTCP(t, f.Addr())
	c.Write([]byte("ping"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(patience))
	if got, _ := io.ReadAll(c); string(got) != "ping" {
		t.Fatalf("echo after start = %q, want ping", got)
	}
}

func TestTCPGuestPortClosedIsRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	f := startForwarder(t, Options{}, TCP, closedPort, newVM("127.0.0.1"))
	wantRefused(t, f.Addr())
}

func TestTCPFollowsNewAddress(t *testing.T) {
	port := tcpEchoServer(t) // listens on 127.0.0.1 only
	v := newVM("127.0.0.2")  // nothing there on that port
	f := startForwarder(t, Options{}, TCP, port, v)
	wantRefused(t, f.Addr())
	v.ip.Store("127.0.0.1")
	c := dialTCP(t, f.Addr())
	c.Write([]byte("x"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(patience))
	if got, _ := io.ReadAll(c); string(got) != "x" {
		t.Fatalf("echo = %q, want x", got)
	}
}

func TestCloseIsIdempotentAndClosesConns(t *testing.T) {
	port := tcpEchoServer(t)
	f := startForwarder(t, Options{}, TCP, port, newVM("127.0.0.1"))
	c := dialTCP(t, f.Addr())
	c.Write([]byte("hi"))
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("echo before Close = %q, %v", buf, err)
	}

	first := f.Close()
	if second := f.Close(); second != first {
		t.Fatalf("second Close = %v, first = %v", second, first)
	}
	wantClosedByPeer(t, c)
	if c2, err := net.Dial("tcp", f.Addr().String()); err == nil {
		c2.Close()
		t.Fatal("forwarder still accepts after Close")
	}
	if n := len(f.conns); n != 0 {
		t.Fatalf("%d connections still tracked after Close", n)
	}
}

func TestDropConnsKeepsListening(t *testing.T) {
	port := tcpEchoServer(t)
	f := startForwarder(t, Options{}, TCP, port, newVM("127.0.0.1"))
	c := dialTCP(t, f.Addr())
	c.Write([]byte("a"))
	c.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	f.DropConns()
	wantClosedByPeer(t, c)
	c2 := dialTCP(t, f.Addr())
	c2.Write([]byte("b"))
	c2.CloseWrite()
	c2.SetReadDeadline(time.Now().Add(patience))
	if got, _ := io.ReadAll(c2); string(got) != "b" {
		t.Fatalf("echo after DropConns = %q, want b", got)
	}
}

func TestContextCancelClosesForwarder(t *testing.T) {
	port := tcpEchoServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	f, err := Start(ctx, Spec{GuestPort: port}, newVM("127.0.0.1").target, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cancel()
	deadline := time.Now().Add(patience)
	for {
		c, err := net.Dial("tcp", f.Addr().String())
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("forwarder still accepting after ctx was cancelled")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartRefusesTakenPort(t *testing.T) {
	for _, proto := range []Proto{TCP, UDP} {
		var port int
		if proto == TCP {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port = ln.Addr().(*net.TCPAddr).Port
		} else {
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			port = pc.LocalAddr().(*net.UDPAddr).Port
		}
		spec := Spec{HostPort: port, GuestPort: 80, Proto: proto}
		f, err := Start(context.Background(), spec, newVM("127.0.0.1").target, nil)
		if err == nil {
			f.Close()
			t.Fatalf("Start on taken %s port %d succeeded", proto, port)
		}
		want := fmt.Sprintf("host port 127.0.0.1:%d/%s is already in use", port, proto)
		if err.Error() != want || !errors.Is(err, ErrPortInUse) {
			t.Fatalf("Start error = %q, want %q matching ErrPortInUse", err, want)
		}
		if err := CheckHostPortFree(spec); !errors.Is(err, ErrPortInUse) {
			t.Fatalf("CheckHostPortFree = %v, want ErrPortInUse", err)
		}
	}
}

func TestStartRejectsBadSpec(t *testing.T) {
	for _, s := range []Spec{{HostPort: 8080, GuestPort: 0}, {HostPort: 8080, GuestPort: 80, Proto: "sctp"}, {HostAddr: "x", HostPort: 8080, GuestPort: 80}} {
		if f, err := Start(context.Background(), s, newVM("127.0.0.1").target, nil); err == nil {
			f.Close()
			t.Errorf("Start(%+v) succeeded", s)
		}
	}
	if _, err := Start(context.Background(), Spec{GuestPort: 80}, nil, nil); err == nil {
		t.Error("Start with a nil target succeeded")
	}
}

// udpEchoServer answers each datagram with "<sender port>:<payload>", so a
// test can tell which upstream socket (session) a datagram came through.
func udpEchoServer(t testing.TB) (port int, senders func() map[string]bool) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var mu sync.Mutex
	seen := map[string]bool{}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p := strconv.Itoa(from.(*net.UDPAddr).Port)
			mu.Lock()
			seen[p] = true
			mu.Unlock()
			pc.WriteTo(append([]byte(p+":"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).Port, func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]bool{}
		for k := range seen {
			out[k] = true
		}
		return out
	}
}

// udpRoundTrip sends payload on c and returns the payload part of the reply
// and the upstream port it came through.
func udpRoundTrip(t *testing.T, c net.Conn, payload string) (reply, via string) {
	t.Helper()
	if _, err := c.Write([]byte(payload)); err != nil {
		t.Fatalf("sending %q: %v", payload, err)
	}
	buf := make([]byte, 65535)
	c.SetReadDeadline(time.Now().Add(patience))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("waiting for the echo of %q: %v", payload, err)
	}
	via, reply, _ = strings.Cut(string(buf[:n]), ":")
	return reply, via
}

func dialUDP(t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	c, err := net.Dial("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestUDPClientsGetSeparateSessions(t *testing.T) {
	port, senders := udpEchoServer(t)
	f := startForwarder(t, Options{}, UDP, port, newVM("127.0.0.1"))
	a, b := dialUDP(t, f.Addr()), dialUDP(t, f.Addr())

	replyA, viaA := udpRoundTrip(t, a, "from a")
	replyB, viaB := udpRoundTrip(t, b, "from b")
	if replyA != "from a" || replyB != "from b" {
		t.Fatalf("replies crossed: a got %q, b got %q", replyA, replyB)
	}
	if viaA == viaB {
		t.Fatalf("both clients went through upstream port %s; want one session each", viaA)
	}
	// A second datagram from a reuses its session.
	if reply, via := udpRoundTrip(t, a, "again"); reply != "again" || via != viaA {
		t.Fatalf("second datagram from a: %q via %s, want again via %s", reply, via, viaA)
	}
	if got := len(senders()); got != 2 {
		t.Fatalf("guest saw %d source ports, want 2", got)
	}
	if n := f.udpSessions(); n != 2 {
		t.Fatalf("%d sessions, want 2", n)
	}

	big := strings.Repeat("z", 60000)
	if reply, _ := udpRoundTrip(t, a, big); reply != big {
		t.Fatalf("60000-byte datagram came back as %d bytes", len(reply))
	}
}

func TestUDPIdleSessionExpires(t *testing.T) {
	port, _ := udpEchoServer(t)
	f := startForwarder(t, Options{UDPIdleTimeout: 50 * time.Millisecond}, UDP, port, newVM("127.0.0.1"))
	c := dialUDP(t, f.Addr())
	_, firstVia := udpRoundTrip(t, c, "one")
	waitSessions(t, f, 0)
	// The client may carry on: a new session (new upstream port) serves it.
	reply, via := udpRoundTrip(t, c, "two")
	if reply != "two" || via == firstVia {
		t.Fatalf("after expiry got %q via %s (first session via %s); want a fresh session", reply, via, firstVia)
	}
}

func waitSessions(t *testing.T, f *Forwarder, want int) {
	t.Helper()
	deadline := time.Now().Add(patience)
	for f.udpSessions() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d udp sessions, want %d", f.udpSessions(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestUDPStoppedVMDropsDatagrams(t *testing.T) {
	port, _ := udpEchoServer(t)
	v := newVM("127.0.0.1")
	sawStopped := make(chan struct{}, 1)
	target := func() (string, bool) {
		ip, ok := v.target()
		if !ok {
			sawStopped <- struct{}{}
		}
		return ip, ok
	}
	f, err := Start(context.Background(), Spec{GuestPort: port, Proto: UDP}, target, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := dialUDP(t, f.Addr())
	udpRoundTrip(t, c, "running")

	v.running.Store(false)
	c.Write([]byte("while stopped"))
	select {
	case <-sawStopped:
	case <-time.After(patience):
		t.Fatal("forwarder never asked the target about the datagram sent while stopped")
	}
	waitSessions(t, f, 0) // the stopped VM's session is ended
	v.running.Store(true)
	// The forwarder reads datagrams in order: if the one sent while stopped
	// had been relayed, its echo would arrive first.
	if reply, _ := udpRoundTrip(t, c, "after"); reply != "after" {
		t.Fatalf("first reply after restart = %q, want after", reply)
	}
}

func TestUDPSessionsAreBounded(t *testing.T) {
	port, _ := udpEchoServer(t)
	f := startForwarder(t, Options{MaxUDPSessions: 2}, UDP, port, newVM("127.0.0.1"))
	for i := range 5 {
		c := dialUDP(t, f.Addr())
		if reply, _ := udpRoundTrip(t, c, fmt.Sprint(i)); reply != fmt.Sprint(i) {
			t.Fatalf("client %d got %q", i, reply)
		}
		if n := f.udpSessions(); n > 2 {
			t.Fatalf("%d sessions with MaxUDPSessions 2", n)
		}
	}
}

func TestUDPCloseEndsSessions(t *testing.T) {
	port, _ := udpEchoServer(t)
	f := startForwarder(t, Options{}, UDP, port, newVM("127.0.0.1"))
	udpRoundTrip(t, dialUDP(t, f.Addr()), "x")
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := f.udpSessions(); n != 0 {
		t.Fatalf("%d sessions after Close", n)
	}
	// The host port is free again.
	if err := CheckHostPortFree(Spec{HostPort: f.Addr().(*net.UDPAddr).Port, GuestPort: 1, Proto: UDP}); err != nil {
		t.Fatalf("host port still bound after Close: %v", err)
	}
}

// Open counts the connections in flight, so a VM with one is busy.
func TestOpenCountsConnections(t *testing.T) {
	port := tcpEchoServer(t)
	f := startForwarder(t, Options{}, TCP, port, newVM("127.0.0.1"))
	if n := f.Open(); n != 0 {
		t.Fatalf("Open = %d before any client", n)
	}
	c := dialTCP(t, f.Addr())
	c.Write([]byte("x"))
	c.SetReadDeadline(time.Now().Add(patience))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if n := f.Open(); n != 2 {
		t.Fatalf("Open = %d with one client, want 2 (its side and the guest's)", n)
	}
	c.Close()
	for deadline := time.Now().Add(patience); f.Open() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Open = %d after the client left", f.Open())
		}
	}
}
