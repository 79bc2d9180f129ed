package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/system"
)

// As root, the whole test binary re-runs in a private network namespace, so
// the links made here never touch the host's network. Afterwards the binary
// fails if links are left behind: in the private namespace anything but lo,
// in the host namespace anything with a test name.
func TestMain(m *testing.M) {
	code := system.ReexecInNewNetNS(m)
	if code == 0 {
		if left := leftoverLinks(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "links left behind in this network namespace: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

// Test link names: "bgrtest..." can never be a TapName (ids are hex, 't' is
// not), and test bridges start "bgtest".
const (
	testTapPrefix    = TapPrefix + "test"
	testBridgePrefix = "bgtest"
)

func leftoverLinks() []string {
	links, err := netlink.LinkList()
	if err != nil {
		return []string{"(list links: " + err.Error() + ")"}
	}
	private := system.InPrivateNetNS()
	var left []string
	for _, l := range links {
		name := l.Attrs().Name
		isTest := strings.HasPrefix(name, testTapPrefix) || strings.HasPrefix(name, testBridgePrefix)
		if isTest || (private && name != "lo") {
			left = append(left, name)
		}
	}
	return left
}

// requireNetNS skips unless the test runs as root inside the private
// namespace made by TestMain: nothing below may touch the host's links.
func requireNetNS(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (creates bridges and taps in a private network namespace)")
	}
	if !system.InPrivateNetNS() {
		t.Skip("not in the private network namespace TestMain makes; refusing to touch host links")
	}
}

// newTestManager returns a Manager on its own bridge and removes, whatever
// the outcome, every link the test may have made.
func newTestManager(t *testing.T, bridge string) *Manager {
	t.Helper()
	m := &Manager{
		Config: Config{Bridge: bridge, Subnet: netip.MustParsePrefix("10.77.0.0/24")},
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	t.Cleanup(func() {
		links, _ := netlink.LinkList()
		for _, l := range links {
			if n := l.Attrs().Name; strings.HasPrefix(n, testTapPrefix) || n == bridge {
				_ = netlink.LinkDel(l)
			}
		}
	})
	return m
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("look up %s: %v", name, err)
	}
	return l
}

func linkAbsent(name string) bool {
	_, err := netlink.LinkByName(name)
	return isNotFound(err)
}

func TestEnsureBridge(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"br")
	for i := range 2 {
		if err := m.EnsureBridge(ctx); err != nil {
			t.Fatalf("EnsureBridge #%d: %v", i+1, err)
		}
	}
	br := mustLink(t, m.Config.Bridge)
	if br.Type() != "bridge" {
		t.Fatalf("%s has type %q, want bridge", m.Config.Bridge, br.Type())
	}
	if br.Attrs().Flags&net.FlagUp == 0 {
		t.Error("bridge is not up")
	}
	if got, want := br.Attrs().HardwareAddr.String(), bridgeMAC(m.Config.Bridge).String(); got != want {
		t.Errorf("bridge MAC = %s, want stable %s", got, want)
	}
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	if !slices.Equal(got, []string{"10.77.0.1/24"}) {
		t.Errorf("bridge addresses = %v, want [10.77.0.1/24] exactly once", got)
	}
	// Unused: released, and releasing again is fine.
	for i := range 2 {
		if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
			t.Fatalf("ReleaseBridgeIfUnused #%d: %v", i+1, err)
		}
	}
	if !linkAbsent(m.Config.Bridge) {
		t.Error("unused bridge still present after ReleaseBridgeIfUnused")
	}
}

func TestCreateTapAndDelete(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"tap")
	name := testTapPrefix + "a"
	if m.TapExists(name) {
		t.Fatalf("TapExists(%s) before creation", name)
	}
	for i := range 2 {
		if err := m.CreateTap(ctx, name); err != nil {
			t.Fatalf("CreateTap #%d: %v", i+1, err)
		}
	}
	br := mustLink(t, m.Config.Bridge)
	link := mustLink(t, name)
	tap, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s is %T (%s), want a tuntap", name, link, link.Type())
	}
	if tap.Mode != netlink.TUNTAP_MODE_TAP {
		t.Errorf("mode = %v, want tap", tap.Mode)
	}
	if tap.Flags&netlink.TUNTAP_NO_PI == 0 || tap.Flags&netlink.TUNTAP_VNET_HDR == 0 {
		t.Errorf("flags = %#x, want NO_PI and VNET_HDR", tap.Flags)
	}
	if tap.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("flags = %#x: multi-queue set, Firecracker opens single-queue", tap.Flags)
	}
	if tap.NonPersist {
		t.Error("tap is not persistent: it would vanish before Firecracker opens it")
	}
	if tap.MasterIndex != br.Attrs().Index {
		t.Errorf("tap master index = %d, want bridge %d", tap.MasterIndex, br.Attrs().Index)
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		t.Error("tap is not up")
	}
	if !m.TapExists(name) {
		t.Errorf("TapExists(%s) = false after CreateTap", name)
	}
	taps, err := m.ListTaps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(taps, []string{name}) {
		t.Errorf("ListTaps = %v, want [%s] (bridge and lo excluded)", taps, name)
	}

	for i := range 2 {
		if err := m.DeleteTap(ctx, name); err != nil {
			t.Fatalf("DeleteTap #%d: %v", i+1, err)
		}
	}
	if m.TapExists(name) || !linkAbsent(name) {
		t.Errorf("tap %s still present after DeleteTap", name)
	}
	if taps, err := m.ListTaps(ctx); err != nil || len(taps) != 0 {
		t.Errorf("ListTaps after delete = %v, %v; want none", taps, err)
	}
	if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
		t.Fatal(err)
	}
}

// SetTapUp takes a tap down and up, on the bridge all along, and refuses a
// bad name, a missing link and a link that is not a tap.
func TestSetTapUp(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"up")
	name := testTapPrefix + "u"
	if err := m.CreateTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.DeleteTap(ctx, name); m.ReleaseBridgeIfUnused(ctx) })
	br := mustLink(t, m.Config.Bridge)
	for _, up := range []bool{false, true, false} {
		if err := m.SetTapUp(ctx, name, up); err != nil {
			t.Fatalf("SetTapUp(%v): %v", up, err)
		}
		l := mustLink(t, name)
		if (l.Attrs().Flags&net.FlagUp != 0) != up || l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("after SetTapUp(%v): flags %v, master %d (bridge %d)", up, l.Attrs().Flags, l.Attrs().MasterIndex, br.Attrs().Index)
		}
	}
	for _, bad := range []string{"", "eth0/x", testTapPrefix + "missing", m.Config.Bridge} {
		if err := m.SetTapUp(ctx, bad, true); err == nil {
			t.Errorf("SetTapUp(%q) succeeded", bad)
		}
	}
	if l := mustLink(t, m.Config.Bridge); l.Attrs().Flags&net.FlagUp == 0 {
		t.Error("the bridge went down")
	}
}

func TestCreateTapRepairsDetachedDownTap(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"fix")
	name := testTapPrefix + "fix"
	if err := m.CreateTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	tap := mustLink(t, name)
	if err := netlink.LinkSetNoMaster(tap); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(tap); err != nil {
		t.Fatal(err)
	}
	if err := m.CreateTap(ctx, name); err != nil {
		t.Fatalf("CreateTap on a detached, down tap: %v", err)
	}
	tap = mustLink(t, name)
	if tap.Attrs().MasterIndex != mustLink(t, m.Config.Bridge).Attrs().Index {
		t.Error("CreateTap did not re-attach the existing tap to the bridge")
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		t.Error("CreateTap did not set the existing tap up")
	}
	if err := m.DeleteTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseBridgeIfUnusedKeepsUsedBridge(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"rel")
	name := testTapPrefix + "rel"
	// Absent bridge: success.
	if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
		t.Fatalf("ReleaseBridgeIfUnused without a bridge: %v", err)
	}
	if err := m.CreateTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
		t.Fatal(err)
	}
	if linkAbsent(m.Config.Bridge) {
		t.Fatal("ReleaseBridgeIfUnused deleted a bridge with a tap attached")
	}
	if mustLink(t, name).Attrs().MasterIndex == 0 {
		t.Fatal("tap lost its bridge")
	}
	if err := m.DeleteTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
		t.Fatal(err)
	}
	if !linkAbsent(m.Config.Bridge) {
		t.Error("bridge still present after its last tap went")
	}
}

func TestManagerLeavesForeignLinksAlone(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	bridge := testBridgePrefix + "own"
	m := newTestManager(t, bridge)
	// A bridge where the tap should be: DeleteTap and CreateTap refuse it.
	impostor := testTapPrefix + "imp"
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: impostor}}); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteTap(ctx, impostor); err == nil {
		t.Error("DeleteTap on a bridge returned nil")
	}
	if err := m.CreateTap(ctx, impostor); err == nil {
		t.Error("CreateTap over an existing bridge returned nil")
	}
	if linkAbsent(impostor) {
		t.Error("DeleteTap removed a link that is not a tap")
	}
	if m.TapExists(impostor) {
		t.Error("TapExists true for a bridge")
	}
	if taps, err := m.ListTaps(ctx); err != nil || len(taps) != 0 {
		t.Errorf("ListTaps = %v, %v; want no taps (a bridge named %s is not one)", taps, err, impostor)
	}
	// A tap where the bridge should be: EnsureBridge and Release refuse it.
	other := &Manager{Config: Config{Bridge: testTapPrefix + "nbr"}}
	if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: other.Config.Bridge}, Mode: netlink.TUNTAP_MODE_TAP}); err != nil {
		t.Fatal(err)
	}
	if err := other.EnsureBridge(ctx); err == nil {
		t.Error("EnsureBridge over an existing tap returned nil")
	}
	if err := other.ReleaseBridgeIfUnused(ctx); err == nil {
		t.Error("ReleaseBridgeIfUnused on a tap returned nil")
	}
	if linkAbsent(other.Config.Bridge) {
		t.Error("ReleaseBridgeIfUnused removed a link that is not a bridge")
	}
}

func TestConcurrentTaps(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"many")
	// Each goroutine runs several start/stop rounds so that creations and
	// releases interleave many times.
	const n, rounds = 20, 5
	var wg sync.WaitGroup
	errs := make(chan error, n*rounds*4)
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("%s%02d", testTapPrefix, i)
			for range rounds {
				if err := m.CreateTap(ctx, name); err != nil {
					errs <- err
					return
				}
				// Other goroutines are releasing the bridge meanwhile; ours
				// must survive because our tap is attached to it.
				tap, err := netlink.LinkByName(name)
				if err != nil {
					errs <- fmt.Errorf("tap %s gone after CreateTap: %w", name, err)
				} else if br, err := netlink.LinkByName(m.Config.Bridge); err != nil {
					errs <- fmt.Errorf("bridge gone while %s attached: %w", name, err)
				} else if tap.Attrs().MasterIndex != br.Attrs().Index {
					errs <- fmt.Errorf("tap %s master %d, want bridge %d", name, tap.Attrs().MasterIndex, br.Attrs().Index)
				}
				if err := m.DeleteTap(ctx, name); err != nil {
					errs <- err
				}
				if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, testTapPrefix) || n == m.Config.Bridge {
			t.Errorf("link %s left behind", n)
		}
	}
}

// With egress NAT on, the bridge comes with banger's nftables table and
// IPv4 forwarding, and the table goes with the bridge. Rules only, inside the
// private namespace (it has no uplink); no traffic is sent.
func TestEgressNATRuleset(t *testing.T) {
	requireNetNS(t)
	if _, err := system.LookPath("nft"); err != nil {
		t.Skip("nft (nftables) not installed")
	}
	name := testBridgePrefix + "nat"
	m := &Manager{Config: Config{Bridge: name, Subnet: netip.MustParsePrefix("10.250.0.0/24"), EgressNAT: true}}
	ctx := context.Background()
	if err := m.CreateTap(ctx, testTapPrefix+"nat"); err != nil {
		t.Fatal(err)
	}
	out, err := system.ExecRunner{}.Run(ctx, "nft", "list", "table", "ip", natTable(name))
	if err != nil {
		t.Fatalf("nat table missing: %v", err)
	}
	for _, want := range []string{"ip saddr 10.250.0.0/24 oifname != \"" + name + "\" masquerade", "iifname \"" + name + "\" accept"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("ip_forward = %q", b)
	}
	// A second tap does not duplicate the rules.
	m.CreateTap(ctx, testTapPrefix+"nat2")
	again, _ := system.ExecRunner{}.Run(ctx, "nft", "list", "table", "ip", natTable(name))
	if strings.Count(string(again), "masquerade") != 1 {
		t.Errorf("rules duplicated:\n%s", again)
	}
	m.DeleteTap(ctx, testTapPrefix+"nat")
	m.DeleteTap(ctx, testTapPrefix+"nat2")
	if err := m.ReleaseBridgeIfUnused(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := (system.ExecRunner{}).Run(ctx, "nft", "list", "table", "ip", natTable(name)); err == nil {
		t.Error("nat table outlived the bridge")
	}
}

// The exact nft commands, through a recording runner (no privileges).
func TestNATRules(t *testing.T) {
	cfg := Config{Bridge: "banger0", Subnet: netip.MustParsePrefix("172.30.0.0/24")}
	got := natRules(cfg)
	if got[0][3] != "banger_banger0" || strings.Join(got[2], " ") != "add rule ip banger_banger0 postrouting ip saddr 172.30.0.0/24 oifname != banger0 masquerade" {
		t.Fatalf("rules: %q", got)
	}
	rec := &recRunner{}
	dir := t.TempDir()
	old := ipForwardPath
	ipForwardPath = dir + "/ip_forward"
	defer func() { ipForwardPath = old }()
	m := &Manager{Config: cfg, Runner: rec}
	if err := m.ensureNATLocked(context.Background(), cfg.WithDefaults()); err != nil {
		t.Fatal(err)
	}
	if len(rec.calls) != 1+len(got) || rec.calls[0] != "nft delete table ip banger_banger0" {
		t.Fatalf("calls: %q", rec.calls)
	}
	if b, _ := os.ReadFile(ipForwardPath); string(b) != "1\n" {
		t.Fatalf("ip_forward: %q", b)
	}
	// A failing rule removes the half-made table.
	rec.calls, rec.failOn = nil, "masquerade"
	if err := m.ensureNATLocked(context.Background(), cfg.WithDefaults()); err == nil {
		t.Fatal("failure not reported")
	}
	if last := rec.calls[len(rec.calls)-1]; last != "nft delete table ip banger_banger0" {
		t.Fatalf("no cleanup after failure: %q", rec.calls)
	}
}

type recRunner struct {
	calls  []string
	failOn string
}

func (r *recRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	c := name + " " + strings.Join(args, " ")
	r.calls = append(r.calls, c)
	if r.failOn != "" && strings.Contains(c, r.failOn) {
		return nil, errors.New("boom")
	}
	if strings.Contains(c, "delete table") {
		return nil, &system.CommandError{Argv: append([]string{name}, args...), ExitCode: 1, Stderr: "Error: No such file or directory", Kind: system.ErrNotFound}
	}
	return nil, nil
}

func TestCanceledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m := &Manager{Config: Config{Bridge: testBridgePrefix + "ctx"}}
	if err := m.CreateTap(ctx, testTapPrefix+"ctx"); !errors.Is(err, context.Canceled) {
		t.Errorf("CreateTap(canceled) = %v, want context.Canceled", err)
	}
	if err := m.DeleteTap(ctx, testTapPrefix+"ctx"); !errors.Is(err, context.Canceled) {
		t.Errorf("DeleteTap(canceled) = %v, want context.Canceled", err)
	}
	if _, err := m.ListTaps(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("ListTaps(canceled) = %v, want context.Canceled", err)
	}
}

func TestCreateTapRejectsBadNames(t *testing.T) {
	m := &Manager{Config: Config{Bridge: testBridgePrefix + "bad"}}
	for _, name := range []string{"", "bgr0123456789abcdef", "bgr/x", "bgr%d", "bgr x"} {
		if err := m.CreateTap(context.Background(), name); err == nil {
			t.Errorf("CreateTap(%q) = nil, want an error", name)
		}
	}
}

// An address cached as reachable at an old MAC (a deleted VM's) is replaced
// by the new VM's MAC, left stale so the kernel confirms it on use.
func TestSetNeighborReplacesAStaleMAC(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, testBridgePrefix+"nb")
	if err := m.EnsureBridge(ctx); err != nil {
		t.Fatal(err)
	}
	br := mustLink(t, m.Config.Bridge)
	ip := net.ParseIP("10.77.0.9").To4()
	old, _ := net.ParseMAC("02:00:00:00:00:01")
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: br.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE, IP: ip, HardwareAddr: old}); err != nil {
		t.Fatalf("seed the old entry: %v", err)
	}
	if err := m.SetNeighbor(ctx, "10.77.0.9", "02:00:00:00:00:02"); err != nil {
		t.Fatalf("SetNeighbor: %v", err)
	}
	neighs, err := netlink.NeighList(br.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range neighs {
		if n.IP.Equal(ip) {
			found = true
			if n.HardwareAddr.String() != "02:00:00:00:00:02" || n.State != netlink.NUD_STALE {
				t.Errorf("entry for %s = %s state %#x, want 02:00:00:00:00:02 stale", ip, n.HardwareAddr, n.State)
			}
		}
	}
	if !found {
		t.Errorf("no neighbour entry for %s", ip)
	}
	for _, bad := range [][2]string{{"nope", "02:00:00:00:00:02"}, {"10.77.0.9", "nope"}, {"fd00::1", "02:00:00:00:00:02"}} {
		if err := m.SetNeighbor(ctx, bad[0], bad[1]); err == nil {
			t.Errorf("SetNeighbor(%q, %q) = nil, want an error", bad[0], bad[1])
		}
	}
}
