package policy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The traffic test builds, inside the test's private namespace ("the host"),
// a bridge with the gateway address, three guests (each its own namespace, joined by a veth whose
// host end is named like the VM's tap and enslaved to the bridge), and an
// "internet" namespace routed through the host's "uplink" veth, which
// carries another host address, with forwarding on (no NAT;
// every address lives in these namespaces). Then real TCP and UDP show
// what passes, first without policy (so every block later is the policy's
// doing), then under several policies.

const (
	trafficBridge = "bgpol0"
	// A probe that must pass gets time to spare on a loaded machine; one
	// that must be blocked waits less (the same paths answer in well under
	// a millisecond when open, as the no-policy phase shows).
	passTimeout  = 2 * time.Second
	blockTimeout = 750 * time.Millisecond
)

var (
	gwAddr = netip.MustParseAddr("172.30.0.1")
	// The "internet": addresses on the internet namespace's loopback.
	allowedNet  = netip.MustParseAddr("198.51.100.10")
	deniedNet   = netip.MustParseAddr("203.0.113.10")
	metadata    = netip.MustParseAddr("169.254.169.254")
	inetLinkH   = netip.MustParsePrefix("10.200.0.1/24") // host end: the host's "uplink" address
	inetLinkI   = netip.MustParsePrefix("10.200.0.2/24") // internet end
	inetHostEnd = "bginet0"
)

// newNetNS makes an anonymous network namespace. The thread that makes it
// is locked and never unlocked, so it ends with its goroutine and no other
// goroutine ever runs in the new namespace by accident.
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

// inNS runs f on a fresh thread switched into ns (that thread dies with
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

type guest struct {
	name string // identity its servers answer with
	ns   netns.NsHandle
	nl   *netlink.Handle
	pol  VMPolicy
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func addrOf(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// newGuest makes a guest namespace joined to the bridge by a veth named
// like the VM's tap, with the policy's MAC and IP and a default route via
// the gateway, and an identity server on TCP 22.
func newGuest(t *testing.T, name, id, ip string, br netlink.Link) *guest {
	t.Helper()
	g := &guest{name: name, ns: newNetNS(t), pol: testPolicy(id, ip)}
	nl, err := netlink.NewHandleAt(g.ns)
	must(t, "netlink handle for "+name, err)
	t.Cleanup(nl.Close)
	g.nl = nl
	// No duplicate address detection: the guest's IPv6 link-local address
	// is usable at once.
	writeSysctl(t, g.ns, "/proc/sys/net/ipv6/conf/default/accept_dad", "0")
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: g.pol.Tap, MasterIndex: br.Attrs().Index}, PeerName: "eth0", PeerNamespace: netlink.NsFd(g.ns)}
	must(t, "add veth "+g.pol.Tap, netlink.LinkAdd(veth))
	t.Cleanup(func() { deleteLink(g.pol.Tap) })
	host, err := netlink.LinkByName(g.pol.Tap)
	must(t, "look up "+g.pol.Tap, err)
	must(t, "set "+g.pol.Tap+" up", netlink.LinkSetUp(host))

	eth, err := nl.LinkByName("eth0")
	must(t, "look up eth0 of "+name, err)
	mac, _ := net.ParseMAC(g.pol.MAC)
	must(t, "set mac of "+name, nl.LinkSetHardwareAddr(eth, mac))
	must(t, "address "+name, nl.AddrAdd(eth, addrOf(netip.PrefixFrom(g.pol.IP, 24))))
	must(t, "set eth0 of "+name+" up", nl.LinkSetUp(eth))
	lo, err := nl.LinkByName("lo")
	must(t, "look up lo of "+name, err)
	must(t, "set lo of "+name+" up", nl.LinkSetUp(lo))
	must(t, "default route of "+name, nl.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gwAddr.AsSlice()}))
	serveTCP(t, g.ns, ":22", name)
	return g
}

func deleteLink(name string) {
	if l, err := netlink.LinkByName(name); err == nil {
		_ = netlink.LinkDel(l)
	}
}

// serveTCP answers each connection's first line with "<id>:<line>".
func serveTCP(t *testing.T, ns netns.NsHandle, addr, id string) {
	t.Helper()
	var ln net.Listener
	must(t, "listen tcp "+addr+" for "+id, inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}))
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(2 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "%s:%s", id, line)
				}
			}()
		}
	}()
}

// serveUDP answers each datagram with "<id>:<datagram>".
func serveUDP(t *testing.T, ns netns.NsHandle, addr, id string) {
	t.Helper()
	var pc net.PacketConn
	must(t, "listen udp "+addr+" for "+id, inNS(ns, func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(id+":"+string(buf[:n])), from)
		}
	}()
}

// probe opens a TCP connection (or sends a UDP datagram) from ns to addr
// and returns the server's identity, or an error when nothing answered.
func probe(ns netns.NsHandle, proto, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := inNS(ns, func() (err error) {
		c, err = (&net.Dialer{Timeout: timeout}).Dial(proto, addr)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "hello\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	id, ok := strings.CutSuffix(strings.TrimSpace(line), ":hello")
	if !ok {
		return "", fmt.Errorf("odd answer %q", line)
	}
	return id, nil
}

// expect is one probe and its expected outcome: the identity of the server
// that must answer, or "" when nothing may.
type expect struct {
	from      string
	ns        netns.NsHandle
	proto     string
	addr      string
	wantReply string
}

// neighborCache is a link whose IPv4 neighbour entries check forgets.
type neighborCache struct {
	nl   *netlink.Handle
	link string
}

// lab is the namespaces' neighbour caches.
type lab struct{ caches []neighborCache }

// check runs the probes in parallel (blocked ones take the whole timeout)
// and reports each one that went otherwise. It first empties every
// neighbour cache: an ARP resolution left pending by a blocked probe of an
// earlier phase would otherwise delay (by its 1 s retransmit) a probe that
// must now pass, and a poisoned entry would outlive its experiment.
func (l *lab) check(t *testing.T, phase string, exps []expect) {
	t.Helper()
	for _, c := range l.caches {
		flushNeighbors(t, c.nl, c.link)
	}
	errs := make([]string, len(exps))
	var wg sync.WaitGroup
	for i, e := range exps {
		wg.Go(func() {
			timeout := passTimeout
			if e.wantReply == "" {
				timeout = blockTimeout
			}
			got, err := probe(e.ns, e.proto, e.addr, timeout)
			switch {
			case e.wantReply == "" && err == nil:
				errs[i] = fmt.Sprintf("%s: %s %s -> %s: answered by %q, want blocked", phase, e.from, e.proto, e.addr, got)
			case e.wantReply != "" && err != nil:
				errs[i] = fmt.Sprintf("%s: %s %s -> %s: %v, want an answer from %q", phase, e.from, e.proto, e.addr, err, e.wantReply)
			case e.wantReply != "" && got != e.wantReply:
				errs[i] = fmt.Sprintf("%s: %s %s -> %s: answered by %q, want %q", phase, e.from, e.proto, e.addr, got, e.wantReply)
			}
		})
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Error(e)
		}
	}
}

func hp(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// flushNeighbors forgets every IPv4 neighbour of a link, so a spoofing
// experiment leaves no poisoned cache behind.
func flushNeighbors(t *testing.T, nl *netlink.Handle, link string) {
	t.Helper()
	l, err := nl.LinkByName(link)
	must(t, "look up "+link, err)
	neighs, err := nl.NeighList(l.Attrs().Index, netlink.FAMILY_V4)
	must(t, "list neighbours of "+link, err)
	for _, n := range neighs {
		_ = nl.NeighDel(&n)
	}
}

// setGuestIP replaces the guest's address (and default route) with ip.
func setGuestIP(t *testing.T, g *guest, from, to netip.Addr) {
	t.Helper()
	eth, err := g.nl.LinkByName("eth0")
	must(t, "look up eth0", err)
	must(t, "delete address", g.nl.AddrDel(eth, addrOf(netip.PrefixFrom(from, 24))))
	must(t, "add address", g.nl.AddrAdd(eth, addrOf(netip.PrefixFrom(to, 24))))
	must(t, "default route", g.nl.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gwAddr.AsSlice()}))
}

func setGuestMAC(t *testing.T, g *guest, mac string) {
	t.Helper()
	eth, err := g.nl.LinkByName("eth0")
	must(t, "look up eth0", err)
	hw, _ := net.ParseMAC(mac)
	must(t, "set mac", g.nl.LinkSetHardwareAddr(eth, hw))
}

// hostNeighbor returns the MAC the host has for ip on the bridge ("" when
// none).
func hostNeighbor(t *testing.T, ip netip.Addr) string {
	t.Helper()
	br, err := netlink.LinkByName(trafficBridge)
	must(t, "look up bridge", err)
	neighs, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	must(t, "list neighbours", err)
	for _, n := range neighs {
		if n.IP.Equal(ip.AsSlice()) && n.HardwareAddr != nil {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

// waitOperUp waits until the links are operationally up. The kernel
// attaches a link's real queue (until then it drops what is sent) in the
// same deferred link-watch work that sets the operational state, up to a
// second after the link is set up.
func waitOperUp(t *testing.T, nl *netlink.Handle, names ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, name := range names {
		for {
			l, err := nl.LinkByName(name)
			must(t, "look up "+name, err)
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("link %s not operationally up after 5s (state %s)", name, l.Attrs().OperState)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// bridgeLinkLocal waits for the bridge's IPv6 link-local address.
func bridgeLinkLocal(t *testing.T, name string) netip.Addr {
	t.Helper()
	br, err := netlink.LinkByName(name)
	must(t, "look up "+name, err)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		addrs, err := netlink.AddrList(br, netlink.FAMILY_V6)
		must(t, "addresses of "+name, err)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.IsLinkLocalUnicast() {
				return ip
			}
		}
	}
	t.Fatalf("bridge %s has no IPv6 link-local address after 5s", name)
	return netip.Addr{}
}

func writeSysctl(t *testing.T, ns netns.NsHandle, path, value string) {
	t.Helper()
	must(t, "sysctl "+path, inNS(ns, func() error { return os.WriteFile(path, []byte(value), 0o644) }))
}

func TestTraffic(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()

	// The host: the namespace this test binary runs in.
	// Every thread of this process is in it: goroutines that switch
	// namespaces lock their thread and let it die.
	host, err := netns.Get()
	must(t, "host namespace", err)
	t.Cleanup(func() { host.Close() })
	hostNL := &netlink.Handle{}

	writeSysctl(t, host, "/proc/sys/net/ipv6/conf/default/accept_dad", "0")
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: trafficBridge}}
	must(t, "add bridge", netlink.LinkAdd(br))
	t.Cleanup(func() { deleteLink(trafficBridge) })
	brLink, err := netlink.LinkByName(trafficBridge)
	must(t, "look up bridge", err)
	must(t, "address bridge", netlink.AddrAdd(brLink, addrOf(netip.PrefixFrom(gwAddr, 24))))
	must(t, "bridge up", netlink.LinkSetUp(brLink))

	a := newGuest(t, "A", idA, "172.30.0.2", brLink)
	b := newGuest(t, "B", idB, "172.30.0.3", brLink)
	c := newGuest(t, "C", idC, "172.30.0.4", brLink)

	// The internet, routed (not NATed) through the host.
	inet := newNetNS(t)
	inl, err := netlink.NewHandleAt(inet)
	must(t, "netlink handle for internet", err)
	t.Cleanup(inl.Close)
	must(t, "add internet veth", netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: inetHostEnd}, PeerName: "eth0", PeerNamespace: netlink.NsFd(inet)}))
	t.Cleanup(func() { deleteLink(inetHostEnd) })
	hostEnd, err := netlink.LinkByName(inetHostEnd)
	must(t, "look up "+inetHostEnd, err)
	must(t, "address "+inetHostEnd, netlink.AddrAdd(hostEnd, addrOf(inetLinkH)))
	must(t, inetHostEnd+" up", netlink.LinkSetUp(hostEnd))
	ieth, err := inl.LinkByName("eth0")
	must(t, "internet eth0", err)
	must(t, "address internet eth0", inl.AddrAdd(ieth, addrOf(inetLinkI)))
	must(t, "internet eth0 up", inl.LinkSetUp(ieth))
	ilo, err := inl.LinkByName("lo")
	must(t, "internet lo", err)
	must(t, "internet lo up", inl.LinkSetUp(ilo))
	for _, addr := range []netip.Addr{allowedNet, deniedNet, metadata} {
		must(t, "internet address "+addr.String(), inl.AddrAdd(ilo, addrOf(netip.PrefixFrom(addr, 32))))
		must(t, "host route to "+addr.String(), netlink.RouteAdd(&netlink.Route{LinkIndex: hostEnd.Attrs().Index, Dst: ipNet(netip.PrefixFrom(addr, 32)), Gw: inetLinkI.Addr().AsSlice()}))
	}
	must(t, "internet route back", inl.RouteAdd(&netlink.Route{LinkIndex: ieth.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("172.30.0.0/24")), Gw: inetLinkH.Addr().AsSlice()}))
	writeSysctl(t, host, "/proc/sys/net/ipv4/ip_forward", "1")
	serveTCP(t, inet, ":80", "internet")

	// Host services: DNS stand-ins on the gateway, one port a VM is allowed,
	// and ports closed to guests on the gateway, on the host's other address
	// (its "uplink" to the internet, standing in for a dummy interface, which
	// this kernel lacks) and on IPv6.
	otherHostAddr := inetLinkH.Addr()
	serveTCP(t, host, hp(gwAddr, 53), "dns-tcp")
	serveUDP(t, host, hp(gwAddr, 53), "dns-udp")
	serveUDP(t, host, hp(gwAddr, 5353), "host-udp-5353")
	serveTCP(t, host, hp(gwAddr, 8080), "host-8080")
	serveTCP(t, host, hp(gwAddr, 9090), "host-9090")
	serveTCP(t, host, hp(otherHostAddr, 8080), "uplink-8080")
	serveTCP(t, host, hp(otherHostAddr, 9090), "uplink-9090")
	serveTCP(t, host, "[::]:9092", "host-v6")

	l := &lab{caches: []neighborCache{{hostNL, trafficBridge}, {hostNL, inetHostEnd}, {a.nl, "eth0"}, {b.nl, "eth0"}, {c.nl, "eth0"}, {inl, "eth0"}}}

	// hairpin probes A -> B routed through the host (a route for B's address
	// via the gateway) instead of across the bridge. A takes no redirects, so
	// the route is followed every time.
	writeSysctl(t, a.ns, "/proc/sys/net/ipv4/conf/all/accept_redirects", "0")
	writeSysctl(t, a.ns, "/proc/sys/net/ipv4/conf/eth0/accept_redirects", "0")
	aEth, err := a.nl.LinkByName("eth0")
	must(t, "A eth0", err)
	hairpin := func(phase, want string) {
		t.Helper()
		route := &netlink.Route{LinkIndex: aEth.Attrs().Index, Dst: ipNet(netip.PrefixFrom(b.pol.IP, 32)), Gw: gwAddr.AsSlice()}
		must(t, "A's route to B via the host", a.nl.RouteAdd(route))
		l.check(t, phase, []expect{{"A via the host", a.ns, "tcp", hp(b.pol.IP, 22), want}})
		must(t, "delete A's route to B via the host", a.nl.RouteDel(route))
	}

	ip := func(g *guest, port int) string { return hp(g.pol.IP, port) }
	// The host's IPv6 link-local address on the bridge: a guest reaches it
	// without any IPv4 rule being involved.
	bridgeV6 := hp(bridgeLinkLocal(t, trafficBridge).WithZone("eth0"), 9092)
	everything := func(wantBlockedReply func(string) string) []expect {
		return []expect{
			{"A", a.ns, "tcp", hp(gwAddr, 9090), wantBlockedReply("host-9090")},
			{"A", a.ns, "tcp", hp(otherHostAddr, 9090), wantBlockedReply("uplink-9090")},
			{"A", a.ns, "tcp", hp(otherHostAddr, 8080), wantBlockedReply("uplink-8080")},
			{"A", a.ns, "tcp", bridgeV6, wantBlockedReply("host-v6")},
			{"B", b.ns, "tcp", hp(gwAddr, 8080), wantBlockedReply("host-8080")},
			{"A", a.ns, "udp", hp(gwAddr, 5353), wantBlockedReply("host-udp-5353")},
			{"A", a.ns, "tcp", hp(deniedNet, 80), wantBlockedReply("internet")},
			{"A", a.ns, "tcp", hp(metadata, 80), wantBlockedReply("internet")},
			{"B", b.ns, "tcp", hp(metadata, 80), wantBlockedReply("internet")},
			{"C", c.ns, "tcp", hp(deniedNet, 80), wantBlockedReply("internet")},
			{"C", c.ns, "tcp", hp(inetLinkI.Addr(), 80), wantBlockedReply("internet")},
			// These pass under the policies too.
			{"A", a.ns, "tcp", hp(gwAddr, 53), "dns-tcp"},
			{"A", a.ns, "udp", hp(gwAddr, 53), "dns-udp"},
			{"B", b.ns, "udp", hp(gwAddr, 53), "dns-udp"},
			{"A", a.ns, "tcp", hp(gwAddr, 8080), "host-8080"},
			{"host", host, "tcp", ip(a, 22), "A"},
			{"host", host, "tcp", ip(b, 22), "B"},
			{"A", a.ns, "tcp", ip(b, 22), "B"},
			{"B", b.ns, "tcp", ip(a, 22), "A"},
			{"C", c.ns, "tcp", ip(b, 22), "B"},
			{"A", a.ns, "tcp", hp(allowedNet, 80), "internet"},
			{"C", c.ns, "tcp", hp(allowedNet, 80), "internet"},
		}
	}

	waitOperUp(t, hostNL, trafficBridge, inetHostEnd, a.pol.Tap, b.pol.Tap, c.pol.Tap)
	for _, nl := range []*netlink.Handle{a.nl, b.nl, c.nl, inl} {
		waitOperUp(t, nl, "eth0")
	}

	// Without policy everything answers: the probes and the topology work,
	// so each block below is the policy's doing. A guest taking another's
	// address works too.
	l.check(t, "no policy", everything(func(id string) string { return id }))
	hairpin("no policy", "B")
	setGuestIP(t, a, a.pol.IP, b.pol.IP)
	l.check(t, "no policy, A spoofing B's ip", []expect{{"A with B's ip", a.ns, "udp", hp(gwAddr, 53), "dns-udp"}})
	if got := hostNeighbor(t, b.pol.IP); got != a.pol.MAC {
		t.Errorf("no policy: host's neighbour for %s is %q after A claimed it, want A's mac %s (the spoofing control failed)", b.pol.IP, got, a.pol.MAC)
	}
	setGuestIP(t, a, b.pol.IP, a.pol.IP)
	if t.Failed() {
		t.FailNow()
	}

	m := newTestManager(t, "bgtest_traffic")
	m.Config.Bridge, m.Config.EgressNAT = trafficBridge, true
	a.pol.AllowHostPorts = []uint16{8080}
	a.pol.EgressDeny = prefixes("203.0.113.0/24")
	c.pol.EgressAllow = prefixes("198.51.100.0/24", "203.0.113.0/24")
	c.pol.EgressDeny = prefixes("203.0.113.0/24") // deny wins over allow
	for _, g := range []*guest{a, b, c} {
		must(t, "apply policy of "+g.name, m.Apply(ctx, g.pol))
	}
	l.check(t, "policies", everything(func(string) string { return "" }))
	// Routed back onto the bridge by the host, A -> B is dropped (it would
	// get around isolation); across the bridge it passes (above).
	hairpin("policies", "")

	t.Run("isolation", func(t *testing.T) {
		for _, tc := range []struct {
			isolate *guest
			cut     [][2]*guest
			kept    [][2]*guest
		}{
			{a, [][2]*guest{{a, b}, {b, a}, {a, c}, {c, a}}, [][2]*guest{{b, c}, {c, b}}},
			{b, [][2]*guest{{a, b}, {b, a}, {c, b}}, [][2]*guest{{a, c}, {c, a}}},
		} {
			p := tc.isolate.pol
			p.Isolated = true
			must(t, "isolate "+tc.isolate.name, m.Apply(ctx, p))
			var exps []expect
			for _, pair := range tc.cut {
				exps = append(exps, expect{pair[0].name, pair[0].ns, "tcp", ip(pair[1], 22), ""})
			}
			for _, pair := range tc.kept {
				exps = append(exps, expect{pair[0].name, pair[0].ns, "tcp", ip(pair[1], 22), pair[1].name})
			}
			g := tc.isolate
			exps = append(exps,
				expect{"host", host, "tcp", ip(g, 22), g.name},
				expect{g.name, g.ns, "udp", hp(gwAddr, 53), "dns-udp"},
				expect{g.name, g.ns, "tcp", hp(allowedNet, 80), "internet"},
			)
			l.check(t, g.name+" isolated", exps)
			must(t, "un-isolate "+g.name, m.Apply(ctx, g.pol))
		}
		l.check(t, "isolation lifted", []expect{{"A", a.ns, "tcp", ip(b, 22), "B"}, {"B", b.ns, "tcp", ip(a, 22), "A"}})
	})

	t.Run("spoofing", func(t *testing.T) {
		nothing := func(who string) []expect {
			return []expect{
				{who, a.ns, "udp", hp(gwAddr, 53), ""},
				{who, a.ns, "tcp", hp(gwAddr, 53), ""},
				{who, a.ns, "tcp", ip(c, 22), ""},
				{who, a.ns, "tcp", hp(allowedNet, 80), ""},
			}
		}
		// check empties A's neighbour cache: A asks ARP again, with B's
		// address as its sender.
		setGuestIP(t, a, a.pol.IP, b.pol.IP)
		l.check(t, "A spoofing B's ip", nothing("A with B's ip"))
		if got := hostNeighbor(t, b.pol.IP); got == a.pol.MAC {
			t.Errorf("host's neighbour entry for %s is A's mac %s: A's ARP got through", b.pol.IP, got)
		}
		// The real B is still the one the host reaches at B's address.
		l.check(t, "A spoofing B's ip", []expect{{"host", host, "tcp", ip(b, 22), "B"}})
		setGuestIP(t, a, b.pol.IP, a.pol.IP)

		setGuestMAC(t, a, c.pol.MAC)
		l.check(t, "A spoofing C's mac", nothing("A with C's mac"))
		setGuestMAC(t, a, a.pol.MAC)
		l.check(t, "A itself again", []expect{{"A", a.ns, "udp", hp(gwAddr, 53), "dns-udp"}, {"A", a.ns, "tcp", ip(c, 22), "C"}})
	})

	t.Run("remove", func(t *testing.T) {
		// A's own rules go (its allowed port, its deny list); the base
		// rules and the other VMs' stay.
		must(t, "remove A", m.Remove(ctx, idA))
		l.check(t, "A removed", []expect{
			{"A", a.ns, "tcp", hp(gwAddr, 8080), ""},
			{"A", a.ns, "tcp", hp(gwAddr, 9090), ""},
			{"A", a.ns, "tcp", hp(deniedNet, 80), "internet"},
			{"B", b.ns, "tcp", hp(gwAddr, 9090), ""},
			{"B", b.ns, "udp", hp(gwAddr, 53), "dns-udp"},
			{"C", c.ns, "tcp", hp(deniedNet, 80), ""},
		})
		if ids := mustList(t, m); strings.Join(ids, ",") != idB+","+idC {
			t.Errorf("List = %v, want B and C", ids)
		}
	})
	if err := m.Check(ctx); err != nil {
		t.Errorf("Check after the traffic test: %v", err)
	}
}
