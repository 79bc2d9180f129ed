// Package network gives each VM its host side: one Linux bridge shared by all
// VMs, a persistent tap per VM enslaved to it, and the addressing (guest IP,
// MAC, gateway) derived from the VM id and the configured subnet. Links are
// made through netlink when a VM starts and removed when their last user
// goes; nothing is created when a Manager is constructed.
package network

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Defaults used when Config fields are zero.
const (
	DefaultBridge = "banger0"
	// TapPrefix starts every tap name banger makes, so ListTaps can tell
	// banger's taps from anyone else's.
	TapPrefix = "bgr"
	// maxIfName is IFNAMSIZ-1: the kernel's limit on an interface name.
	maxIfName = 15
)

// DefaultSubnet is the guest subnet used when Config.Subnet is zero.
var DefaultSubnet = netip.MustParsePrefix("172.30.0.0/24")

// ErrSubnetFull is returned by AllocateIP when every host address is taken.
var ErrSubnetFull = errors.New("subnet full")

// Config describes the host network that guests attach to.
type Config struct {
	Bridge string       // bridge name; DefaultBridge when empty
	Subnet netip.Prefix // guest subnet; DefaultSubnet when zero
	// EgressNAT gives guests a way out through the host: while the bridge
	// exists, an nftables table (banger_<bridge>) masquerades the subnet's
	// traffic leaving by any other interface, and IPv4 forwarding is on.
	// Off by default, and in every test.
	EgressNAT bool
}

// WithDefaults returns c with empty fields set to their defaults and the
// subnet masked to its network address.
func (c Config) WithDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if !c.Subnet.IsValid() {
		c.Subnet = DefaultSubnet
	}
	c.Subnet = c.Subnet.Masked()
	return c
}

// Validate reports a configuration that cannot work: a bridge name the
// kernel would reject, or a subnet that is not IPv4 or has no room for a
// gateway and one guest.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if len(c.Bridge) > maxIfName {
		return fmt.Errorf("network config: bridge name %q longer than %d bytes", c.Bridge, maxIfName)
	}
	if !c.Subnet.Addr().Is4() {
		return fmt.Errorf("network config: subnet %s is not IPv4", c.Subnet)
	}
	if c.Subnet.Bits() > 30 {
		return fmt.Errorf("network config: subnet %s too small for a gateway and a guest", c.Subnet)
	}
	return nil
}

// Gateway is the first host address of the subnet. It is assigned to the
// bridge and is the guests' default route.
func (c Config) Gateway() netip.Addr {
	return c.WithDefaults().Subnet.Addr().Next()
}

// Netmask is the subnet mask in dotted form ("255.255.255.0"), as the kernel
// ip= boot parameter wants it.
func (c Config) Netmask() string {
	s := c.WithDefaults().Subnet
	bits := 32
	if s.Addr().Is6() {
		bits = 128
	}
	return net.IP(net.CIDRMask(s.Bits(), bits)).String()
}

// TapName is the host tap for a VM: TapPrefix plus the first 12 characters
// of the id, which fits the kernel's 15-byte limit on interface names.
func TapName(vmID string) string {
	if len(vmID) > maxIfName-len(TapPrefix) {
		vmID = vmID[:maxIfName-len(TapPrefix)]
	}
	return TapPrefix + vmID
}

// MACFromID is the guest's MAC address: locally administered, unicast (first
// octet 02) and stable across restarts, so guest-side configuration keyed on
// the MAC survives. The other five octets are the id's first ten hex digits
// (readable next to the id); an id that does not start with ten hex digits
// is hashed instead.
func MACFromID(vmID string) string {
	b, err := hex.DecodeString(prefix(vmID, 10))
	if err != nil || len(b) != 5 {
		sum := sha256.Sum256([]byte(vmID))
		b = sum[:5]
	}
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4])
}

func prefix(s string, n int) string {
	if len(s) < n {
		return s
	}
	return s[:n]
}

// AllocateIP returns the lowest address in subnet that is not the network
// address, the gateway (first host), the broadcast address, or in used. It
// wraps ErrSubnetFull when none is left.
func AllocateIP(subnet netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return netip.Addr{}, fmt.Errorf("allocate ip in %s: not an IPv4 subnet", subnet)
	}
	subnet = subnet.Masked()
	if subnet.Bits() > 30 {
		return netip.Addr{}, fmt.Errorf("allocate ip in %s: %w", subnet, ErrSubnetFull)
	}
	taken := make(map[netip.Addr]bool, len(used))
	for _, a := range used {
		taken[a.Unmap()] = true
	}
	// Skip the network address and the gateway; stop before broadcast.
	for a := subnet.Addr().Next().Next(); subnet.Contains(a.Next()); a = a.Next() {
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("allocate ip in %s: %w", subnet, ErrSubnetFull)
}
