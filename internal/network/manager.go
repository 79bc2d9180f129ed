package network

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tapFlags are the flags Firecracker opens its tap with (IFF_NO_PI |
// IFF_VNET_HDR, in its virtio-net tap.rs). The opener's flags win, but making
// the persistent tap with the same ones keeps `ip -d link` honest.
const tapFlags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR

// Manager creates and removes the bridge and taps in the calling process's
// network namespace. Its zero value is usable (Config defaults apply). All
// link changes go through one mutex, so a VM starting (CreateTap) and the
// last other VM stopping (ReleaseBridgeIfUnused) cannot leave the new tap
// without its bridge.
type Manager struct {
	Config Config
	Logger *slog.Logger // optional
	Runner Runner       // runs nft for egress NAT; default system.ExecRunner

	mu    sync.Mutex
	natOn bool // this manager installed the NAT table since the bridge appeared
}

func (m *Manager) log() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Logger
}

// EnsureBridge creates the bridge if absent, gives it Gateway/len, and sets
// it up. It is idempotent.
func (m *Manager) EnsureBridge(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := m.ensureBridgeLocked(ctx)
	return err
}

func (m *Manager) ensureBridgeLocked(ctx context.Context) (netlink.Link, error) {
	cfg := m.Config.WithDefaults()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ensure bridge %s: %w", cfg.Bridge, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("ensure bridge %s: %w", cfg.Bridge, err)
	}
	br, err := netlink.LinkByName(cfg.Bridge)
	switch {
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = cfg.Bridge
		// A bridge without a set address takes the lowest port MAC, so the
		// gateway's MAC would change under the guests as taps come and go.
		attrs.HardwareAddr = bridgeMAC(cfg.Bridge)
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", cfg.Bridge, err)
		}
		m.log().Info("created bridge", "bridge", cfg.Bridge)
		if br, err = netlink.LinkByName(cfg.Bridge); err != nil {
			return nil, fmt.Errorf("look up bridge %s: %w", cfg.Bridge, err)
		}
	case err != nil:
		return nil, fmt.Errorf("look up bridge %s: %w", cfg.Bridge, err)
	}
	if br.Type() != "bridge" {
		return nil, fmt.Errorf("ensure bridge %s: link exists with type %q", cfg.Bridge, br.Type())
	}
	gw := netip.PrefixFrom(cfg.Gateway(), cfg.Subnet.Bits())
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   gw.Addr().AsSlice(),
		Mask: net.CIDRMask(gw.Bits(), 32),
	}}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return nil, fmt.Errorf("address bridge %s with %s: %w", cfg.Bridge, gw, err)
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", cfg.Bridge, err)
		}
	}
	if cfg.EgressNAT && !m.natOn {
		if err := m.ensureNATLocked(ctx, cfg); err != nil {
			return nil, err
		}
		m.natOn = true
	}
	return br, nil
}

// CreateTap makes the persistent tap name (flags as Firecracker opens it),
// enslaves it to the bridge (ensuring the bridge first) and sets it up. It is
// idempotent: an existing tap is re-attached and set up.
func (m *Manager) CreateTap(ctx context.Context, name string) error {
	if err := validTapName(name); err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.ensureBridgeLocked(ctx)
	if err != nil {
		return fmt.Errorf("create tap %s: %w", name, err)
	}
	tap, err := netlink.LinkByName(name)
	switch {
	case isNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		t := &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags}
		if err := netlink.LinkAdd(t); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		m.log().Info("created tap", "tap", name)
		if tap, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("look up tap %s: %w", name, err)
		}
	case err != nil:
		return fmt.Errorf("look up tap %s: %w", name, err)
	}
	if !isTap(tap) {
		return fmt.Errorf("create tap %s: link exists and is not a tap (type %q)", name, tap.Type())
	}
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(tap, br); err != nil {
			return fmt.Errorf("attach tap %s to bridge %s: %w", name, br.Attrs().Name, err)
		}
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(tap); err != nil {
			return fmt.Errorf("set tap %s up: %w", name, err)
		}
	}
	return nil
}

// SetTapUp sets the tap name up or down. A tap that is down drops what its
// VM sends, and the guest sees no change of its link: a clone stays off the
// bridge this way until it has its own identity.
func (m *Manager) SetTapUp(ctx context.Context, name string, up bool) error {
	if err := validTapName(name); err != nil {
		return fmt.Errorf("set tap %s: %w", name, err)
	}
	tap, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up tap %s: %w", name, err)
	}
	if !isTap(tap) {
		return fmt.Errorf("set tap %s: link is not a tap (type %q)", name, tap.Type())
	}
	if up {
		err = netlink.LinkSetUp(tap)
	} else {
		err = netlink.LinkSetDown(tap)
	}
	if err != nil {
		return fmt.Errorf("set tap %s up=%v: %w", name, up, err)
	}
	return nil
}

// SetNeighbor records on the bridge that ip is at mac, replacing what the
// host's neighbour cache holds for ip. An address given to a new VM may
// still be cached as reachable at the MAC of a deleted one: the host would
// send to the old MAC for up to the reachable time (15 to 45 s) before it
// asks again, and a quiet guest never corrects it. The entry is left stale,
// so the kernel confirms it on first use as usual.
func (m *Manager) SetNeighbor(ctx context.Context, ip, mac string) error {
	addr := net.ParseIP(ip)
	hw, err := net.ParseMAC(mac)
	if addr == nil || addr.To4() == nil || err != nil {
		return fmt.Errorf("set neighbour %s at %s: not an IPv4 address and a MAC", ip, mac)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := m.ensureBridgeLocked(ctx)
	if err != nil {
		return fmt.Errorf("set neighbour %s: %w", ip, err)
	}
	n := &netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_STALE, IP: addr.To4(), HardwareAddr: hw}
	if err := netlink.NeighSet(n); err != nil {
		return fmt.Errorf("set neighbour %s at %s on %s: %w", ip, mac, br.Attrs().Name, err)
	}
	return nil
}

// DeleteTap removes the tap name. An absent tap is success; a link of that
// name that is not a tap is left alone and reported.
func (m *Manager) DeleteTap(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	tap, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up tap %s: %w", name, err)
	}
	if !isTap(tap) {
		return fmt.Errorf("delete tap %s: link is not a tap (type %q)", name, tap.Type())
	}
	if err := netlink.LinkDel(tap); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	m.log().Info("deleted tap", "tap", name)
	return nil
}

// ReleaseBridgeIfUnused deletes the bridge when no link has it as master.
// An absent bridge is success. It holds the same lock as CreateTap, so a tap
// being created cannot lose its bridge.
func (m *Manager) ReleaseBridgeIfUnused(ctx context.Context) error {
	name := m.Config.WithDefaults().Bridge
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("release bridge %s: %w", name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	br, err := netlink.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if br.Type() != "bridge" {
		return fmt.Errorf("release bridge %s: link has type %q, not a bridge", name, br.Type())
	}
	links, err := listLinks()
	if err != nil {
		return fmt.Errorf("release bridge %s: %w", name, err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			m.log().Debug("bridge still in use", "bridge", name, "port", l.Attrs().Name)
			return nil
		}
	}
	if err := netlink.LinkDel(br); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete bridge %s: %w", name, err)
	}
	if cfg := m.Config.WithDefaults(); cfg.EgressNAT {
		if err := m.removeNATLocked(ctx, cfg); err != nil {
			return err
		}
		m.natOn = false
	}
	m.log().Info("deleted bridge", "bridge", name)
	return nil
}

// ListTaps returns the names of tap links starting with TapPrefix, which is
// how the daemon finds taps left behind by VMs it no longer knows.
func (m *Manager) ListTaps(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	links, err := listLinks()
	if err != nil {
		return nil, fmt.Errorf("list taps: %w", err)
	}
	var names []string
	for _, l := range links {
		if isTap(l) && strings.HasPrefix(l.Attrs().Name, TapPrefix) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}

// SetTapOwner makes uid and gid the owner of a persistent tap, so that a
// VMM running as that user (and no other unprivileged user) can attach to
// it without any capability (TUNSETOWNER/TUNSETGROUP).
func (m *Manager) SetTapOwner(ctx context.Context, name string, uid, gid int) error {
	if err := validTapName(name); err != nil {
		return fmt.Errorf("tap %s owner: %w", name, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("tap %s owner: %w", name, err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap %s owner: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("tap %s owner: attaching: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, uid); err != nil {
		return fmt.Errorf("tap %s owner: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, gid); err != nil {
		return fmt.Errorf("tap %s group: %w", name, err)
	}
	return nil
}

// TapBridge returns the name of the bridge a tap is attached to ("" when
// it is attached to none).
func (m *Manager) TapBridge(ctx context.Context, name string) (string, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("tap %s: %w", name, err)
	}
	if l.Attrs().MasterIndex == 0 {
		return "", nil
	}
	br, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil {
		return "", fmt.Errorf("bridge of tap %s: %w", name, err)
	}
	return br.Attrs().Name, nil
}

// TapExists reports whether a tap link called name exists.
func (m *Manager) TapExists(name string) bool {
	l, err := netlink.LinkByName(name)
	return err == nil && isTap(l)
}

func isTap(l netlink.Link) bool {
	t, ok := l.(*netlink.Tuntap)
	// Mode is 0 when the kernel does not report IFLA_INFO_DATA for tun.
	return ok && (t.Mode == netlink.TUNTAP_MODE_TAP || t.Mode == 0)
}

func validTapName(name string) error {
	if name == "" || len(name) > maxIfName {
		return fmt.Errorf("invalid interface name (1 to %d bytes)", maxIfName)
	}
	if strings.ContainsAny(name, "/% \t\n:") {
		return errors.New("invalid interface name (contains '/', '%', ':' or space)")
	}
	return nil
}

// listLinks dumps all links, retrying when the dump is interrupted by a
// concurrent change (the kernel then flags the result as inconsistent).
func listLinks() ([]netlink.Link, error) {
	var err error
	for range 5 {
		var links []netlink.Link
		links, err = netlink.LinkList()
		if err == nil {
			return links, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list links: %w", err)
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// bridgeMAC is a stable, locally administered unicast address for the bridge.
// Its first octet (0x06) differs from guests' (0x02, MACFromID), so the two
// never collide.
func bridgeMAC(bridge string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("banger bridge " + bridge))
	return net.HardwareAddr{0x06, sum[0], sum[1], sum[2], sum[3], sum[4]}
}
