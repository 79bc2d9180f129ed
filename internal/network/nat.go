package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/banger-dev/banger/internal/system"
)

// Runner runs a host tool (system.ExecRunner in production).
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// natTable names banger's nftables table for a bridge, so each bridge's
// rules come and go with it and never touch anyone else's.
func natTable(bridge string) string { return "banger_" + strings.ReplaceAll(bridge, "-", "_") }

// natRules are the nft commands that give the guest subnet egress through
// the host: masquerade what leaves by any interface but the bridge, and let
// the bridge's traffic (and its replies) be forwarded.
func natRules(cfg Config) [][]string {
	t := natTable(cfg.Bridge)
	return [][]string{
		{"add", "table", "ip", t},
		{"add", "chain", "ip", t, "postrouting", "{ type nat hook postrouting priority srcnat; policy accept; }"},
		{"add", "rule", "ip", t, "postrouting", "ip", "saddr", cfg.Subnet.String(), "oifname", "!=", cfg.Bridge, "masquerade"},
		{"add", "chain", "ip", t, "forward", "{ type filter hook forward priority filter; policy accept; }"},
		{"add", "rule", "ip", t, "forward", "iifname", cfg.Bridge, "accept"},
		{"add", "rule", "ip", t, "forward", "oifname", cfg.Bridge, "ct", "state", "established,related", "accept"},
	}
}

// ipForwardPath is a variable so tests can point it at a file.
var ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

func (m *Manager) runner() Runner {
	if m.Runner != nil {
		return m.Runner
	}
	return system.ExecRunner{Logger: m.Logger}
}

// ensureNATLocked (re)creates the bridge's NAT table and turns on IPv4
// forwarding. The table is replaced whole, so a retry never duplicates rules.
func (m *Manager) ensureNATLocked(ctx context.Context, cfg Config) error {
	r := m.runner()
	if err := m.removeNATLocked(ctx, cfg); err != nil {
		return err
	}
	for _, args := range natRules(cfg) {
		if _, err := r.Run(ctx, "nft", args...); err != nil {
			m.removeNATLocked(context.WithoutCancel(ctx), cfg)
			return fmt.Errorf("egress nat for %s: %w", cfg.Bridge, err)
		}
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		m.removeNATLocked(context.WithoutCancel(ctx), cfg)
		return fmt.Errorf("egress nat for %s: enabling ip forwarding: %w", cfg.Bridge, err)
	}
	m.log().Info("egress nat on", "bridge", cfg.Bridge, "subnet", cfg.Subnet)
	return nil
}

// removeNATLocked deletes the bridge's NAT table; absent is success. IPv4
// forwarding is left as it is: other software may rely on it.
func (m *Manager) removeNATLocked(ctx context.Context, cfg Config) error {
	_, err := m.runner().Run(ctx, "nft", "delete", "table", "ip", natTable(cfg.Bridge))
	if err != nil && !errors.Is(err, system.ErrNotFound) {
		return fmt.Errorf("removing egress nat of %s: %w", cfg.Bridge, err)
	}
	return nil
}
