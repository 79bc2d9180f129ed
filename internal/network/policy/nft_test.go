package policy

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/system"
)

// As root, the whole test binary re-runs in a private network namespace
// (system.ReexecInNewNetNS), so no rule, link or packet of these tests
// reaches the host's own network. The traffic test makes further
// namespaces inside that one.
func TestMain(m *testing.M) {
	code := system.ReexecInNewNetNS(m)
	if code == 0 && system.InPrivateNetNS() {
		if left := leftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "left behind in the test's network namespace: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

// leftovers are the tables and links (other than lo) a test did not remove.
func leftovers() []string {
	var left []string
	conn, err := nftables.New()
	if err != nil {
		return []string{err.Error()}
	}
	tables, err := conn.ListTables()
	if err != nil {
		return []string{err.Error()}
	}
	for _, t := range tables {
		left = append(left, "table "+famName(t.Family)+" "+t.Name)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return append(left, err.Error())
	}
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			left = append(left, "link "+l.Attrs().Name)
		}
	}
	return left
}

// requireNetNS skips unless the test runs as root inside the private
// namespace: nothing below may touch the host's nftables.
func requireNetNS(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (writes nftables rules in a private network namespace)")
	}
	if !system.InPrivateNetNS() {
		t.Skip("not in the private network namespace TestMain makes; refusing to touch the host's nftables")
	}
}

// newTestManager returns a Manager on its own tables, deleted whatever the
// test's outcome.
func newTestManager(t *testing.T, table string) *Manager {
	t.Helper()
	m := &Manager{Config: Config{Table: table, Bridge: "bgtestbr"}}
	t.Cleanup(func() {
		if err := m.Reset(context.Background()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return m
}

// liveRule is a rule as read back, in a form tests compare.
type liveRule struct {
	family nftables.TableFamily
	chain  string
	tag    string
	exprs  string // hex of the netlink encoding
}

func (r liveRule) String() string {
	return fmt.Sprintf("%s %s [%s] %s", famName(r.family), r.chain, r.tag, r.exprs)
}

func encodeExprs(fam nftables.TableFamily, es []expr.Any) string {
	var b strings.Builder
	for _, e := range es {
		data, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return "marshal error: " + err.Error()
		}
		b.WriteString(hex.EncodeToString(data) + ";")
	}
	return b.String()
}

// snapshot is every rule and chain of the test's tables, sorted, without
// handles: two snapshots are equal when the kernel holds the same ruleset.
func snapshot(t *testing.T, table string) (rules []liveRule, chains []string) {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	st, err := readTables(conn, table)
	if err != nil {
		t.Fatal(err)
	}
	for fam, lt := range st.tables {
		if lt == nil {
			continue
		}
		for _, lc := range lt.chains {
			chains = append(chains, famName(fam)+" "+lc.chain.Name)
			for _, r := range lc.rules {
				tag, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				rules = append(rules, liveRule{fam, lc.chain.Name, tag, encodeExprs(fam, r.Exprs)})
			}
		}
	}
	slices.SortFunc(rules, func(a, b liveRule) int { return strings.Compare(a.String(), b.String()) })
	slices.Sort(chains)
	return rules, chains
}

// modelRules is what Apply is meant to write for p, in snapshot form.
func modelRules(cfg Config, p VMPolicy) []liveRule {
	np, err := p.normalize(cfg.WithDefaults())
	if err != nil {
		panic(err)
	}
	var out []liveRule
	for _, r := range vmRuleset(cfg.WithDefaults(), np).rules {
		out = append(out, liveRule{r.family, r.chain, r.tag, encodeExprs(r.family, r.exprs)})
	}
	return out
}

// taggedRules returns the live rules tagged with the VM's id.
func taggedRules(rules []liveRule, id string) []liveRule {
	var out []liveRule
	for _, r := range rules {
		if r.tag == vmTag(id) {
			out = append(out, r)
		}
	}
	return out
}

// assertInstalled checks that the kernel holds exactly the model's rules
// for p: what Render shows is what is installed.
func assertInstalled(t *testing.T, m *Manager, p VMPolicy) {
	t.Helper()
	rules, _ := snapshot(t, m.Config.Table)
	got := taggedRules(rules, p.VMID)
	want := modelRules(m.Config, p)
	slices.SortFunc(want, func(a, b liveRule) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(got, want) {
		t.Errorf("vm %s: kernel rules differ from the model\n got: %v\nwant: %v", p.VMID, got, want)
	}
}

func mustList(t *testing.T, m *Manager) []string {
	t.Helper()
	ids, err := m.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestApplyRemoveIdempotent(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, "bgtest_idem")
	if err := m.Check(ctx); err != nil {
		t.Fatalf("Check with no tables: %v", err)
	}
	if ids := mustList(t, m); len(ids) != 0 {
		t.Fatalf("List before any Apply = %v", ids)
	}
	a, b := testPolicy(idA, "172.30.0.2"), testPolicy(idB, "172.30.0.3")
	b.Isolated = true
	b.AllowHostPorts = []uint16{8080}
	b.EgressDeny = prefixes("203.0.113.0/24")

	if err := m.Apply(ctx, a); err != nil {
		t.Fatalf("Apply a: %v", err)
	}
	once, onceChains := snapshot(t, m.Config.Table)
	if err := m.Apply(ctx, a); err != nil {
		t.Fatalf("Apply a again: %v", err)
	}
	twice, twiceChains := snapshot(t, m.Config.Table)
	if !slices.Equal(once, twice) || !slices.Equal(onceChains, twiceChains) {
		t.Errorf("second Apply changed the ruleset\nonce:  %v\ntwice: %v", once, twice)
	}
	// The base rules read back exactly as written, so Check passes.
	if err := m.Check(ctx); err != nil {
		t.Fatalf("Check after Apply: %v", err)
	}
	if err := m.Apply(ctx, b); err != nil {
		t.Fatalf("Apply b: %v", err)
	}
	assertInstalled(t, m, a)
	assertInstalled(t, m, b)
	if ids := mustList(t, m); !slices.Equal(ids, []string{idA, idB}) {
		t.Errorf("List = %v, want [a b]", ids)
	}
	_, chains := snapshot(t, m.Config.Table)
	for _, want := range []string{"bridge vm_" + idA, "bridge vm_" + idB, "inet vm_" + idB} {
		if !slices.Contains(chains, want) {
			t.Errorf("chain %s missing from %v", want, chains)
		}
	}
	if slices.Contains(chains, "inet vm_"+idA) {
		t.Errorf("vm a has no egress lists but got an inet chain: %v", chains)
	}

	// Changing a policy replaces it: b loses isolation and its egress chain.
	b2 := b
	b2.Isolated, b2.EgressDeny, b2.AllowHostPorts = false, nil, nil
	if err := m.Apply(ctx, b2); err != nil {
		t.Fatalf("Apply b2: %v", err)
	}
	assertInstalled(t, m, b2)
	if _, chains := snapshot(t, m.Config.Table); slices.Contains(chains, "inet vm_"+idB) {
		t.Errorf("inet vm_%s left after its egress lists went: %v", idB, chains)
	}
	if err := m.Apply(ctx, b); err != nil {
		t.Fatalf("Apply b back: %v", err)
	}
	assertInstalled(t, m, b)

	// Remove a (twice): b's rules stay exactly.
	beforeB := taggedRules(liveRules(t, m), idB)
	for i := range 2 {
		if err := m.Remove(ctx, idA); err != nil {
			t.Fatalf("Remove a #%d: %v", i+1, err)
		}
	}
	rules, chains := snapshot(t, m.Config.Table)
	if left := taggedRules(rules, idA); len(left) != 0 {
		t.Errorf("rules of a left after Remove: %v", left)
	}
	if slices.Contains(chains, "bridge vm_"+idA) {
		t.Errorf("chain vm_%s left after Remove", idA)
	}
	if after := taggedRules(rules, idB); !slices.Equal(after, beforeB) {
		t.Errorf("Remove a changed b's rules\nbefore: %v\nafter:  %v", beforeB, after)
	}
	assertInstalled(t, m, b)
	if ids := mustList(t, m); !slices.Equal(ids, []string{idB}) {
		t.Errorf("List after Remove a = %v, want [b]", ids)
	}
	if err := m.Check(ctx); err != nil {
		t.Errorf("Check after Remove a: %v", err)
	}

	// The last VM takes the tables with it; removing again is fine.
	for i := range 2 {
		if err := m.Remove(ctx, idB); err != nil {
			t.Fatalf("Remove b #%d: %v", i+1, err)
		}
	}
	if rules, chains := snapshot(t, m.Config.Table); len(rules)+len(chains) != 0 {
		t.Errorf("tables not removed with the last VM: %v %v", chains, rules)
	}
	if err := m.Check(ctx); err != nil {
		t.Errorf("Check after everything removed: %v", err)
	}
}

func liveRules(t *testing.T, m *Manager) []liveRule {
	t.Helper()
	rules, _ := snapshot(t, m.Config.Table)
	return rules
}

// addForeignRule adds "tcp dport 22 accept" to inet <table> input without
// banger's tag, as another tool would.
func addForeignRule(t *testing.T, table string) {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: table, Family: famInet}
	b := newBuilder(famInet).dport(6, 22).accept()
	conn.AddRule(&nftables.Rule{Table: tb, Chain: &nftables.Chain{Name: chainInput, Table: tb}, Exprs: b.exprs})
	if err := conn.Flush(); err != nil {
		t.Fatalf("add foreign rule: %v", err)
	}
}

func TestCheckDetectsForeignRule(t *testing.T) {
	requireNetNS(t)
	ctx := context.Background()
	m := newTestManager(t, "bgtest_drift")
	a, b := testPolicy(idA, "172.30.0.2"), testPolicy(idB, "172.30.0.3")
	if err := m.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	addForeignRule(t, m.Config.Table)

	err := m.Check(ctx)
	var tce *TableChangedError
	if !errors.As(err, &tce) || !errors.Is(err, ErrTableChanged) {
		t.Fatalf("Check after a foreign rule = %v, want a TableChangedError", err)
	}
	if len(tce.Diffs) != 1 || !strings.Contains(tce.Diffs[0], "chain inet bgtest_drift input: rule handle") || !strings.Contains(tce.Diffs[0], "not made by banger") {
		t.Errorf("diffs = %q, want one naming the foreign rule in inet input", tce.Diffs)
	}
	if !strings.Contains(err.Error(), "nft delete table inet bgtest_drift") {
		t.Errorf("error does not say how to fix: %v", err)
	}

	// Apply refuses before making anything.
	before, beforeChains := snapshot(t, m.Config.Table)
	if err := m.Apply(ctx, b); !errors.Is(err, ErrTableChanged) || !strings.Contains(err.Error(), "vm "+idB) {
		t.Fatalf("Apply over a changed table = %v, want ErrTableChanged naming vm b", err)
	}
	after, afterChains := snapshot(t, m.Config.Table)
	if !slices.Equal(before, after) || !slices.Equal(beforeChains, afterChains) {
		t.Errorf("refused Apply changed the ruleset")
	}
	if ids := mustList(t, m); !slices.Equal(ids, []string{idA}) {
		t.Errorf("List = %v, want only a", ids)
	}

	// Remove still takes the VM's own rules, but leaves the tables (and the
	// foreign rule) for the operator.
	if err := m.Remove(ctx, idA); err != nil {
		t.Fatalf("Remove over a changed table: %v", err)
	}
	if ids := mustList(t, m); len(ids) != 0 {
		t.Errorf("List after Remove = %v", ids)
	}
	if rules, _ := snapshot(t, m.Config.Table); len(rules) == 0 {
		t.Error("Remove deleted a table holding another tool's rule")
	}
	if err := m.Check(ctx); !errors.Is(err, ErrTableChanged) {
		t.Errorf("Check after Remove = %v, want the foreign rule still reported", err)
	}
	// Reset is the fix: afterwards Apply works.
	if err := m.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Check(ctx); err != nil {
		t.Errorf("Check after Reset: %v", err)
	}
	if err := m.Apply(ctx, b); err != nil {
		t.Errorf("Apply after Reset: %v", err)
	}
}

// Changes made with the nft tool: a chain of its own, a base chain's
// policy, and a dormant table are each named by Check.
func TestCheckDetectsNFTChanges(t *testing.T) {
	requireNetNS(t)
	if _, err := system.LookPath("nft"); err != nil {
		t.Skip("nft (nftables) not installed")
	}
	ctx := context.Background()
	r := system.ExecRunner{}
	for _, tc := range []struct {
		name string
		nft  []string
		want string
	}{
		{"chain", []string{"add", "chain", "inet", "bgtest_nft", "sneaky"}, "chain inet bgtest_nft sneaky not made by banger"},
		{"policy", []string{"add", "chain", "bridge", "bgtest_nft", "forward", "{ type filter hook forward priority -200; policy drop; }"}, "chain bridge bgtest_nft forward: policy is not accept"},
		{"dormant", []string{"add", "table", "inet", "bgtest_nft", "{ flags dormant; }"}, "table inet bgtest_nft has flags 0x1"},
		{"set", []string{"add", "set", "inet", "bgtest_nft", "s", "{ type ipv4_addr; }"}, "table inet bgtest_nft: set s not made by banger"},
		{"rule in vm chain", []string{"add", "rule", "bridge", "bgtest_nft", "vm_" + idA, "accept"}, "chain bridge bgtest_nft vm_" + idA + ": rule handle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestManager(t, "bgtest_nft")
			if err := m.Apply(ctx, testPolicy(idA, "172.30.0.2")); err != nil {
				t.Fatal(err)
			}
			if out, err := r.Run(ctx, "nft", tc.nft...); err != nil {
				t.Fatalf("nft %v: %v %s", tc.nft, err, out)
			}
			err := m.Check(ctx)
			if !errors.Is(err, ErrTableChanged) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check = %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}
