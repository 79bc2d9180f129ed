package policy

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
)

// render writes a ruleset as nft-like text: one block per table and chain
// that has rules, in the order of rs.chains (base chains first).
func render(cfg Config, rs ruleset, header string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n", header)
	order := append(baseChains(), rs.chains...)
	for _, fam := range []nftables.TableFamily{famBridge, famInet} {
		var tb strings.Builder
		seen := map[string]bool{}
		for _, c := range order {
			if c.family != fam || seen[c.name] {
				continue
			}
			seen[c.name] = true
			var lines []string
			for _, r := range rs.rules {
				if r.family == fam && r.chain == c.name {
					lines = append(lines, r.text)
				}
			}
			owned := false
			for _, oc := range rs.chains {
				owned = owned || (oc.family == fam && oc.name == c.name)
			}
			if len(lines) == 0 && !owned {
				continue
			}
			fmt.Fprintf(&tb, "\tchain %s {\n", c.name)
			if c.isBase() {
				// Both priorities are what nft calls "filter" in their family.
				fmt.Fprintf(&tb, "\t\ttype filter hook %s priority filter; policy accept;\n", hookName(*c.hook))
			}
			for _, l := range lines {
				fmt.Fprintf(&tb, "\t\t%s\n", l)
			}
			tb.WriteString("\t}\n")
		}
		if tb.Len() > 0 {
			fmt.Fprintf(&b, "table %s %s {\n%s}\n", famName(fam), cfg.Table, tb.String())
		}
	}
	return b.String()
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	}
	return fmt.Sprintf("%d", h)
}
