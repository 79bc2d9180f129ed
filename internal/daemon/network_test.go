package daemon

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/network"

	mdns "github.com/miekg/dns"
	"github.com/vishvananda/netlink"
)

func newNetEnv(t *testing.T) *testEnv {
	t.Helper()
	requireNetNS(t)
	e := newEnv(t, envOpts{})
	e.crash()
	e.deps.Network = &network.Manager{Config: network.Config{Bridge: "banger0"}}
	e.start()
	e.importImage()
	return e
}

func lookupA(t *testing.T, server, name string) (string, int) {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), mdns.TypeA)
	c := &mdns.Client{Timeout: time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		return "", -1
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			return a.A.String(), r.Rcode
		}
	}
	return "", r.Rcode
}

// Two VMs resolve by name from the host side of the bridge; stop and delete
// withdraw the names.
func TestDNSNamesFollowVMs(t *testing.T) {
	e := newNetEnv(t)
	ctx := context.Background()
	a := e.createStarted("alpha")
	b := e.createStarted("beta")
	server := "172.30.0.1:53"
	var got string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got, _ = lookupA(t, server, "alpha.banger.internal"); got != "" {
			break
		}
	}
	if got != a.Runtime.GuestIP {
		t.Fatalf("alpha resolves to %q, want %s", got, a.Runtime.GuestIP)
	}
	if got, _ := lookupA(t, server, "BETA.banger.internal"); got != b.Runtime.GuestIP {
		t.Fatalf("beta resolves to %q, want %s", got, b.Runtime.GuestIP)
	}
	if err := e.c.DeleteVM(ctx, "alpha", true); err != nil {
		t.Fatal(err)
	}
	if got, rcode := lookupA(t, server, "alpha.banger.internal"); got != "" || rcode != mdns.RcodeNameError {
		t.Fatalf("deleted vm still resolves: %q rcode %d", got, rcode)
	}
	if _, err := e.c.StopVM(ctx, "beta", api.StopRequest{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := lookupA(t, server, "beta.banger.internal"); got != "" {
		t.Fatalf("stopped vm still resolves: %q", got)
	}
	// Re-created under the same name, it resolves to its new address at once.
	e.c.DeleteVM(ctx, "beta", true)
	c := e.createStarted("beta")
	if got, _ := lookupA(t, server, "beta.banger.internal"); got != c.Runtime.GuestIP {
		t.Fatalf("re-created beta resolves to %q, want %s", got, c.Runtime.GuestIP)
	}
}

func freePort(t *testing.T, proto string) int {
	t.Helper()
	if proto == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// standInGuest serves TCP and UDP echo on the VM's guest address inside the
// namespace (the address is put on the bridge), as the guest would.
func standInGuest(t *testing.T, ip string, tcpPort, udpPort int) {
	t.Helper()
	br, err := netlink.LinkByName("banger0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(ip + "/32")
	if err := netlink.AddrAdd(br, addr); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	u, err := net.ListenPacket("udp", fmt.Sprintf("%s:%d", ip, udpPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := u.ReadFrom(buf)
			if err != nil {
				return
			}
			u.WriteTo(buf[:n], from)
		}
	}()
}

func tcpEcho(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg))
	_, err = io.ReadFull(c, buf)
	return string(buf), err
}

func udpEcho(addr, msg string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	c.Write([]byte(msg))
	buf := make([]byte, 1024)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// Forwards reach the guest, refuse while it is stopped, survive a daemon
// restart, and a taken host port is refused at create and add.
func TestPortForwarding(t *testing.T) {
	e := newNetEnv(t)
	ctx := context.Background()
	tp, up := freePort(t, "tcp"), freePort(t, "udp")
	specs := []string{fmt.Sprintf("%d:7000", tp), fmt.Sprintf("127.0.0.1:%d:7001/udp", up)}
	vm, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: "web", DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20, Ports: specs})
	if err != nil {
		t.Fatal(err)
	}
	hostTCP, hostUDP := fmt.Sprintf("127.0.0.1:%d", tp), fmt.Sprintf("127.0.0.1:%d", up)
	// Bound from create on, refusing while the VM is not running.
	if got, err := tcpEcho(hostTCP, "x"); err == nil {
		t.Fatalf("stopped vm answered: %q", got)
	}
	if _, err := e.c.StartVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	standInGuest(t, vm.Runtime.GuestIP, 7000, 7001)
	if got, err := tcpEcho(hostTCP, "hello tcp"); err != nil || got != "hello tcp" {
		t.Fatalf("tcp forward: %q %v", got, err)
	}
	if got, err := udpEcho(hostUDP, "hello udp"); err != nil || got != "hello udp" {
		t.Fatalf("udp forward: %q %v", got, err)
	}
	listed, _ := e.c.ListPorts(ctx, "web")
	if len(listed) != 2 || !strings.Contains(strings.Join(listed, " "), fmt.Sprintf(":%d:7001/udp", up)) {
		t.Fatalf("ports listed: %v", listed)
	}

	// Across a daemon restart.
	e.crash()
	e.start()
	if got, err := tcpEcho(hostTCP, "after restart"); err != nil || got != "after restart" {
		t.Fatalf("tcp forward after restart: %q %v", got, err)
	}

	// A host port already taken: a clear error, nothing created.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tport := taken.Addr().(*net.TCPAddr).Port
	_, err = e.c.CreateVM(ctx, api.CreateVMRequest{Name: "clash", Ports: []string{fmt.Sprintf("%d:80", tport)}})
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("taken port at create: %v", err)
	}
	if _, err := e.c.GetVM(ctx, "clash"); !api.IsNotFound(err) {
		t.Fatalf("vm created despite the taken port: %v", err)
	}
	_, err = e.c.AddPort(ctx, "web", fmt.Sprintf("%d:81", tport))
	if err == nil || !api.IsConflict(err) {
		t.Fatalf("taken port at add: %v", err)
	}
	// Duplicate of another VM's forward, and bad specs.
	for _, bad := range []string{fmt.Sprintf("%d:7000", tp), "banana", "70000:80", "80:0"} {
		if _, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: "dup", Ports: []string{bad}}); err == nil {
			t.Errorf("spec %q accepted", bad)
		}
	}
	// Stopped: refused; removed: the port is free again.
	e.c.StopVM(ctx, "web", api.StopRequest{})
	if got, err := tcpEcho(hostTCP, "x"); err == nil {
		t.Fatalf("stopped vm answered: %q", got)
	}
	if err := e.c.RemovePort(ctx, "web", fmt.Sprintf("%d:7000", tp)); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", hostTCP)
	if err != nil {
		t.Fatalf("host port not released after remove: %v", err)
	}
	l.Close()
}
