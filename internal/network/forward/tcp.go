package forward

import (
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

func (f *Forwarder) serveTCP() {
	defer f.wg.Done()
	for {
		client, err := f.tcpListener.AcceptTCP()
		if err != nil {
			if isClosedErr(err) || f.ctx.Err() != nil {
				return
			}
			// EMFILE and friends: back off instead of spinning.
			f.logger.Warn("accepting forwarded connection", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !f.track(client) {
			reset(client)
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(client)
			f.proxyTCP(client)
		}()
	}
}

// proxyTCP connects client to the guest and copies both ways until both
// sides have finished. A stopped VM or a failed dial resets the client at
// once, which is what a client dialling the guest directly would see.
func (f *Forwarder) proxyTCP(client *net.TCPConn) {
	ip, ok := f.target()
	if !ok {
		reset(client)
		return
	}
	d := net.Dialer{Timeout: f.opts.DialTimeout}
	conn, err := d.DialContext(f.ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(f.spec.GuestPort)))
	if err != nil {
		f.logger.Debug("dialling guest", "client", client.RemoteAddr(), "err", err)
		reset(client)
		return
	}
	guest := conn.(*net.TCPConn)
	if !f.track(guest) {
		reset(guest)
		reset(client)
		return
	}
	defer f.untrack(guest)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyHalf(guest, client)
	}()
	copyHalf(client, guest)
	wg.Wait()
	client.Close()
	guest.Close()
}

// copyHalf copies src to dst until EOF, then half-closes dst so the peer sees
// EOF while the other direction keeps flowing. On an error (a reset, or Close
// closing the sockets) it resets both, ending the other direction too.
//
// io.Copy between two *net.TCPConn uses splice(2) on Linux, so the payload
// does not pass through user space.
func copyHalf(dst, src *net.TCPConn) {
	if _, err := io.Copy(dst, src); err != nil {
		reset(dst)
		reset(src)
		return
	}
	dst.CloseWrite()
}

// reset closes c with an RST rather than a FIN, so the peer sees the
// connection refused or aborted rather than an orderly empty reply.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func (f *Forwarder) track(c *net.TCPConn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) untrack(c *net.TCPConn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, c)
}
