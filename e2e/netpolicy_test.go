package e2e

import (
	"net"
	"strings"
	"testing"
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
