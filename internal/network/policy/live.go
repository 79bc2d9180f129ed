package policy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// liveTables is what the kernel holds under banger's table name, read in
// one go before a change is decided.
type liveTables struct {
	name   string
	tables map[nftables.TableFamily]*liveTable // nil entry: table absent
}

type liveTable struct {
	table  *nftables.Table
	chains []*liveChain // as the kernel lists them
	sets   []string     // named sets
	nsets  int          // all sets, anonymous ones included
}

type liveChain struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

// readTables reads banger's two tables, their chains, rules and sets.
func readTables(conn *nftables.Conn, name string) (*liveTables, error) {
	st := &liveTables{name: name, tables: map[nftables.TableFamily]*liveTable{famBridge: nil, famInet: nil}}
	for fam := range st.tables {
		lt, err := readTable(conn, fam, name)
		if err != nil {
			return nil, err
		}
		st.tables[fam] = lt
	}
	return st, nil
}

func readTable(conn *nftables.Conn, fam nftables.TableFamily, name string) (*liveTable, error) {
	ts, err := conn.ListTablesOfFamily(fam)
	if err != nil {
		return nil, fmt.Errorf("list %s tables: %w", famName(fam), err)
	}
	i := slices.IndexFunc(ts, func(t *nftables.Table) bool { return t.Name == name })
	if i < 0 {
		return nil, nil
	}
	lt := &liveTable{table: ts[i]}
	// nftables v0.3.0 decodes a table's use and flags in host byte order;
	// the kernel sends them big-endian.
	lt.table.Use, lt.table.Flags = fromWire(lt.table.Use), fromWire(lt.table.Flags)
	chains, err := conn.ListChainsOfTableFamily(fam)
	if err != nil {
		return nil, fmt.Errorf("list chains of table %s %s: %w", famName(fam), name, err)
	}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != name {
			continue
		}
		c.Table = lt.table
		rules, err := conn.GetRules(lt.table, c)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s %s %s: %w", famName(fam), name, c.Name, err)
		}
		lt.chains = append(lt.chains, &liveChain{chain: c, rules: rules})
	}
	sets, err := conn.GetSets(lt.table)
	if err != nil {
		return nil, fmt.Errorf("list sets of table %s %s: %w", famName(fam), name, err)
	}
	lt.nsets = len(sets)
	for _, s := range sets {
		if !s.Anonymous {
			lt.sets = append(lt.sets, s.Name)
		}
	}
	return lt, nil
}

func fromWire(v uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return binary.BigEndian.Uint32(b[:])
}

func famName(f nftables.TableFamily) string {
	switch f {
	case famInet:
		return "inet"
	case famBridge:
		return "bridge"
	}
	return fmt.Sprintf("family %d", f)
}

// exists reports whether both tables are there.
func (st *liveTables) exists() bool {
	return st.tables[famBridge] != nil && st.tables[famInet] != nil
}

func (lt *liveTable) chain(name string) *liveChain {
	for _, c := range lt.chains {
		if c.chain.Name == name {
			return c
		}
	}
	return nil
}

func ruleTag(r *nftables.Rule) (string, bool) {
	return userdata.GetString(r.UserData, userdata.TypeComment)
}

// vmOfChain returns the VM id a chain is named for.
func vmOfChain(name string) (string, bool) {
	id, ok := strings.CutPrefix(name, vmChainPrefix)
	return id, ok && validName(id, 64)
}

// vmOfRule returns the VM id a rule is tagged with.
func vmOfRule(r *nftables.Rule) (string, bool) {
	tag, _ := ruleTag(r)
	id, ok := strings.CutPrefix(tag, vmTagPrefix)
	return id, ok && validName(id, 64)
}

// vmIDs are the VMs with a tagged rule or a vm_ chain, sorted.
func (st *liveTables) vmIDs() []string {
	var ids []string
	for _, lt := range st.tables {
		if lt == nil {
			continue
		}
		for _, c := range lt.chains {
			if id, ok := vmOfChain(c.chain.Name); ok {
				ids = append(ids, id)
			}
			for _, r := range c.rules {
				if id, ok := vmOfRule(r); ok {
					ids = append(ids, id)
				}
			}
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// diff lists how the tables differ from what banger makes for cfg. Absent
// tables are no difference: nothing has been made yet.
func (st *liveTables) diff(cfg Config) []string {
	br, in := st.tables[famBridge], st.tables[famInet]
	if br == nil && in == nil {
		return nil
	}
	var diffs []string
	for _, fam := range []nftables.TableFamily{famBridge, famInet} {
		if st.tables[fam] == nil {
			diffs = append(diffs, fmt.Sprintf("table %s %s is missing", famName(fam), st.name))
		}
	}
	base := baseRuleset(cfg)
	for _, fam := range []nftables.TableFamily{famBridge, famInet} {
		if lt := st.tables[fam]; lt != nil {
			diffs = append(diffs, lt.diff(fam, base)...)
		}
	}
	return diffs
}

func (lt *liveTable) diff(fam nftables.TableFamily, base ruleset) []string {
	where := fmt.Sprintf("table %s %s", famName(fam), lt.table.Name)
	var diffs []string
	if lt.table.Flags != 0 {
		diffs = append(diffs, fmt.Sprintf("%s has flags %#x (dormant or owned), banger sets none", where, lt.table.Flags))
	}
	for _, s := range lt.sets {
		diffs = append(diffs, fmt.Sprintf("%s: set %s not made by banger", where, s))
	}
	// The kernel counts a table's chains, sets, stateful objects and
	// flowtables in its use; banger makes only chains.
	if extra := int(lt.table.Use) - len(lt.chains) - lt.nsets; extra > 0 {
		diffs = append(diffs, fmt.Sprintf("%s: %d stateful objects or flowtables not made by banger", where, extra))
	}
	specs := map[string]chainSpec{}
	for _, c := range base.chains {
		if c.family == fam {
			specs[c.name] = c
		}
	}
	for _, lc := range lt.chains {
		name := lc.chain.Name
		cwhere := fmt.Sprintf("chain %s %s %s", famName(fam), lt.table.Name, name)
		spec, isBase := specs[name]
		_, isVM := vmOfChain(name)
		switch {
		case isBase:
			if d := chainDiff(lc.chain, spec); d != "" {
				diffs = append(diffs, cwhere+": "+d)
			}
		case isVM:
			if lc.chain.Hooknum != nil {
				diffs = append(diffs, cwhere+": hooked into the kernel, banger's vm chains are not")
			}
		default:
			diffs = append(diffs, cwhere+" not made by banger")
			continue
		}
		diffs = append(diffs, rulesDiff(cwhere, fam, lc, isVM, base)...)
	}
	for _, c := range base.chains {
		if c.family == fam && lt.chain(c.name) == nil {
			diffs = append(diffs, fmt.Sprintf("chain %s %s %s is missing", famName(fam), lt.table.Name, c.name))
		}
	}
	return diffs
}

func chainDiff(c *nftables.Chain, spec chainSpec) string {
	if !spec.isBase() {
		if c.Hooknum != nil {
			return "hooked into the kernel, banger made it a regular chain"
		}
		return ""
	}
	switch {
	case c.Hooknum == nil || c.Priority == nil:
		return "not a base chain"
	case *c.Hooknum != *spec.hook:
		return fmt.Sprintf("hook %d, banger made %d", *c.Hooknum, *spec.hook)
	case *c.Priority != spec.prio:
		return fmt.Sprintf("priority %d, banger made %d", *c.Priority, spec.prio)
	case c.Type != nftables.ChainTypeFilter:
		return fmt.Sprintf("type %s, banger made filter", c.Type)
	case c.Policy == nil || *c.Policy != nftables.ChainPolicyAccept:
		return "policy is not accept"
	}
	return ""
}

// rulesDiff checks a chain's rules: base rules exactly as banger writes
// them and in order; every other rule tagged as a VM's. A rule without
// banger's tag is another tool's.
func rulesDiff(where string, fam nftables.TableFamily, lc *liveChain, isVM bool, base ruleset) []string {
	var want []rule
	for _, r := range base.rules {
		if r.family == fam && r.chain == lc.chain.Name {
			want = append(want, r)
		}
	}
	var diffs []string
	var got []*nftables.Rule
	for _, r := range lc.rules {
		tag, _ := ruleTag(r)
		id, tagged := vmOfRule(r)
		switch {
		case tag == baseTag && !isVM:
			got = append(got, r)
		case tagged && (!isVM || lc.chain.Name == vmChainName(id)):
			// A VM's rule, in a shared chain or in its own.
		default:
			diffs = append(diffs, fmt.Sprintf("%s: rule handle %d not made by banger (%s)", where, r.Handle, describe(r, tag)))
		}
	}
	for i := 0; i < len(want) || i < len(got); i++ {
		switch {
		case i >= len(got):
			diffs = append(diffs, fmt.Sprintf("%s: rule %q is missing", where, want[i].text))
		case i >= len(want):
			diffs = append(diffs, fmt.Sprintf("%s: rule handle %d, tagged as a base rule, is not one of this configuration's", where, got[i].Handle))
		case !sameExprs(fam, want[i].exprs, got[i].Exprs):
			diffs = append(diffs, fmt.Sprintf("%s: rule handle %d differs from this configuration's base rule %q", where, got[i].Handle, want[i].text))
		}
	}
	return diffs
}

// describe names a foreign rule's expressions, enough to find it in
// `nft -a list`.
func describe(r *nftables.Rule, tag string) string {
	var names []string
	for _, e := range r.Exprs {
		n := fmt.Sprintf("%T", e)
		names = append(names, strings.ToLower(strings.TrimPrefix(n, "*expr.")))
	}
	s := strings.Join(names, " ")
	if tag != "" {
		s += fmt.Sprintf(", comment %q", tag)
	}
	return s
}

// sameExprs compares expressions by their netlink encoding, which is what
// the kernel was given and gave back.
func sameExprs(fam nftables.TableFamily, want, got []expr.Any) bool {
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		a, err1 := expr.Marshal(byte(fam), want[i])
		b, err2 := expr.Marshal(byte(fam), got[i])
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

// queueBase adds banger's tables, chains and base rules to the batch. The
// tables are created exclusively, so a concurrent creation fails the batch
// instead of doubling the rules.
func queueBase(conn *nftables.Conn, cfg Config) {
	tables := map[nftables.TableFamily]*nftables.Table{}
	for _, fam := range []nftables.TableFamily{famBridge, famInet} {
		tables[fam] = conn.CreateTable(&nftables.Table{Name: cfg.Table, Family: fam})
	}
	rs := baseRuleset(cfg)
	for _, c := range rs.chains {
		queueChain(conn, tables[c.family], c)
	}
	for _, r := range rs.rules {
		queueRule(conn, tables[r.family], r)
	}
}

func queueChain(conn *nftables.Conn, t *nftables.Table, c chainSpec) {
	ch := &nftables.Chain{Name: c.name, Table: t}
	if c.isBase() {
		accept := nftables.ChainPolicyAccept
		prio := c.prio
		ch.Hooknum, ch.Priority, ch.Type, ch.Policy = c.hook, &prio, nftables.ChainTypeFilter, &accept
	}
	conn.AddChain(ch)
}

func queueRule(conn *nftables.Conn, t *nftables.Table, r rule) {
	conn.AddRule(&nftables.Rule{
		Table:    t,
		Chain:    &nftables.Chain{Name: r.chain, Table: t},
		Exprs:    r.exprs,
		UserData: r.userData(),
	})
}

// queueRemoveVM adds to the batch the deletion of the VM's tagged rules and
// of its chains, except the chains in keep, which are flushed (the VM's new
// rules go back into them). Jumps are deleted before the chains they target.
func queueRemoveVM(conn *nftables.Conn, st *liveTables, id string, keep map[chainKey]bool) {
	for fam, lt := range st.tables {
		if lt == nil {
			continue
		}
		for _, lc := range lt.chains {
			if _, isVM := vmOfChain(lc.chain.Name); isVM {
				continue
			}
			for _, r := range lc.rules {
				if rid, ok := vmOfRule(r); ok && rid == id {
					// Handles come from the kernel and are never 0.
					_ = conn.DelRule(&nftables.Rule{Table: lt.table, Chain: lc.chain, Handle: r.Handle})
				}
			}
		}
		if lc := lt.chain(vmChainName(id)); lc != nil {
			if keep[chainKey{fam, lc.chain.Name}] {
				conn.FlushChain(lc.chain)
			} else {
				conn.DelChain(lc.chain)
			}
		}
	}
}

// queueVM adds the VM's chains (those not already there) and rules.
func queueVM(conn *nftables.Conn, cfg Config, st *liveTables, rs ruleset) {
	table := func(fam nftables.TableFamily) *nftables.Table {
		return &nftables.Table{Name: cfg.Table, Family: fam}
	}
	for _, c := range rs.chains {
		if lt := st.tables[c.family]; lt != nil && lt.chain(c.name) != nil {
			continue
		}
		queueChain(conn, table(c.family), c)
	}
	for _, r := range rs.rules {
		queueRule(conn, table(r.family), r)
	}
}
