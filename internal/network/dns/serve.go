package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

const (
	// maxTCPConns bounds concurrent TCP clients; more are closed at once.
	maxTCPConns = 128
	// tcpIdleTimeout closes a TCP client that sends nothing for this long.
	tcpIdleTimeout = 10 * time.Second
	// tcpWriteTimeout bounds writing one response to a TCP client.
	tcpWriteTimeout = 5 * time.Second
	// udpReadBuffer holds the largest possible UDP payload, so an oversized
	// query is seen whole (and rejected) rather than silently cut.
	udpReadBuffer = 65535
)

// listenerPair is the UDP and TCP socket for one listen address.
type listenerPair struct {
	udp *net.UDPConn
	tcp *net.TCPListener
}

func (p *listenerPair) close() {
	p.udp.Close()
	p.tcp.Close()
}

// listenPair binds UDP and TCP on addr. With port 0 the UDP socket picks the
// port and TCP must get the same one; if another socket holds that TCP port we
// try again with a new one.
func listenPair(ctx context.Context, addr string) (*listenerPair, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("parsing dns listen address %q: %w", addr, err)
	}
	var lc net.ListenConfig
	for attempt := 0; ; attempt++ {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, fmt.Errorf("listening for dns on udp %s: %w", addr, err)
		}
		udp := pc.(*net.UDPConn)
		tcpAddr := net.JoinHostPort(host, fmt.Sprint(udp.LocalAddr().(*net.UDPAddr).Port))
		ln, err := lc.Listen(ctx, "tcp", tcpAddr)
		if err == nil {
			return &listenerPair{udp: udp, tcp: ln.(*net.TCPListener)}, nil
		}
		udp.Close()
		if port != "0" || attempt >= 10 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, fmt.Errorf("listening for dns on tcp %s: %w", tcpAddr, err)
		}
	}
}

// serve starts the goroutines answering on p and closes p when ctx is done.
func (s *Server) serve(ctx context.Context, p *listenerPair) {
	var conns tcpConns
	go func() {
		<-ctx.Done()
		p.close()
		conns.closeAll()
	}()
	// Several readers per socket keep both cores busy under load; the
	// kernel hands each datagram to exactly one of them.
	for range max(2, runtime.GOMAXPROCS(0)) {
		go s.serveUDP(p.udp)
	}
	go s.serveTCP(ctx, p.tcp, &conns)
}

func (s *Server) serveUDP(conn *net.UDPConn) {
	buf := make([]byte, udpReadBuffer)
	for {
		n, client, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Errors such as ECONNREFUSED from an earlier reply's ICMP
			// belong to one packet, not to the socket: keep serving.
			continue
		}
		resp, fwd := s.safeAnswer(buf[:n], false)
		if fwd != nil {
			s.forwardUDPAsync(conn, client, fwd)
			continue
		}
		if resp != nil {
			conn.WriteToUDPAddrPort(resp, client)
		}
	}
}

// forwardUDPAsync forwards q to the upstream without blocking the reader,
// dropping it when too many forwards are in flight (the client retries).
func (s *Server) forwardUDPAsync(conn *net.UDPConn, client netip.AddrPort, q *mdns.Msg) {
	select {
	case s.forwardSlots <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-s.forwardSlots }()
		defer s.recoverQuery()
		if resp := s.forward(q, false); resp != nil {
			conn.WriteToUDPAddrPort(resp, client)
		}
	}()
}

func (s *Server) serveTCP(ctx context.Context, ln *net.TCPListener, conns *tcpConns) {
	slots := make(chan struct{}, maxTCPConns)
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close()
			continue
		}
		if !conns.add(c) {
			c.Close()
			<-slots
			return
		}
		go func() {
			defer func() { <-slots }()
			defer conns.remove(c)
			s.serveTCPConn(c)
		}()
	}
}

// serveTCPConn answers length-prefixed queries (RFC 1035 4.2.2, RFC 7766) on
// one connection until the client closes it, idles, or sends garbage.
func (s *Server) serveTCPConn(c *net.TCPConn) {
	defer c.Close()
	var lenBuf [2]byte
	buf := make([]byte, 512)
	for {
		c.SetReadDeadline(time.Now().Add(tcpIdleTimeout))
		if _, err := io.ReadFull(c, lenBuf[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(lenBuf[:]))
		if n > cap(buf) {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		resp, fwd := s.safeAnswer(buf, true)
		if fwd != nil {
			resp = s.forward(fwd, true)
		}
		if resp == nil {
			return
		}
		out := make([]byte, 2+len(resp))
		binary.BigEndian.PutUint16(out, uint16(len(resp)))
		copy(out[2:], resp)
		c.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// safeAnswer is answer with a last-resort recover: a bug in the query path
// must cost one query, not the daemon. The fuzz test calls Handle, which has
// no such net, so it still finds such bugs.
func (s *Server) safeAnswer(req []byte, tcp bool) (resp []byte, fwd *mdns.Msg) {
	defer s.recoverQuery()
	return s.answer(req, tcp)
}

func (s *Server) recoverQuery() {
	if r := recover(); r != nil {
		s.logger.Error("dns query panicked", "panic", r)
	}
}

// tcpConns tracks open TCP clients so they can be closed on shutdown.
type tcpConns struct {
	mu     sync.Mutex
	closed bool
	set    map[*net.TCPConn]struct{}
}

func (t *tcpConns) add(c *net.TCPConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if t.set == nil {
		t.set = map[*net.TCPConn]struct{}{}
	}
	t.set[c] = struct{}{}
	return true
}

func (t *tcpConns) remove(c *net.TCPConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.set, c)
}

func (t *tcpConns) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for c := range t.set {
		c.Close()
	}
}
