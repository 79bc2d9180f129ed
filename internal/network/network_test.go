package network

import (
	"errors"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	var c Config
	d := c.WithDefaults()
	if d.Bridge != "banger0" {
		t.Errorf("default bridge = %q, want banger0", d.Bridge)
	}
	if d.Subnet != netip.MustParsePrefix("172.30.0.0/24") {
		t.Errorf("default subnet = %s, want 172.30.0.0/24", d.Subnet)
	}
	if d.EgressNAT {
		t.Error("EgressNAT defaults to true")
	}
	if got := c.Gateway(); got != netip.MustParseAddr("172.30.0.1") {
		t.Errorf("zero Config Gateway() = %s, want 172.30.0.1", got)
	}
	if got := c.Netmask(); got != "255.255.255.0" {
		t.Errorf("zero Config Netmask() = %q, want 255.255.255.0", got)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("zero Config Validate() = %v", err)
	}
}

func TestConfigExplicit(t *testing.T) {
	// An unmasked prefix is treated as its network.
	c := Config{Bridge: "br-test", Subnet: netip.MustParsePrefix("10.9.8.77/20")}
	if got := c.WithDefaults().Subnet; got != netip.MustParsePrefix("10.9.0.0/20") {
		t.Errorf("masked subnet = %s, want 10.9.0.0/20", got)
	}
	if got := c.Gateway(); got != netip.MustParseAddr("10.9.0.1") {
		t.Errorf("Gateway() = %s, want 10.9.0.1", got)
	}
	if got := c.Netmask(); got != "255.255.240.0" {
		t.Errorf("Netmask() = %q, want 255.255.240.0", got)
	}
	if got := c.WithDefaults().Bridge; got != "br-test" {
		t.Errorf("bridge = %q, want br-test", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{Bridge: "a-very-long-bridge-name"},
		{Subnet: netip.MustParsePrefix("fd00::/64")},
		{Subnet: netip.MustParsePrefix("10.0.0.0/31")},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil, want an error", c)
		}
	}
	if err := (Config{Subnet: netip.MustParsePrefix("10.0.0.0/30")}).Validate(); err != nil {
		t.Errorf("Validate(/30) = %v, want nil", err)
	}
}

func TestTapName(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef"
	if got := TapName(id); got != "bgr0123456789ab" {
		t.Errorf("TapName(%s) = %q, want bgr0123456789ab", id, got)
	}
	if n := len(TapName(id)); n > 15 {
		t.Errorf("TapName length %d > 15", n)
	}
	if got := TapName("abc"); got != "bgrabc" {
		t.Errorf("TapName(short) = %q, want bgrabc", got)
	}
	seen := map[string]string{}
	for _, id := range []string{
		"00000000000000000000000000000000",
		"00000000000100000000000000000000", // differs at char 12
		"10000000000000000000000000000000",
		"ffffffffffffffffffffffffffffffff",
		"fffffffffffeffffffffffffffffffff",
	} {
		name := TapName(id)
		if len(name) > 15 {
			t.Errorf("TapName(%s) = %q longer than 15 bytes", id, name)
		}
		if !strings.HasPrefix(name, TapPrefix) {
			t.Errorf("TapName(%s) = %q lacks prefix %q", id, name, TapPrefix)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("ids %s and %s share tap name %q", other, id, name)
		}
		seen[name] = id
	}
}

var macRE = regexp.MustCompile(`^([0-9a-f]{2}:){5}[0-9a-f]{2}$`)

func TestMACFromID(t *testing.T) {
	id := "a1b2c3d4e5f60718293a4b5c6d7e8f90"
	mac := MACFromID(id)
	if mac != "02:a1:b2:c3:d4:e5" {
		t.Errorf("MACFromID(%s) = %q, want 02:a1:b2:c3:d4:e5", id, mac)
	}
	if again := MACFromID(id); again != mac {
		t.Errorf("MACFromID not stable: %q then %q", mac, again)
	}
	for _, id := range []string{id, "ffffffffffffffffffffffffffffffff", "not-hex-at-all", "", "ABCDEFGHIJKLMNOP"} {
		mac := MACFromID(id)
		if !macRE.MatchString(mac) {
			t.Errorf("MACFromID(%q) = %q, not a lowercase MAC", id, mac)
			continue
		}
		hw, err := net.ParseMAC(mac)
		if err != nil {
			t.Fatalf("ParseMAC(%q): %v", mac, err)
		}
		if hw[0]&0x02 == 0 {
			t.Errorf("MACFromID(%q) = %s: locally administered bit clear", id, mac)
		}
		if hw[0]&0x01 != 0 {
			t.Errorf("MACFromID(%q) = %s: multicast bit set", id, mac)
		}
	}
	if MACFromID("not-hex-at-all") == MACFromID("not-hex-at-alm") {
		t.Error("hashed MACs of different ids collide")
	}
	if MACFromID(id) == MACFromID("b1b2c3d4e5f60718293a4b5c6d7e8f90") {
		t.Error("ids differing in the first digit share a MAC")
	}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestAllocateIP(t *testing.T) {
	s24 := netip.MustParsePrefix("172.30.0.0/24")
	tests := []struct {
		name   string
		subnet netip.Prefix
		used   []netip.Addr
		want   string
	}{
		{"empty skips network and gateway", s24, nil, "172.30.0.2"},
		{"next after used", s24, addrs("172.30.0.2", "172.30.0.3"), "172.30.0.4"},
		{"fills hole", s24, addrs("172.30.0.2", "172.30.0.4", "172.30.0.5"), "172.30.0.3"},
		{"gateway in used is harmless", s24, addrs("172.30.0.1"), "172.30.0.2"},
		{"unordered used", s24, addrs("172.30.0.3", "172.30.0.2"), "172.30.0.4"},
		{"unmasked subnet", netip.MustParsePrefix("10.0.0.77/24"), nil, "10.0.0.2"},
		{"/30 has one guest", netip.MustParsePrefix("10.1.1.4/30"), nil, "10.1.1.6"},
		{"mapped v4 in used", s24, []netip.Addr{netip.AddrFrom16(netip.MustParseAddr("172.30.0.2").As16())}, "172.30.0.3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AllocateIP(tt.subnet, tt.used)
			if err != nil {
				t.Fatalf("AllocateIP: %v", err)
			}
			if got.String() != tt.want {
				t.Errorf("AllocateIP = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestAllocateIPFull(t *testing.T) {
	s30 := netip.MustParsePrefix("10.1.1.4/30")
	if _, err := AllocateIP(s30, addrs("10.1.1.6")); !errors.Is(err, ErrSubnetFull) {
		t.Errorf("full /30: err = %v, want ErrSubnetFull", err)
	}
	s24 := netip.MustParsePrefix("172.30.0.0/24")
	var used []netip.Addr
	for i := 2; i <= 254; i++ {
		used = append(used, netip.AddrFrom4([4]byte{172, 30, 0, byte(i)}))
	}
	if a, err := AllocateIP(s24, used); !errors.Is(err, ErrSubnetFull) {
		t.Errorf("full /24: got %s, %v, want ErrSubnetFull", a, err)
	}
	// Freeing one makes exactly that one available; broadcast never is.
	if a, err := AllocateIP(s24, used[:len(used)-1]); err != nil || a != netip.MustParseAddr("172.30.0.254") {
		t.Errorf("one free: got %s, %v, want 172.30.0.254", a, err)
	}
	for _, p := range []string{"10.0.0.0/31", "10.0.0.1/32", "fd00::/64"} {
		if _, err := AllocateIP(netip.MustParsePrefix(p), nil); err == nil {
			t.Errorf("AllocateIP(%s) = nil error", p)
		}
	}
	if _, err := AllocateIP(netip.Prefix{}, nil); err == nil {
		t.Error("AllocateIP(zero prefix) = nil error")
	}
}
