package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Target returns the guest's current IP address, or ok false when the VM is
// not running. It is called for every new TCP connection and every UDP
// datagram from a client, so it must be cheap (an atomic load or a map read).
type Target func() (ip string, ok bool)

// Options tunes a forwarder. The zero value gives the defaults.
type Options struct {
	// DialTimeout bounds connecting to the guest for one TCP client
	// (default 5s); the client's connection is reset when it expires.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP session after this long without traffic
	// in either direction (default 60s).
	UDPIdleTimeout time.Duration
	// MaxUDPSessions bounds concurrent UDP sessions (default 1024); a new
	// client beyond it evicts the session idle the longest.
	MaxUDPSessions int
}

func (o Options) withDefaults() Options {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.UDPIdleTimeout <= 0 {
		o.UDPIdleTimeout = 60 * time.Second
	}
	if o.MaxUDPSessions <= 0 {
		o.MaxUDPSessions = 1024
	}
	return o
}

// Forwarder serves one Spec: it owns the bound host port and every connection
// or session through it, all of which Close releases.
type Forwarder struct {
	spec   Spec
	target Target
	opts   Options
	logger *slog.Logger

	ctx         context.Context // cancelled by Close; bounds dials to the guest
	cancel      context.CancelFunc
	stopOnCtx   func() bool
	tcpListener *net.TCPListener
	udpConn     *net.UDPConn
	epoch       time.Time // reference for UDP activity times (monotonic)

	mu       sync.Mutex
	closed   bool
	conns    map[*net.TCPConn]struct{}      // both sides of every TCP proxy
	sessions map[netip.AddrPort]*udpSession // UDP sessions by client address

	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Start forwards the spec's host port to the guest with default Options.
// See Options.Start.
func Start(ctx context.Context, s Spec, target Target, logger *slog.Logger) (*Forwarder, error) {
	return Options{}.Start(ctx, s, target, logger)
}

// Start binds the spec's host port now (a taken port is a *PortInUseError) and
// forwards it to target's address until Close is called or ctx is done.
// Host port 0 binds any free port (see Addr). A nil logger discards logs.
// Privileged ports are not checked here: the bind itself fails without the
// right; ValidateSpecs gives the clearer error earlier.
func (o Options) Start(ctx context.Context, s Spec, target Target, logger *slog.Logger) (*Forwarder, error) {
	s = s.withDefaults()
	check := s
	if check.HostPort == 0 {
		check.HostPort = 1 // port 0 (any free port) is allowed here, for tests
	}
	if err := validateSpec(check, 0, true); err != nil {
		return nil, fmt.Errorf("forwarding %s: %w", s, err)
	}
	if target == nil {
		return nil, fmt.Errorf("forwarding %s: no target", s)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Forwarder{
		spec:     s,
		target:   target,
		opts:     o.withDefaults(),
		logger:   logger.With("forward", s.String()),
		epoch:    time.Now(),
		conns:    map[*net.TCPConn]struct{}{},
		sessions: map[netip.AddrPort]*udpSession{},
	}
	var lc net.ListenConfig
	switch s.Proto {
	case TCP:
		ln, err := lc.Listen(ctx, "tcp", s.hostAddrPort())
		if err != nil {
			return nil, bindError(s, err)
		}
		f.tcpListener = ln.(*net.TCPListener)
	case UDP:
		pc, err := lc.ListenPacket(ctx, "udp", s.hostAddrPort())
		if err != nil {
			return nil, bindError(s, err)
		}
		f.udpConn = pc.(*net.UDPConn)
	}
	f.ctx, f.cancel = context.WithCancel(ctx)
	f.stopOnCtx = context.AfterFunc(f.ctx, func() { f.Close() })
	f.wg.Add(1)
	if f.tcpListener != nil {
		go f.serveTCP()
	} else {
		go f.serveUDP()
	}
	return f, nil
}

// Addr returns the bound host address (useful with host port 0 in tests).
func (f *Forwarder) Addr() net.Addr {
	if f.tcpListener != nil {
		return f.tcpListener.Addr()
	}
	return f.udpConn.LocalAddr()
}

// Close stops listening, closes every active connection and session, and
// waits for the forwarder's goroutines to end. It is safe to call more than
// once and from several goroutines; later calls return the first result.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		f.cancel()
		if f.tcpListener != nil {
			f.closeErr = f.tcpListener.Close()
		} else {
			f.closeErr = f.udpConn.Close()
		}
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()
		f.DropConns()
		f.wg.Wait()
	})
	return f.closeErr
}

// DropConns closes every active TCP connection and UDP session but keeps the
// host port bound: for a VM that stopped, whose forwarder stays in place to
// refuse new clients until the VM runs again.
func (f *Forwarder) DropConns() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		c.SetLinger(0)
		c.Close()
	}
	for client, sess := range f.sessions {
		delete(f.sessions, client)
		sess.up.Close()
	}
}

// Open reports how many TCP connections (client side and guest side each
// count) and UDP sessions are open through the forwarder: a VM with any is
// in use.
func (f *Forwarder) Open() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns) + len(f.sessions)
}

// isClosedErr reports whether err comes from a socket closed under us.
func isClosedErr(err error) bool {
	return errors.Is(err, net.ErrClosed)
}
