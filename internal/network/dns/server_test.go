package dns

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// ask runs one query through Handle and returns the parsed answer.
func ask(t *testing.T, s *Server, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	return exchangeRaw(t, s, q)
}

func exchangeRaw(t *testing.T, s *Server, q *mdns.Msg) *mdns.Msg {
	t.Helper()
	req, err := q.Pack()
	if err != nil {
		t.Fatalf("packing query: %v", err)
	}
	out := s.Handle(req)
	if out == nil {
		t.Fatalf("no response to %v", q.Question)
	}
	var r mdns.Msg
	if err := r.Unpack(out); err != nil {
		t.Fatalf("unpacking response: %v", err)
	}
	if r.Id != q.Id || !r.Response {
		t.Fatalf("response id %d response=%v, want id %d and QR set", r.Id, r.Response, q.Id)
	}
	return &r
}

func wantA(t *testing.T, r *mdns.Msg, want string) {
	t.Helper()
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("got rcode %s with %d answers, want one A %s:\n%v", mdns.RcodeToString[r.Rcode], len(r.Answer), want, r)
	}
	a, ok := r.Answer[0].(*mdns.A)
	if !ok {
		t.Fatalf("answer is %T, want *dns.A", r.Answer[0])
	}
	if a.A.String() != want {
		t.Fatalf("A = %s, want %s", a.A, want)
	}
	if a.Hdr.Ttl > 5 {
		t.Fatalf("TTL = %d, want at most 5", a.Hdr.Ttl)
	}
}

func wantRcode(t *testing.T, r *mdns.Msg, rcode int) {
	t.Helper()
	if r.Rcode != rcode {
		t.Fatalf("rcode = %s, want %s:\n%v", mdns.RcodeToString[r.Rcode], mdns.RcodeToString[rcode], r)
	}
}

func wantSOAAuthority(t *testing.T, r *mdns.Msg) {
	t.Helper()
	if len(r.Ns) != 1 {
		t.Fatalf("authority has %d records, want the zone SOA:\n%v", len(r.Ns), r)
	}
	soa, ok := r.Ns[0].(*mdns.SOA)
	if !ok || soa.Hdr.Name != "banger.internal." || soa.Minttl > 5 {
		t.Fatalf("authority = %v, want banger.internal. SOA with short minimum", r.Ns[0])
	}
}

func TestAnswersKnownName(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	r := ask(t, s, "web.banger.internal.", mdns.TypeA)
	wantA(t, r, "172.30.0.2")
	if !r.Authoritative {
		t.Fatal("answer not authoritative")
	}
	if r.RecursionAvailable {
		t.Fatal("RA set though recursion is refused")
	}
}

func TestNamesAreCaseInsensitive(t *testing.T) {
	s := New("Banger.Internal.", "", nil)
	s.Set("Web", netip.MustParseAddr("172.30.0.2"))
	r := ask(t, s, "wEB.BANGER.internal.", mdns.TypeA)
	wantA(t, r, "172.30.0.2")
	if r.Question[0].Name != "wEB.BANGER.internal." {
		t.Fatalf("question echoed as %q, want the client's spelling", r.Question[0].Name)
	}
	if ip, ok := s.Lookup("WEB"); !ok || ip.String() != "172.30.0.2" {
		t.Fatalf("Lookup(WEB) = %v, %v", ip, ok)
	}
}

func TestUnknownNameIsNXDOMAIN(t *testing.T) {
	s := New("banger.internal", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	for _, name := range []string{"db.banger.internal.", "x.web.banger.internal.", `we\.b.banger.internal.`} {
		r := ask(t, s, name, mdns.TypeA)
		wantRcode(t, r, mdns.RcodeNameError)
		wantSOAAuthority(t, r)
		if len(r.Answer) != 0 {
			t.Fatalf("%s: NXDOMAIN with answers %v", name, r.Answer)
		}
	}
}

func TestOutsideZoneIsRefused(t *testing.T) {
	s := New("banger.internal", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	for _, name := range []string{"example.com.", "web.banger.internal.example.", "internal.", ".", `web\.banger.internal.`, "xbanger.internal."} {
		r := ask(t, s, name, mdns.TypeA)
		wantRcode(t, r, mdns.RcodeRefused)
		if len(r.Answer) != 0 || r.Authoritative {
			t.Fatalf("%s: refused answer carries data or AA: %v", name, r)
		}
	}
}

func TestAAAAForIPv4NameIsEmpty(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	r := ask(t, s, "web.banger.internal.", mdns.TypeAAAA)
	wantRcode(t, r, mdns.RcodeSuccess)
	if len(r.Answer) != 0 {
		t.Fatalf("AAAA answers %v, want none", r.Answer)
	}
	wantSOAAuthority(t, r)

	r = ask(t, s, "web.banger.internal.", mdns.TypeMX)
	wantRcode(t, r, mdns.RcodeSuccess)
	if len(r.Answer) != 0 {
		t.Fatalf("MX answers %v, want none", r.Answer)
	}
}

func TestIPv6Address(t *testing.T) {
	s := New("", "", nil)
	s.Set("v6", netip.MustParseAddr("fd00::2"))
	r := ask(t, s, "v6.banger.internal.", mdns.TypeAAAA)
	if len(r.Answer) != 1 || r.Answer[0].(*mdns.AAAA).AAAA.String() != "fd00::2" {
		t.Fatalf("AAAA = %v, want fd00::2", r.Answer)
	}
	r = ask(t, s, "v6.banger.internal.", mdns.TypeA)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("A for IPv6-only name = %v, want empty NOERROR", r)
	}
}

func TestZoneApex(t *testing.T) {
	s := New("", "", nil)
	r := ask(t, s, "banger.internal.", mdns.TypeSOA)
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != mdns.TypeSOA {
		t.Fatalf("apex SOA = %v", r)
	}
	r = ask(t, s, "banger.internal.", mdns.TypeA)
	wantRcode(t, r, mdns.RcodeSuccess)
	wantSOAAuthority(t, r)
}

func TestRemoveStopsResolving(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	s.Remove("WEB")
	wantRcode(t, ask(t, s, "web.banger.internal.", mdns.TypeA), mdns.RcodeNameError)
	if _, ok := s.Lookup("web"); ok {
		t.Fatal("Lookup finds a removed name")
	}
	s.Remove("web") // idempotent
	s.Set("db", netip.Addr{})
	if _, ok := s.Lookup("db"); ok {
		t.Fatal("Set with an invalid address recorded the name")
	}
}

func TestReplaceSwapsWholeTable(t *testing.T) {
	s := New("", "", nil)
	s.Set("old", netip.MustParseAddr("172.30.0.2"))
	s.Replace(map[string]netip.Addr{
		"Web": netip.MustParseAddr("172.30.0.3"),
		"db":  netip.MustParseAddr("172.30.0.4"),
	})
	wantRcode(t, ask(t, s, "old.banger.internal.", mdns.TypeA), mdns.RcodeNameError)
	wantA(t, ask(t, s, "web.banger.internal.", mdns.TypeA), "172.30.0.3")
	wantA(t, ask(t, s, "db.banger.internal.", mdns.TypeA), "172.30.0.4")
}

func TestRenameAndRecreateResolveAtOnce(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	wantA(t, ask(t, s, "web.banger.internal.", mdns.TypeA), "172.30.0.2")

	// Rename web -> api.
	s.Remove("web")
	s.Set("api", netip.MustParseAddr("172.30.0.2"))
	wantRcode(t, ask(t, s, "web.banger.internal.", mdns.TypeA), mdns.RcodeNameError)
	wantA(t, ask(t, s, "api.banger.internal.", mdns.TypeA), "172.30.0.2")

	// Re-create api with a new address.
	s.Remove("api")
	s.Set("api", netip.MustParseAddr("172.30.0.9"))
	wantA(t, ask(t, s, "api.banger.internal.", mdns.TypeA), "172.30.0.9")
}

func TestEDNS(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	q := new(mdns.Msg)
	q.SetQuestion("web.banger.internal.", mdns.TypeA)
	q.SetEdns0(4096, true)
	r := exchangeRaw(t, s, q)
	wantA(t, r, "172.30.0.2")
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != ednsUDPSize {
		t.Fatalf("response OPT = %v, want UDP size %d", opt, ednsUDPSize)
	}

	q.IsEdns0().SetVersion(1)
	r = exchangeRaw(t, s, q)
	wantRcode(t, r, mdns.RcodeBadVers)
}

func TestMalformedPackets(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))

	valid := new(mdns.Msg)
	valid.SetQuestion("web.banger.internal.", mdns.TypeA)
	validBytes, _ := valid.Pack()

	response := append([]byte(nil), validBytes...)
	response[2] |= 0x80 // QR

	notify := append([]byte(nil), validBytes...)
	notify[2] = notify[2]&^0x78 | byte(mdns.OpcodeNotify)<<3

	twoQuestions := new(mdns.Msg)
	twoQuestions.SetQuestion("web.banger.internal.", mdns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, twoQuestions.Question[0])
	twoBytes, _ := twoQuestions.Pack()

	noQuestion := append([]byte(nil), validBytes[:headerLen]...)
	binary.BigEndian.PutUint16(noQuestion[4:6], 0)

	lyingCount := append([]byte(nil), validBytes...)
	binary.BigEndian.PutUint16(lyingCount[4:6], 60000)

	pointerLoop := append([]byte(nil), validBytes[:headerLen]...)
	pointerLoop = append(pointerLoop, 0xC0, headerLen, 0, 1, 0, 1) // name points at itself

	tests := []struct {
		name  string
		req   []byte
		rcode int // -1: dropped
	}{
		{"empty", nil, -1},
		{"short header", validBytes[:5], -1},
		{"response bit", response, -1},
		{"notify opcode", notify, mdns.RcodeNotImplemented},
		{"two questions", twoBytes, mdns.RcodeFormatError},
		{"no question", noQuestion, mdns.RcodeFormatError},
		{"truncated question", validBytes[:len(validBytes)-3], mdns.RcodeFormatError},
		{"question count lies", lyingCount, mdns.RcodeFormatError},
		{"compression pointer loop", pointerLoop, mdns.RcodeFormatError},
		{"huge garbage", append(validBytes[:headerLen:headerLen], bytes.Repeat([]byte{0xff}, 60000)...), mdns.RcodeFormatError},
		{"huge trailing zeros", append(validBytes[:headerLen:headerLen], make([]byte, 60000)...), mdns.RcodeRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := s.Handle(tc.req)
			if tc.rcode < 0 {
				if out != nil {
					t.Fatalf("answered %x, want dropped", out)
				}
				return
			}
			var r mdns.Msg
			if err := r.Unpack(out); err != nil {
				t.Fatalf("unpacking response %x: %v", out, err)
			}
			wantID := binary.BigEndian.Uint16(tc.req)
			if r.Id != wantID || !r.Response || r.Rcode != tc.rcode {
				t.Fatalf("response id=%d qr=%v rcode=%s, want id=%d qr=true rcode=%s",
					r.Id, r.Response, mdns.RcodeToString[r.Rcode], wantID, mdns.RcodeToString[tc.rcode])
			}
		})
	}
}

// serveLoopback starts s on a free loopback port until the test ends.
func serveLoopback(t testing.TB, s *Server) (udp, tcp string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.ListenAndServe(ctx, "127.0.0.1:0"); err != nil {
		t.Fatalf("ListenAndServe: %v", err)
	}
	addrs := s.Addrs()
	if len(addrs) != 2 || addrs[0].Network() != "udp" || addrs[1].Network() != "tcp" {
		t.Fatalf("Addrs() = %v, want one udp and one tcp address", addrs)
	}
	if addrs[0].(*net.UDPAddr).Port != addrs[1].(*net.TCPAddr).Port {
		t.Fatalf("udp and tcp ports differ: %v", addrs)
	}
	return addrs[0].String(), addrs[1].String()
}

func exchangeNet(t *testing.T, network, addr, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	c := mdns.Client{Net: network, Timeout: 5 * time.Second}
	q := new(mdns.Msg)
	q.SetQuestion(name, qtype)
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s query for %s to %s: %v", network, name, addr, err)
	}
	return r
}

func TestServesUDPAndTCP(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	udp, tcp := serveLoopback(t, s)
	wantA(t, exchangeNet(t, "udp", udp, "web.banger.internal.", mdns.TypeA), "172.30.0.2")
	wantA(t, exchangeNet(t, "tcp", tcp, "web.banger.internal.", mdns.TypeA), "172.30.0.2")
	wantRcode(t, exchangeNet(t, "tcp", tcp, "nope.banger.internal.", mdns.TypeA), mdns.RcodeNameError)

	// Garbage on both transports leaves the server answering.
	uc, err := net.Dial("udp", udp)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.Write([]byte{1, 2, 3})
	uc.Write(make([]byte, 9000))
	tc, err := net.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	tc.Write([]byte{0xff, 0xff, 1, 2, 3})
	tc.Close()
	wantA(t, exchangeNet(t, "udp", udp, "web.banger.internal.", mdns.TypeA), "172.30.0.2")
}

func TestTCPConnectionCarriesSeveralQueries(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	_, tcp := serveLoopback(t, s)
	conn, err := mdns.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	for i := range 3 {
		q := new(mdns.Msg)
		q.SetQuestion("web.banger.internal.", mdns.TypeA)
		if err := conn.WriteMsg(q); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		r, err := conn.ReadMsg()
		if err != nil {
			t.Fatalf("reading answer %d: %v", i, err)
		}
		wantA(t, r, "172.30.0.2")
	}
}

func TestForwardsOutsideZoneToUpstream(t *testing.T) {
	up := New("other.test", "", nil)
	up.Set("db", netip.MustParseAddr("10.9.9.9"))
	upUDP, _ := serveLoopback(t, up)

	s := New("", upUDP, nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	udp, tcp := serveLoopback(t, s)

	wantA(t, exchangeNet(t, "udp", udp, "db.other.test.", mdns.TypeA), "10.9.9.9")
	wantA(t, exchangeNet(t, "tcp", tcp, "db.other.test.", mdns.TypeA), "10.9.9.9")
	wantA(t, exchangeNet(t, "udp", udp, "web.banger.internal.", mdns.TypeA), "172.30.0.2")
	wantA(t, ask(t, s, "db.other.test.", mdns.TypeA), "10.9.9.9")
}

func TestUpstreamFailureIsServfail(t *testing.T) {
	// A port nobody listens on: the kernel answers with ICMP port
	// unreachable and the exchange fails at once.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().String()
	pc.Close()

	s := New("", dead, nil)
	wantRcode(t, ask(t, s, "example.com.", mdns.TypeA), mdns.RcodeServerFailure)
}

func TestStopsWhenContextDone(t *testing.T) {
	s := New("", "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.ListenAndServe(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	tcp := s.Addrs()[1].String()
	cancel()
	// The listener closes asynchronously; wait for it without a timing
	// assertion beyond "eventually".
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", tcp)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("dns tcp listener still accepting after ctx was cancelled")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestListenErrorLeavesNothing(t *testing.T) {
	s := New("", "", nil)
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = s.ListenAndServe(t.Context(), "127.0.0.1:0", ln.LocalAddr().String())
	if err == nil {
		t.Fatal("listening on a taken udp port succeeded")
	}
	if got := s.Addrs(); len(got) != 0 {
		t.Fatalf("Addrs() = %v after a failed ListenAndServe", got)
	}
}

func TestFQDN(t *testing.T) {
	for _, tc := range []struct{ name, zone, want string }{
		{"web", "banger.internal", "web.banger.internal"},
		{"Web", "Lab.Example.", "web.lab.example"},
		{"web", "", "web.banger.internal"},
	} {
		if got := FQDN(tc.name, tc.zone); got != tc.want {
			t.Errorf("FQDN(%q, %q) = %q, want %q", tc.name, tc.zone, got, tc.want)
		}
	}
}

func TestNonInternetClassIsRefused(t *testing.T) {
	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	q := new(mdns.Msg)
	q.SetQuestion("web.banger.internal.", mdns.TypeA)
	q.Question[0].Qclass = mdns.ClassCHAOS
	r := exchangeRaw(t, s, q)
	wantRcode(t, r, mdns.RcodeRefused)
	if len(r.Answer) != 0 || r.Authoritative {
		t.Fatalf("CHAOS query answered: %v", r)
	}
}
