package policy

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/network"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata")

// Test VM ids are hex like the engine's, so taps and MACs come from the
// real derivations.
const (
	idA = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"
	idB = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2"
	idC = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3"
)

func testPolicy(id string, ip string) VMPolicy {
	return VMPolicy{VMID: id, Tap: network.TapName(id), MAC: network.MACFromID(id), IP: netip.MustParseAddr(ip)}
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (run with -update to accept):\n--- got\n%s--- want\n%s", name, path, got, want)
	}
}

func TestRenderGolden(t *testing.T) {
	m := &Manager{}
	full := testPolicy(idB, "172.30.0.3")
	full.Isolated = true
	full.AllowHostPorts = []uint16{9000, 8080, 8080}
	full.EgressAllow = prefixes("198.51.100.0/24", "2001:db8::/32")
	full.EgressDeny = prefixes("198.51.100.128/25", "10.1.2.3/32")
	denyOnly := testPolicy(idC, "172.30.0.4")
	denyOnly.EgressDeny = prefixes("203.0.113.7/24")
	for name, p := range map[string]VMPolicy{
		"plain":    testPolicy(idA, "172.30.0.2"),
		"full":     full,
		"denyonly": denyOnly,
	} {
		t.Run(name, func(t *testing.T) { golden(t, "vm-"+name, m.Render(p)) })
	}
	t.Run("base", func(t *testing.T) { golden(t, "base", m.RenderBase()) })
	t.Run("base-egress-nat", func(t *testing.T) {
		golden(t, "base-egress-nat", (&Manager{Config: Config{EgressNAT: true}}).RenderBase())
	})
}

// The invariants the golden files are read for, asserted directly so a
// careless -update cannot lose them.
func TestRenderInvariants(t *testing.T) {
	m := &Manager{}
	p := testPolicy(idA, "172.30.0.2")
	p.AllowHostPorts = []uint16{8080}
	p.EgressDeny = prefixes("10.0.0.0/8")
	p.EgressAllow = prefixes("10.1.0.0/16")
	out := m.Render(p)
	tap, mac := network.TapName(idA), network.MACFromID(idA)
	for _, want := range []string{
		`iifname "` + tap + `" jump vm_` + idA,
		"ether saddr " + mac + " ip saddr 172.30.0.2 accept",
		"arp saddr ether " + mac + " arp saddr ip 172.30.0.2 accept",
		"ip saddr 172.30.0.2 ip daddr 172.30.0.1 tcp dport 8080 accept",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render lacks %q:\n%s", want, out)
		}
	}
	// Deny before allow, and a final drop because there is an allow list.
	deny, allow := strings.Index(out, "ip daddr 10.0.0.0/8 drop"), strings.Index(out, "ip daddr 10.1.0.0/16 accept")
	if deny < 0 || allow < 0 || deny > allow {
		t.Errorf("deny rule must come before allow rule:\n%s", out)
	}
	if strings.Contains(out, "oifname") {
		t.Errorf("a VM that is not isolated has isolation rules:\n%s", out)
	}
	base := m.RenderBase()
	for _, want := range []string{
		"ip daddr 169.254.0.0/16 drop",
		"ip6 daddr fd00:ec2::254 drop",
		"ct state established,related accept",
		"ip daddr 172.30.0.1 udp dport 53 accept",
		"ip daddr 172.30.0.1 tcp dport 53 accept",
		`iifname "banger0" drop`,
		`iifname "banger0" oifname != "banger0" jump guest_egress`,
	} {
		if !strings.Contains(base, want) {
			t.Errorf("base lacks %q:\n%s", want, base)
		}
	}
	// Without egress NAT nothing is forwarded beyond the host.
	if !strings.Contains(base, "\t\tdrop\n") {
		t.Errorf("base without egress nat has no catch-all drop in guest_egress:\n%s", base)
	}
	if nat := (&Manager{Config: Config{EgressNAT: true}}).RenderBase(); strings.Contains(nat, "\t\tdrop\n") {
		t.Errorf("base with egress nat drops all egress:\n%s", nat)
	}
}

func TestPolicyValidation(t *testing.T) {
	cfg := Config{}.WithDefaults()
	good := testPolicy(idA, "172.30.0.2")
	if _, err := good.normalize(cfg); err != nil {
		t.Fatalf("good policy: %v", err)
	}
	bad := map[string]func(*VMPolicy){
		"empty id":        func(p *VMPolicy) { p.VMID = "" },
		"id with space":   func(p *VMPolicy) { p.VMID = "a b" },
		"tap not bgr":     func(p *VMPolicy) { p.Tap = "eth0" },
		"tap too long":    func(p *VMPolicy) { p.Tap = "bgr0123456789abcd" },
		"tap wildcard":    func(p *VMPolicy) { p.Tap = "bgr*" },
		"bad mac":         func(p *VMPolicy) { p.MAC = "zz" },
		"multicast mac":   func(p *VMPolicy) { p.MAC = "01:00:5e:00:00:01" },
		"ip outside":      func(p *VMPolicy) { p.IP = netip.MustParseAddr("10.0.0.2") },
		"ip gateway":      func(p *VMPolicy) { p.IP = netip.MustParseAddr("172.30.0.1") },
		"ip network":      func(p *VMPolicy) { p.IP = netip.MustParseAddr("172.30.0.0") },
		"ip broadcast":    func(p *VMPolicy) { p.IP = netip.MustParseAddr("172.30.0.255") },
		"ip zero":         func(p *VMPolicy) { p.IP = netip.Addr{} },
		"port zero":       func(p *VMPolicy) { p.AllowHostPorts = []uint16{0, 22} },
		"too many ports":  func(p *VMPolicy) { p.AllowHostPorts = make([]uint16, maxHostPorts+1) },
		"invalid prefix":  func(p *VMPolicy) { p.EgressDeny = []netip.Prefix{{}} },
		"short v4-mapped": func(p *VMPolicy) { p.EgressDeny = prefixes("::ffff:0:0/90") },
		"too many allows": func(p *VMPolicy) { p.EgressAllow = make([]netip.Prefix, maxPrefixes+1) },
	}
	for name, mutate := range bad {
		p := good
		mutate(&p)
		_, err := p.normalize(cfg)
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: normalize = %v, want an invalid-argument error", name, err)
		}
	}
	// Normalizing sorts, deduplicates and masks.
	p := good
	p.AllowHostPorts = []uint16{80, 22, 80}
	p.EgressDeny = prefixes("10.1.2.3/8", "10.0.0.0/8", "::ffff:192.0.2.1/128")
	n, err := p.normalize(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.AllowHostPorts; len(got) != 2 || got[0] != 22 || got[1] != 80 {
		t.Errorf("ports = %v, want [22 80]", got)
	}
	if got := n.EgressDeny; len(got) != 2 || got[0] != netip.MustParsePrefix("10.0.0.0/8") || got[1] != netip.MustParsePrefix("192.0.2.1/32") {
		t.Errorf("deny = %v, want [10.0.0.0/8 192.0.2.1/32]", got)
	}
}

func TestConfig(t *testing.T) {
	d := Config{}.WithDefaults()
	if d.Table != "banger" || d.Bridge != "banger0" || d.Subnet != netip.MustParsePrefix("172.30.0.0/24") || d.Gateway != netip.MustParseAddr("172.30.0.1") {
		t.Errorf("defaults = %+v", d)
	}
	for _, c := range []Config{
		{Table: "bad name"},
		{Bridge: "a-very-long-bridge-name"},
		{Subnet: netip.MustParsePrefix("fd00::/64")},
		{Subnet: netip.MustParsePrefix("10.0.0.0/31")},
		{Gateway: netip.MustParseAddr("10.0.0.1")},
	} {
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Validate(%+v) = %v, want invalid argument", c, err)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
}

func TestTableChangedError(t *testing.T) {
	var err error = &TableChangedError{Table: "banger", Diffs: []string{"chain inet banger sneaky not made by banger"}}
	if !errors.Is(err, ErrTableChanged) || !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("%v is not ErrTableChanged and a conflict", err)
	}
	msg := err.Error()
	for _, want := range []string{"sneaky", "nft delete table inet banger", "to fix"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
}
