package forward

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
)

// udpBufferSize holds the largest UDP payload, so no datagram is cut.
const udpBufferSize = 65535

// udpSession relays one client's datagrams through its own socket connected
// to the guest, so replies find their way back to that client alone.
type udpSession struct {
	client     netip.AddrPort
	guest      netip.AddrPort
	up         *net.UDPConn
	lastActive atomic.Int64 // time since Forwarder.epoch, in nanoseconds
}

func (f *Forwarder) serveUDP() {
	defer f.wg.Done()
	buf := make([]byte, udpBufferSize)
	for {
		n, client, err := f.udpConn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if isClosedErr(err) {
				return
			}
			continue
		}
		sess := f.session(client)
		if sess == nil {
			// VM not running, or no socket to it: drop, as a stopped
			// guest would. UDP has no way to refuse from user space.
			continue
		}
		sess.touch(f.epoch)
		// A write error (ECONNREFUSED from an earlier ICMP) concerns
		// one datagram; the client may retry.
		sess.up.Write(buf[:n])
	}
}

// session returns client's session to the current guest address, starting
// one if needed. It returns nil when the VM is not running. Only the reader
// goroutine calls it, so sessions are created by one goroutine at a time.
func (f *Forwarder) session(client netip.AddrPort) *udpSession {
	ipStr, ok := f.target()
	f.mu.Lock()
	sess := f.sessions[client]
	f.mu.Unlock()
	if !ok {
		if sess != nil {
			f.endSession(sess)
		}
		return nil
	}
	ip, err := netip.ParseAddr(ipStr)
	if err != nil {
		f.logger.Warn("target address is not an IP", "ip", ipStr)
		return nil
	}
	guest := netip.AddrPortFrom(ip.Unmap(), uint16(f.spec.GuestPort))
	if sess != nil {
		if sess.guest == guest {
			return sess
		}
		// The VM was re-created with a new address: start afresh.
		f.endSession(sess)
	}

	up, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(guest))
	if err != nil {
		f.logger.Debug("opening udp socket to guest", "guest", guest, "err", err)
		return nil
	}
	sess = &udpSession{client: client, guest: guest, up: up}
	sess.touch(f.epoch)

	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		up.Close()
		return nil
	}
	if len(f.sessions) >= f.opts.MaxUDPSessions {
		f.evictIdlestLocked()
	}
	f.sessions[client] = sess
	f.wg.Add(1)
	f.mu.Unlock()
	go f.relayReplies(sess)
	return sess
}

// relayReplies sends the guest's datagrams back to the session's client
// until the session has been idle for UDPIdleTimeout or is ended.
func (f *Forwarder) relayReplies(sess *udpSession) {
	defer f.wg.Done()
	defer f.endSession(sess)
	idle := f.opts.UDPIdleTimeout
	buf := make([]byte, udpBufferSize)
	// The deadline is moved only when it fires, not on every datagram.
	sess.up.SetReadDeadline(time.Now().Add(idle))
	for {
		n, err := sess.up.Read(buf)
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				quiet := time.Since(f.epoch) - time.Duration(sess.lastActive.Load())
				if quiet >= idle {
					return
				}
				sess.up.SetReadDeadline(time.Now().Add(idle - quiet))
				continue
			case errors.Is(err, syscall.ECONNREFUSED):
				// Nothing listens on the guest port yet; keep the
				// session, the client may retry.
				continue
			default:
				return
			}
		}
		sess.touch(f.epoch)
		f.udpConn.WriteToUDPAddrPort(buf[:n], sess.client)
	}
}

func (s *udpSession) touch(epoch time.Time) {
	s.lastActive.Store(int64(time.Since(epoch)))
}

// endSession forgets sess (if it is still the client's session) and closes its
// socket, which also ends its relayReplies goroutine.
func (f *Forwarder) endSession(sess *udpSession) {
	f.mu.Lock()
	if f.sessions[sess.client] == sess {
		delete(f.sessions, sess.client)
	}
	f.mu.Unlock()
	sess.up.Close()
}

// evictIdlestLocked ends the session idle the longest to make room for a new
// client. Linear, but only runs when the table is full. Needs f.mu held.
func (f *Forwarder) evictIdlestLocked() {
	var oldest *udpSession
	for _, s := range f.sessions {
		if oldest == nil || s.lastActive.Load() < oldest.lastActive.Load() {
			oldest = s
		}
	}
	if oldest != nil {
		delete(f.sessions, oldest.client)
		oldest.up.Close()
	}
}

// udpSessions returns the number of live sessions (for tests).
func (f *Forwarder) udpSessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}
