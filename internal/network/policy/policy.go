// Package policy is the guest network policy: per-VM nftables rules that keep
// a guest off the host (except DNS on the bridge address and the ports the VM
// was given), stop it from using another VM's MAC or IP, cut it off from the
// other VMs when it is isolated, and filter what it sends beyond the host
// (per-VM allow and deny lists; link-local and cloud metadata addresses are
// always denied).
//
// Everything lives in two tables that banger owns, both named Config.Table:
// an inet table for what the host routes or receives, and a bridge table for
// what crosses the bridge (anti-spoofing and isolation need the bridge port,
// which the inet hooks never see). A VM's objects are its rules, each tagged
// with the comment "banger vm <id>", and its chains, named vm_<id>; the
// tables go when the last VM's rules go. Every change is one netlink batch,
// so the kernel applies it whole or not at all.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/network"
)

// DefaultTable names banger's tables (one inet, one bridge) when
// Config.Table is empty.
const DefaultTable = "banger"

// Limits on one VM's lists: each entry is one rule, and a policy with
// thousands of them is a mistake, not a firewall.
const (
	maxHostPorts = 64
	maxPrefixes  = 256
)

// AlwaysDenied are the destinations no guest may reach beyond the host,
// whatever its allow list says: link-local (which holds the cloud metadata
// service, 169.254.169.254) and the IPv6 metadata address of EC2.
var AlwaysDenied = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fd00:ec2::254/128"),
}

// Config is the host network the policies are written for.
type Config struct {
	Table   string       // name of both tables; DefaultTable when empty
	Bridge  string       // the VMs' bridge; network.DefaultBridge when empty
	Gateway netip.Addr   // the bridge's address; the subnet's first host when zero
	Subnet  netip.Prefix // the guest subnet; network.DefaultSubnet when zero
	// EgressNAT says the host gives guests a way out (network.Config's
	// EgressNAT). Without it nothing a guest sends is forwarded beyond the
	// host, so no route an administrator made can leak guest traffic.
	EgressNAT bool
}

// WithDefaults returns c with empty fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.Bridge == "" {
		c.Bridge = network.DefaultBridge
	}
	if !c.Subnet.IsValid() {
		c.Subnet = network.DefaultSubnet
	}
	c.Subnet = c.Subnet.Masked()
	if !c.Gateway.IsValid() {
		c.Gateway = c.Subnet.Addr().Next()
	}
	return c
}

// Validate reports a configuration the rules cannot be written for.
func (c Config) Validate() error {
	c = c.WithDefaults()
	if !validName(c.Table, 64) {
		return errdefs.Invalid("network policy config: table name %q (want 1 to 64 letters, digits, '_' or '-')", c.Table)
	}
	if !validIfName(c.Bridge) {
		return errdefs.Invalid("network policy config: bridge name %q", c.Bridge)
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 30 {
		return errdefs.Invalid("network policy config: subnet %s (want an IPv4 subnet of /30 or larger)", c.Subnet)
	}
	if !c.Gateway.Is4() || !c.Subnet.Contains(c.Gateway) {
		return errdefs.Invalid("network policy config: gateway %s not in subnet %s", c.Gateway, c.Subnet)
	}
	return nil
}

// VMPolicy is one VM's network policy. Apply writes it for the VM's tap.
type VMPolicy struct {
	VMID string // tags the VM's rules and names its chains
	Tap  string // the VM's tap on the bridge (network.TapName)
	MAC  string // the only source MAC the tap may send (network.MACFromID)
	IP   netip.Addr
	// Isolated cuts the VM off from every other VM on the bridge, both ways;
	// the host (DNS, allowed ports) and egress are unaffected.
	Isolated bool
	// AllowHostPorts are TCP ports of the host the guest may connect to, on
	// the bridge address only (as DNS is).
	AllowHostPorts []uint16
	// EgressAllow, when not empty, is the only set of destinations beyond
	// the host the guest may reach; EgressDeny is never reached. Deny wins
	// over allow, and AlwaysDenied is denied whatever both say.
	EgressAllow, EgressDeny []netip.Prefix
}

// normalize validates p against cfg and returns it with its lists sorted,
// deduplicated and masked, so that equal policies make equal rules.
func (p VMPolicy) normalize(cfg Config) (VMPolicy, error) {
	if !validName(p.VMID, 64) {
		return p, errdefs.Invalid("vm id %q (want 1 to 64 letters, digits, '_' or '-')", p.VMID)
	}
	if !validIfName(p.Tap) || !strings.HasPrefix(p.Tap, network.TapPrefix) || p.Tap == network.TapPrefix {
		return p, errdefs.Invalid("tap %q (want an interface name starting %q)", p.Tap, network.TapPrefix)
	}
	mac, err := net.ParseMAC(p.MAC)
	if err != nil || len(mac) != 6 || mac[0]&1 != 0 {
		return p, errdefs.Invalid("mac %q (want a unicast ethernet address)", p.MAC)
	}
	p.MAC = mac.String()
	p.IP = p.IP.Unmap()
	last := broadcast(cfg.Subnet)
	if !p.IP.Is4() || !cfg.Subnet.Contains(p.IP) || p.IP == cfg.Subnet.Addr() || p.IP == cfg.Gateway || p.IP == last {
		return p, errdefs.Invalid("ip %s (want a host address of %s other than the gateway %s)", p.IP, cfg.Subnet, cfg.Gateway)
	}
	if len(p.AllowHostPorts) > maxHostPorts {
		return p, errdefs.Invalid("%d allowed host ports (at most %d)", len(p.AllowHostPorts), maxHostPorts)
	}
	ports := slices.Clone(p.AllowHostPorts)
	slices.Sort(ports)
	p.AllowHostPorts = slices.Compact(ports)
	if len(p.AllowHostPorts) > 0 && p.AllowHostPorts[0] == 0 {
		return p, errdefs.Invalid("allowed host port 0")
	}
	for _, l := range []*[]netip.Prefix{&p.EgressAllow, &p.EgressDeny} {
		if len(*l) > maxPrefixes {
			return p, errdefs.Invalid("%d egress prefixes (at most %d per list)", len(*l), maxPrefixes)
		}
		out := make([]netip.Prefix, 0, len(*l))
		for _, pr := range *l {
			if pr.Addr().Is4In6() {
				pr = netip.PrefixFrom(pr.Addr().Unmap(), pr.Bits()-96)
			}
			if !pr.IsValid() {
				return p, errdefs.Invalid("egress prefix %s", pr)
			}
			out = append(out, pr.Masked())
		}
		slices.SortFunc(out, comparePrefix)
		*l = slices.Compact(out)
	}
	return p, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func validName(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

func validIfName(s string) bool {
	return s != "" && len(s) <= 15 && !strings.ContainsAny(s, "/% \t\n:*\x00")
}

// ErrTableChanged is the kind of error Check, and Apply before it makes
// anything, return when banger's tables hold what banger did not put there.
var ErrTableChanged = errors.New("nftables table changed outside banger")

// TableChangedError says what in banger's tables differs from what banger
// makes, and how to fix it. It is ErrTableChanged and errdefs.ErrConflict.
type TableChangedError struct {
	Table string   // the tables' name (inet and bridge)
	Diffs []string // one line per difference, e.g. `chain inet banger input: rule handle 7 not made by banger`
}

func (e *TableChangedError) Error() string {
	return fmt.Sprintf("nftables table %q changed outside banger: %s; to fix: %s",
		e.Table, strings.Join(e.Diffs, "; "), e.Fix())
}

// Fix tells an operator how to get back to a table banger can manage.
func (e *TableChangedError) Fix() string {
	return fmt.Sprintf("see `nft -a list table inet %[1]s` and `nft -a list table bridge %[1]s`; "+
		"delete what another tool added (`nft delete rule inet %[1]s CHAIN handle N`), "+
		"or delete both tables (`nft delete table inet %[1]s; nft delete table bridge %[1]s`) "+
		"and apply the running VMs' policies again", e.Table)
}

func (e *TableChangedError) Unwrap() []error { return []error{ErrTableChanged, errdefs.ErrConflict} }

// Manager writes VM policies into the nftables of the calling process's
// network namespace. Its zero value is usable (Config defaults apply). One
// mutex orders its changes; a change reads the tables, decides, and sends
// one batch.
type Manager struct {
	Config Config
	Logger *slog.Logger // optional

	mu sync.Mutex
}

func (m *Manager) log() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Logger
}

func (m *Manager) config() (Config, error) {
	cfg := m.Config.WithDefaults()
	return cfg, cfg.Validate()
}

// Apply makes p the VM's policy: in one batch it removes whatever rules and
// chains the VM had and writes the new ones, creating banger's tables first
// if they are absent. It is idempotent. When the tables were changed by
// another tool it returns a *TableChangedError and changes nothing.
func (m *Manager) Apply(ctx context.Context, p VMPolicy) error {
	cfg, err := m.config()
	if err != nil {
		return fmt.Errorf("apply network policy of vm %s: %w", p.VMID, err)
	}
	p, err = p.normalize(cfg)
	if err != nil {
		return fmt.Errorf("apply network policy of vm %s: %w", p.VMID, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("apply network policy of vm %s: %w", p.VMID, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("apply network policy of vm %s: nftables: %w", p.VMID, err)
	}
	st, err := readTables(conn, cfg.Table)
	if err != nil {
		return fmt.Errorf("apply network policy of vm %s: %w", p.VMID, err)
	}
	if diffs := st.diff(cfg); len(diffs) > 0 {
		return fmt.Errorf("apply network policy of vm %s: %w", p.VMID, &TableChangedError{Table: cfg.Table, Diffs: diffs})
	}
	created := !st.exists()
	if created {
		queueBase(conn, cfg)
	}
	want := vmRuleset(cfg, p)
	queueRemoveVM(conn, st, p.VMID, want.chainSet())
	queueVM(conn, cfg, st, want)
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("apply network policy of vm %s to nftables table %s: %w", p.VMID, cfg.Table, err)
	}
	m.log().Info("applied network policy", "vm", p.VMID, "tap", p.Tap, "ip", p.IP, "isolated", p.Isolated, "tables_created", created)
	return nil
}

// Remove deletes the VM's rules and chains, and banger's tables with them
// when no other VM has rules left (unless another tool added to them). It
// is idempotent: a VM without rules, or absent tables, is success.
func (m *Manager) Remove(ctx context.Context, vmID string) error {
	cfg, err := m.config()
	if err != nil {
		return fmt.Errorf("remove network policy of vm %s: %w", vmID, err)
	}
	if !validName(vmID, 64) {
		return fmt.Errorf("remove network policy of vm %s: %w", vmID, errdefs.Invalid("vm id %q", vmID))
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove network policy of vm %s: %w", vmID, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("remove network policy of vm %s: nftables: %w", vmID, err)
	}
	st, err := readTables(conn, cfg.Table)
	if err != nil {
		return fmt.Errorf("remove network policy of vm %s: %w", vmID, err)
	}
	ids := st.vmIDs()
	others := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return id == vmID })
	dropTables := len(others) == 0 && st.exists() && len(st.diff(cfg)) == 0
	switch {
	case dropTables:
		// The last VM: the tables go, in one batch.
		for _, t := range st.tables {
			if t != nil {
				conn.DelTable(t.table)
			}
		}
	case slices.Contains(ids, vmID):
		queueRemoveVM(conn, st, vmID, nil)
	default:
		return nil
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("remove network policy of vm %s from nftables table %s: %w", vmID, cfg.Table, err)
	}
	m.log().Info("removed network policy", "vm", vmID, "tables_removed", dropTables)
	return nil
}

// List returns the ids of the VMs that have rules or chains in banger's
// tables, sorted: doctor shows them, gc removes those of VMs that are gone.
func (m *Manager) List(ctx context.Context) ([]string, error) {
	cfg, err := m.config()
	if err != nil {
		return nil, fmt.Errorf("list network policies: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list network policies: %w", err)
	}
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("list network policies: nftables: %w", err)
	}
	st, err := readTables(conn, cfg.Table)
	if err != nil {
		return nil, fmt.Errorf("list network policies: %w", err)
	}
	return st.vmIDs(), nil
}

// Check reports whether banger's tables are as banger makes them: absent
// (no VM has a policy), or both present with exactly banger's base chains
// and rules plus VM rules and chains tagged as banger's. Anything else is a
// *TableChangedError naming each difference.
func (m *Manager) Check(ctx context.Context) error {
	cfg, err := m.config()
	if err != nil {
		return fmt.Errorf("check nftables table: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("check nftables table %s: %w", cfg.Table, err)
	}
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("check nftables table %s: %w", cfg.Table, err)
	}
	st, err := readTables(conn, cfg.Table)
	if err != nil {
		return fmt.Errorf("check nftables table %s: %w", cfg.Table, err)
	}
	if diffs := st.diff(cfg); len(diffs) > 0 {
		return &TableChangedError{Table: cfg.Table, Diffs: diffs}
	}
	return nil
}

// Reset deletes both of banger's tables, whatever they hold: the repair
// that TableChangedError.Fix describes, after which every running VM's
// policy must be applied again. Absent tables are success.
func (m *Manager) Reset(ctx context.Context) error {
	cfg, err := m.config()
	if err != nil {
		return fmt.Errorf("reset nftables table: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("reset nftables table %s: %w", cfg.Table, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("reset nftables table %s: %w", cfg.Table, err)
	}
	st, err := readTables(conn, cfg.Table)
	if err != nil {
		return fmt.Errorf("reset nftables table %s: %w", cfg.Table, err)
	}
	if st.tables[famBridge] == nil && st.tables[famInet] == nil {
		return nil
	}
	for _, t := range st.tables {
		if t != nil {
			conn.DelTable(t.table)
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("reset nftables table %s: %w", cfg.Table, err)
	}
	m.log().Info("deleted network policy tables", "table", cfg.Table)
	return nil
}

// Render is the VM's part of the ruleset as nft-like text, table by table
// and chain by chain, for doctor and for golden tests. Every line is one
// rule that Apply writes; base rules are in RenderBase.
func (m *Manager) Render(p VMPolicy) string {
	cfg := m.Config.WithDefaults()
	np, err := p.normalize(cfg)
	if err != nil {
		return fmt.Sprintf("# vm %s: invalid policy: %v\n", p.VMID, err)
	}
	return render(cfg, vmRuleset(cfg, np), fmt.Sprintf("vm %s: tap %s, mac %s, ip %s; rules tagged %q",
		np.VMID, np.Tap, np.MAC, np.IP, vmTag(np.VMID)))
}

// RenderBase is the rules every VM shares (the base chains), as nft-like
// text.
func (m *Manager) RenderBase() string {
	cfg := m.Config.WithDefaults()
	return render(cfg, baseRuleset(cfg), fmt.Sprintf("base chains of tables inet %s and bridge %s (bridge %s, subnet %s, egress nat %t)",
		cfg.Table, cfg.Table, cfg.Bridge, cfg.Subnet, cfg.EgressNAT))
}
