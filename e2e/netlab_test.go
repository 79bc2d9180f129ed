package e2e

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Helpers for the network policy tests: extra addresses and namespaces
// inside the suite's private namespace, listeners that say which address
// answered, and a packet capture that shows what got past the bridge.

// newNetNS makes an anonymous network namespace (closed at cleanup, so it
// goes with the test). The thread that makes it is locked and never
// unlocked: it ends with its goroutine, so no other goroutine ever runs in
// the new namespace by accident.
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	type res struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan res)
	go func() {
		runtime.LockOSThread()
		h, err := netns.New()
		ch <- res{h, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatalf("new network namespace: %v", r.err)
	}
	t.Cleanup(func() { r.h.Close() })
	return r.h
}

// inNS runs f on a fresh thread switched into ns (the thread dies with
// it). Sockets f opens stay in ns and may be used from anywhere after.
func inNS(ns netns.NsHandle, f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			ch <- fmt.Errorf("enter namespace: %w", err)
			return
		}
		ch <- f()
	}()
	return <-ch
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// deleteLinkAtEnd removes a link of the suite's namespace when the test
// ends (its addresses and routes go with it).
func deleteLinkAtEnd(t *testing.T, name string) {
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("cleanup: delete link %s: %v", name, err)
			}
		}
	})
}

// serveAddr listens on TCP addr in ns (nil: the suite's namespace) and
// answers each connection with "<tag> <local address>\n", so a client
// sees which address of which namespace it reached. It returns the count
// of connections accepted.
func serveAddr(t *testing.T, ns *netns.NsHandle, addr, tag string) *atomic.Int64 {
	t.Helper()
	var ln net.Listener
	listen := func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}
	if ns != nil {
		must(t, "listen on "+addr+" in a test namespace", inNS(*ns, listen))
	} else {
		must(t, "listen on "+addr, listen())
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			local, _ := netip.ParseAddrPort(c.LocalAddr().String())
			fmt.Fprintf(c, "%s %s\n", tag, local.Addr().Unmap())
			c.Close()
		}
	}()
	return &n
}

// guestReach has the guest open a TCP connection to ip:port with busybox
// nc and returns the line the server sent ("" when nothing answered
// within 3 s).
func guestReach(t *testing.T, vm, ip, port string) string {
	t.Helper()
	out, _, _ := banger(t, "vm", "exec", vm, "--", "sh", "-c", "timeout 3 nc "+ip+" "+port+" </dev/null 2>/dev/null; true")
	return out
}

// frame is what capture keeps of one Ethernet frame.
type frame struct {
	src   net.HardwareAddr
	etype uint16
	// IPv4: source and destination; ARP (Ethernet/IPv4): sender and
	// target protocol addresses.
	saddr, daddr netip.Addr
}

func (f frame) String() string {
	return fmt.Sprintf("%s type %#04x %s > %s", f.src, f.etype, f.saddr, f.daddr)
}

// capture records the frames an interface of the suite's namespace sees,
// through an AF_PACKET socket. On the bridge it sees what the bridge passed
// up to the host (after the bridge table's prerouting and input hooks); on
// a tap, what the bridge forwarded to that guest and what the guest sent.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames []frame
	stop   atomic.Bool
	done   chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func startCapture(t *testing.T, ifname string) *capture {
	t.Helper()
	l, err := netlink.LinkByName(ifname)
	must(t, "capture: look up "+ifname, err)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	must(t, "capture: packet socket", err)
	must(t, "capture: bind to "+ifname, unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index}))
	// A receive timeout lets the reader notice stop.
	must(t, "capture: timeout", unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000}))
	c := &capture{fd: fd, done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	return c
}

func (c *capture) read() {
	defer close(c.done)
	buf := make([]byte, 2048)
	for !c.stop.Load() {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n < 14 {
			continue
		}
		f := frame{src: net.HardwareAddr(append([]byte(nil), buf[6:12]...)), etype: binary.BigEndian.Uint16(buf[12:14])}
		p := buf[14:n]
		switch {
		case f.etype == 0x0800 && len(p) >= 20:
			f.saddr = netip.AddrFrom4([4]byte(p[12:16]))
			f.daddr = netip.AddrFrom4([4]byte(p[16:20]))
		case f.etype == 0x0806 && len(p) >= 28:
			f.saddr = netip.AddrFrom4([4]byte(p[14:18]))
			f.daddr = netip.AddrFrom4([4]byte(p[24:28]))
		}
		c.mu.Lock()
		c.frames = append(c.frames, f)
		c.mu.Unlock()
	}
}

func (c *capture) close() {
	if c.stop.Swap(true) {
		return
	}
	<-c.done
	unix.Close(c.fd)
}

// matching returns the frames seen so far for which match holds.
func (c *capture) matching(match func(frame) bool) []frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []frame
	for _, f := range c.frames {
		if match(f) {
			out = append(out, f)
		}
	}
	return out
}

// waitFrames waits up to timeout for a frame for which match holds.
func (c *capture) waitFrames(timeout time.Duration, match func(frame) bool) []frame {
	deadline := time.Now().Add(timeout)
	for {
		if fs := c.matching(match); len(fs) > 0 || time.Now().After(deadline) {
			return fs
		}
		time.Sleep(50 * time.Millisecond)
	}
}
