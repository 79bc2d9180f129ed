package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestNetworkPolicy: a guest cannot open a connection to the host (a TCP
// listener on the bridge address), except to a port opened for it with
// --allow-host; it still resolves names through the daemon's DNS on the
// bridge; an --isolated VM and a normal one cannot reach each other.
func TestNetworkPolicy(t *testing.T) {
	requireSuite(t)
	a, b := "e2e-net-a", "e2e-net-b"
	deleteAtEnd(t, a, b)
	runVM(t, a)
	mustBanger(t, append(append([]string{"vm", "run", "--name", b}, createFlags...), "--isolated", "--allow-host", "9997", "--", "true")...)
	va, vb := showVM(t, a), showVM(t, b)
	gw := strings.TrimSuffix(va.Runtime.GuestIP, "."+strings.Split(va.Runtime.GuestIP, ".")[3]) + ".1"
	for _, port := range []string{"9996", "9997"} {
		ln, err := net.Listen("tcp", net.JoinHostPort(gw, port))
		if err != nil {
			t.Fatalf("listener on the bridge address: %v", err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("host\n"))
				c.Close()
			}
		}()
	}
	reach := func(vm, ip, port string) bool {
		out, _, _ := banger(t, "vm", "exec", vm, "--", "sh", "-c", "timeout 3 nc "+ip+" "+port+" </dev/null 2>/dev/null; true")
		return strings.Contains(out, "host")
	}
	if reach(a, gw, "9996") {
		t.Error("a guest reached a host listener on the bridge address")
	}
	if reach(b, gw, "9996") {
		t.Error("a guest reached a host port it was not allowed")
	}
	if !reach(b, gw, "9997") {
		t.Error("a guest did not reach the host port opened with --allow-host")
	}
	// Names still resolve through the daemon's DNS on the bridge.
	out, _, _ := banger(t, "vm", "exec", a, "--", "sh", "-c", "ping -c1 -W1 "+b+" 2>&1 | head -1")
	if !strings.Contains(out, vb.Runtime.GuestIP) {
		t.Errorf("name of %s did not resolve in %s: %q", b, a, out)
	}
	// Isolation holds both ways.
	for _, pair := range [][3]string{{a, vb.Runtime.GuestIP, b}, {b, va.Runtime.GuestIP, a}} {
		if _, _, code := banger(t, "vm", "exec", pair[0], "--", "ping", "-c1", "-W1", pair[1]); code == 0 {
			t.Errorf("%s reached %s though %s is isolated", pair[0], pair[2], b)
		}
	}
}

// gatewayOf is the bridge address of the guest subnet (the first host of
// the /24 the guest's address is in).
func gatewayOf(guestIP string) string {
	a := netip.MustParseAddr(guestIP).As4()
	a[3] = 1
	return netip.AddrFrom4(a).String()
}

// TestNetworkPolicyHostAddress: a guest cannot open a connection to a host
// address other than the bridge's (the address of a second link), nor
// to a host port listening on every address; its packets do reach the
// host (so the refusal is the policy's, not a missing route). Connections
// the host opens to the guest, from that other address and through a port
// forward, still get their replies.
func TestNetworkPolicyHostAddress(t *testing.T) {
	requireSuite(t)
	const name = "e2e-net-host"
	other := netip.MustParseAddr("10.77.0.1")
	deleteAtEnd(t, name)
	mustBanger(t, append(append([]string{"vm", "run", "--name", name, "-p", "127.0.0.1:18081:8081"}, createFlags...), "--",
		"sh", "-c", "mkdir -p /root/www && echo guest page > /root/www/p.txt")...)
	v := showVM(t, name)
	gw := gatewayOf(v.Runtime.GuestIP)
	guestIP := netip.MustParseAddr(v.Runtime.GuestIP)
	guestMAC, _ := net.ParseMAC(v.Runtime.GuestMAC)

	// A second "NIC" of the host: one end of a veth pair (this kernel has
	// no dummy links), both ends in the suite's namespace.
	nic := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "e2ehost0"}, PeerName: "e2ehost1"}
	must(t, "add veth e2ehost0", netlink.LinkAdd(nic))
	deleteLinkAtEnd(t, "e2ehost0")
	must(t, "address e2ehost0", netlink.AddrAdd(nic, nlAddr(netip.PrefixFrom(other, 24))))
	must(t, "set e2ehost0 up", netlink.LinkSetUp(nic))
	onOther := serveAddr(t, nil, net.JoinHostPort(other.String(), "9993"), "host")
	onAll := serveAddr(t, nil, ":9994", "host")
	br := startCapture(t, "banger0")

	for _, target := range [][2]string{{other.String(), "9993"}, {other.String(), "9994"}, {gw, "9994"}} {
		if out := guestReach(t, name, target[0], target[1]); out != "" {
			t.Errorf("the guest reached the host listener on %s:%s: %q", target[0], target[1], out)
		}
	}
	if n, m := onOther.Load(), onAll.Load(); n+m != 0 {
		t.Errorf("host listeners accepted %d and %d connections from the guest", n, m)
	}
	// The guest's SYNs got past the bridge to the host's stack: what
	// stopped them is the inet input policy.
	if fs := br.waitFrames(2*time.Second, func(f frame) bool {
		return bytes.Equal(f.src, guestMAC) && f.saddr == guestIP && f.daddr == other
	}); len(fs) == 0 {
		t.Errorf("no packet from the guest to %s reached the bridge: the test proves nothing about the policy", other)
	}

	// Host-initiated: from the other address to a server in the guest, and
	// through the port forward (the daemon's connection).
	mustBanger(t, "vm", "session", "start", name, "--name", "httpd", "--", "httpd", "-f", "-p", "8081", "-h", "/root/www")
	get := func(url string, local net.Addr) (string, error) {
		tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}).DialContext}
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	from := &net.TCPAddr{IP: other.AsSlice()}
	eventually(t, 20*time.Second, "GET from "+other.String()+" to the guest", func() (bool, string) {
		got, err := get("http://"+net.JoinHostPort(v.Runtime.GuestIP, "8081")+"/p.txt", from)
		return got == "guest page\n", fmt.Sprintf("%q %v", got, err)
	})
	if got, err := get("http://127.0.0.1:18081/p.txt", nil); got != "guest page\n" {
		t.Errorf("GET through the port forward: %q %v", got, err)
	}
}

// TestNetworkPolicySpoofing: a guest that takes another VM's IP (as a
// second address), an unused address of the subnet, or the other VM's MAC,
// gets nothing past its tap: no ping or ARP with the borrowed identity
// reaches the host or the other VM, the host keeps the owner's MAC for its
// address, the bridge keeps the owner's MAC on the owner's port, and the
// owner keeps working. Packets sent with its own identity before and after
// show the captures would have seen them.
func TestNetworkPolicySpoofing(t *testing.T) {
	requireSuite(t)
	a, b := "e2e-spoof-a", "e2e-spoof-b"
	deleteAtEnd(t, a, b)
	runVM(t, a)
	runVM(t, b)
	va, vb := showVM(t, a), showVM(t, b)
	if va.Live == nil || vb.Live == nil {
		t.Fatalf("no live facts for %s or %s", a, b)
	}
	gw := gatewayOf(va.Runtime.GuestIP)
	ipA, ipB := netip.MustParseAddr(va.Runtime.GuestIP), netip.MustParseAddr(vb.Runtime.GuestIP)
	macA, _ := net.ParseMAC(va.Runtime.GuestMAC)
	macB, _ := net.ParseMAC(vb.Runtime.GuestMAC)
	free := ipA.As4()
	free[3] = 250
	unused := netip.AddrFrom4(free)
	if unused == ipA || unused == ipB {
		t.Fatalf("%s is in use", unused)
	}
	tapA, tapB := va.Live.Handles.TapDevice, vb.Live.Handles.TapDevice
	br, onB := startCapture(t, "banger0"), startCapture(t, tapB)

	// Every step's output is discarded and its status printed: while A
	// uses B's MAC, its own SSH session is cut until the MAC is restored.
	// A route with B's address as its source makes nslookup ask the host's
	// DNS as B (busybox nc and nslookup cannot pick a source address).
	// -type=a: one query. Without it busybox sends A and AAAA, at times with
	// the same query id (its id comes from the guest's clock), matches
	// answers by id alone and keeps retrying the AAAA query until timeout
	// (docs/network-policy.md).
	script := fmt.Sprintf(`
ok=1; for i in 1 2 3; do if timeout 3 nslookup -type=a %[6]s %[1]s >/dev/null 2>&1; then ok=0; break; fi; done; echo own-dns=$ok tries=$i
ping -c1 -W2 %[2]s >/dev/null 2>&1; echo own-b=$?
ip addr add %[2]s/32 dev eth0
ip route add %[1]s/32 dev eth0 src %[2]s
timeout 3 nslookup -type=a %[6]s %[1]s >/dev/null 2>&1; echo spoof-ip-dns=$?
ping -c1 -W1 %[1]s >/dev/null 2>&1
ip route del %[1]s/32 dev eth0
arping -U -c2 -I eth0 -s %[2]s %[2]s >/dev/null 2>&1
ip addr del %[2]s/32 dev eth0
ip addr add %[3]s/32 dev eth0
ping -c2 -W1 -I %[3]s %[2]s >/dev/null 2>&1; echo spoof-free-b=$?
ip addr del %[3]s/32 dev eth0
ip link set dev eth0 address %[4]s; echo set-mac=$?
ping -c2 -W1 %[2]s >/dev/null 2>&1; echo spoof-mac-b=$?
timeout 3 nslookup -type=a %[6]s %[1]s >/dev/null 2>&1; echo spoof-mac-dns=$?
ip link set dev eth0 address %[5]s; echo restore-mac=$?
ip addr show dev eth0
`, gw, ipB, unused, macB, macA, vb.Runtime.DNSName)
	out, errOut, code := banger(t, "vm", "exec", a, "--", "sh", "-c", script)
	t.Logf("spoofing script in %s (exit %d):\n%s%s", a, code, out, errOut)
	for _, want := range []string{"own-dns=0", "own-b=0", "set-mac=0", "restore-mac=0"} {
		if !strings.Contains(out, want) {
			t.Errorf("spoofing script: no %q in its output", want)
		}
	}
	for _, blocked := range []string{"spoof-ip-dns=0", "spoof-free-b=0", "spoof-mac-b=0", "spoof-mac-dns=0"} {
		if strings.Contains(out, blocked) {
			t.Errorf("spoofing script: %s (the spoofed request was answered)", blocked)
		}
	}
	if !strings.Contains(out, "inet "+ipA.String()+"/") || strings.Contains(out, "inet "+ipB.String()+"/") || strings.Contains(out, "inet "+unused.String()+"/") {
		t.Errorf("guest %s did not get back to its own address only: %q", a, out)
	}

	// The controls passed the captures; nothing with a borrowed identity did.
	own := func(dst netip.Addr) func(frame) bool {
		return func(f frame) bool { return bytes.Equal(f.src, macA) && f.saddr == ipA && f.daddr == dst }
	}
	if len(br.waitFrames(2*time.Second, own(netip.MustParseAddr(gw)))) == 0 {
		t.Error("the bridge capture missed A's own ping to the host")
	}
	if len(onB.waitFrames(2*time.Second, own(ipB))) == 0 {
		t.Error("the capture on B's tap missed A's own ping to B")
	}
	spoofed := func(f frame) bool {
		return bytes.Equal(f.src, macA) && f.saddr.IsValid() && f.saddr != ipA ||
			bytes.Equal(f.src, macB) && f.saddr == ipA
	}
	time.Sleep(500 * time.Millisecond) // let late frames arrive
	if fs := br.matching(spoofed); len(fs) > 0 {
		t.Errorf("spoofed frames reached the host: %v", fs)
	}
	if fs := onB.matching(spoofed); len(fs) > 0 {
		t.Errorf("spoofed frames reached %s: %v", b, fs)
	}

	// The host and the bridge still know B where it is.
	bridge, err := netlink.LinkByName("banger0")
	must(t, "look up banger0", err)
	neighs, err := netlink.NeighList(bridge.Attrs().Index, unix.AF_INET)
	must(t, "neighbours of banger0", err)
	for _, n := range neighs {
		if n.IP.Equal(ipB.AsSlice()) && len(n.HardwareAddr) > 0 && !bytes.Equal(n.HardwareAddr, macB) {
			t.Errorf("the host's neighbour entry for %s is %s, not %s's %s", ipB, n.HardwareAddr, b, macB)
		}
	}
	ta, err := netlink.LinkByName(tapA)
	must(t, "look up "+tapA, err)
	fdb, err := netlink.NeighList(0, unix.AF_BRIDGE)
	must(t, "bridge forwarding entries", err)
	for _, n := range fdb {
		if n.LinkIndex == ta.Attrs().Index && bytes.Equal(n.HardwareAddr, macB) {
			t.Errorf("the bridge learned %s's MAC %s on %s's port %s", b, macB, a, tapA)
		}
	}
	// B resolves names through the host (the host's replies find B) and
	// reaches A.
	if out, _, code := banger(t, "vm", "exec", b, "--", "sh", "-c", "timeout 5 nslookup -type=a "+va.Runtime.DNSName+" "+gw); code != 0 || !strings.Contains(out, ipA.String()) {
		t.Errorf("%s cannot resolve %s through the host after the spoofing: exit %d %q", b, a, code, out)
	}
	if out, _, code := banger(t, "vm", "exec", b, "--", "ping", "-c1", "-W2", ipA.String()); code != 0 {
		t.Errorf("%s cannot ping %s after the spoofing: exit %d %q", b, a, code, out)
	}
}

// TestNetworkPolicyEgress: with egress NAT on, a VM's --egress-deny and
// --egress-allow lists hold against an "internet" (a namespace the test
// makes, joined to the suite's by a veth and reached by routes to three
// addresses only: nothing leaves the test's namespaces), and the metadata
// address 169.254.169.254 is never reached, even when allowed. The host's
// own address on that link stays closed to guests. The suite's daemon runs
// without egress NAT, so this test restarts it with NAT and stops it again
// at the end (the next test's command starts it as before).
func TestNetworkPolicyEgress(t *testing.T) {
	requireSuite(t)
	if out := mustBanger(t, "vm", "list", "-q"); strings.TrimSpace(out) != "" {
		t.Fatalf("needs a daemon without VMs, to restart it with egress NAT; has %q", out)
	}
	t.Cleanup(func() {
		if out, errOut, code := runCLI(nil, cliTimeout, "daemon", "stop"); code != 0 {
			t.Errorf("cleanup: banger daemon stop: exit %d: %s%s", code, out, errOut)
		}
	})
	mustBanger(t, "daemon", "stop")
	t.Setenv("BANGER_EGRESS_NAT", "true")

	// Safety first: this namespace must have no way out but what the test adds.
	if r, err := netlink.RouteGet(net.ParseIP("192.0.2.1")); err == nil {
		t.Fatalf("the suite's namespace has a route out (%v): refusing to enable egress", r)
	}
	uplinkHost := netip.MustParsePrefix("10.200.0.1/24")
	uplinkInet := netip.MustParsePrefix("10.200.0.2/24")
	allowed, denied, metadata := netip.MustParseAddr("198.51.100.10"), netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("169.254.169.254")
	inet := newNetNS(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "e2einet0"}, PeerName: "e2einet1", PeerNamespace: netlink.NsFd(inet)}
	must(t, "add veth to the internet namespace", netlink.LinkAdd(veth))
	deleteLinkAtEnd(t, "e2einet0")
	must(t, "address e2einet0", netlink.AddrAdd(veth, nlAddr(uplinkHost)))
	must(t, "set e2einet0 up", netlink.LinkSetUp(veth))
	nl, err := netlink.NewHandleAt(inet)
	must(t, "netlink in the internet namespace", err)
	defer nl.Close()
	peer, err := nl.LinkByName("e2einet1")
	must(t, "look up e2einet1", err)
	lo, err := nl.LinkByName("lo")
	must(t, "look up lo of the internet namespace", err)
	must(t, "address e2einet1", nl.AddrAdd(peer, nlAddr(uplinkInet)))
	must(t, "set e2einet1 up", nl.LinkSetUp(peer))
	must(t, "set lo up", nl.LinkSetUp(lo))
	for _, a := range []netip.Addr{allowed, denied, metadata} {
		must(t, "address "+a.String(), nl.AddrAdd(lo, nlAddr(netip.PrefixFrom(a, 32))))
		must(t, "route to "+a.String(), netlink.RouteAdd(&netlink.Route{LinkIndex: veth.Attrs().Index,
			Dst: ipNet(netip.PrefixFrom(a, 32)), Gw: uplinkInet.Addr().AsSlice()}))
	}
	inetConns := serveAddr(t, &inet, ":8080", "inet")
	hostConns := serveAddr(t, nil, net.JoinHostPort(uplinkHost.Addr().String(), "8081"), "host")
	// The host itself reaches all three: the paths exist.
	for _, a := range []netip.Addr{allowed, denied, metadata} {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(a.String(), "8080"), 3*time.Second)
		if err != nil {
			t.Fatalf("the host cannot reach %s in the internet namespace: %v", a, err)
		}
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if line != "inet "+a.String()+"\n" {
			t.Fatalf("the host reached %s and got %q", a, line)
		}
	}
	before := inetConns.Load()

	deny, allow := "e2e-egress-deny", "e2e-egress-allow"
	deleteAtEnd(t, deny, allow)
	mustBanger(t, append(append([]string{"vm", "run", "--name", deny}, createFlags...), "--egress-deny", "203.0.113.0/24", "--", "true")...)
	mustBanger(t, append(append([]string{"vm", "run", "--name", allow}, createFlags...),
		"--egress-allow", "203.0.113.0/24", "--egress-allow", "169.254.0.0/16", "--", "true")...)
	cases := []struct {
		vm    string
		addr  netip.Addr
		port  string
		reach bool
	}{
		{deny, allowed, "8080", true},
		{deny, denied, "8080", false},
		{deny, metadata, "8080", false},
		{deny, uplinkHost.Addr(), "8081", false},
		{allow, denied, "8080", true},
		{allow, allowed, "8080", false},
		{allow, metadata, "8080", false},
		{allow, uplinkHost.Addr(), "8081", false},
	}
	reached := int64(0)
	for _, c := range cases {
		out := guestReach(t, c.vm, c.addr.String(), c.port)
		want := ""
		if c.reach {
			want = "inet " + c.addr.String() + "\n"
			reached++
		}
		if out != want {
			t.Errorf("%s to %s:%s: got %q, want %q", c.vm, c.addr, c.port, out, want)
		}
	}
	if got := inetConns.Load() - before; got != reached {
		t.Errorf("the internet namespace accepted %d connections from guests, want %d", got, reached)
	}
	if n := hostConns.Load(); n != 0 {
		t.Errorf("the host's uplink address accepted %d connections from guests", n)
	}
}
