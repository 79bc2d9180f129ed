// Package dns answers DNS queries for VM names (NAME.<zone>) from an in-memory
// table, so guests and the host can reach a VM by name. Names outside the zone
// are refused, or forwarded to an upstream resolver when one is configured.
//
// The table is a copy-on-write map behind an atomic pointer: queries never take
// a lock and never touch the store, and every change is visible to the next
// query, so a stopped VM stops resolving and a re-created one resolves to its
// new address at once.
package dns

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultZone is the zone used when New is given an empty one.
const DefaultZone = "banger.internal"

// recordTTL is the TTL of every answer and of negative answers (via the SOA).
// It is short because addresses change when VMs are stopped, renamed or
// re-created, and a resolver must not keep an old one for long.
const recordTTL = 1

// upstreamTimeout bounds one forwarded query; the client sees SERVFAIL after it.
const upstreamTimeout = 2 * time.Second

// Server is an authoritative DNS server for one zone, holding one address per
// VM name. The zero value is not usable; call New.
type Server struct {
	zone     string // lowercase, fully qualified: "banger.internal."
	upstream string // "host:port", "" = refuse names outside the zone
	logger   *slog.Logger

	table   atomic.Pointer[table]
	writeMu sync.Mutex // serialises copy-on-write updates of table

	// forwardSlots bounds concurrent forwarded queries from UDP listeners,
	// so a slow upstream cannot pile up goroutines.
	forwardSlots chan struct{}

	addrMu sync.Mutex
	addrs  []net.Addr
}

// table is one immutable version of the records; serial changes with every
// version and is published as the SOA serial.
type table struct {
	records map[string]netip.Addr // lowercase VM name -> address
	serial  uint32
}

// New returns a server for zone (DefaultZone when empty). Names outside the
// zone are forwarded to upstream ("host:port", or a bare IP meaning port 53),
// or refused when upstream is "". A nil logger discards logs.
func New(zone string, upstream string, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	zone = strings.ToLower(strings.Trim(zone, "."))
	if zone == "" {
		zone = DefaultZone
	}
	s := &Server{
		zone:         zone + ".",
		upstream:     normalizeUpstream(upstream),
		logger:       logger,
		forwardSlots: make(chan struct{}, 64),
	}
	s.table.Store(&table{records: map[string]netip.Addr{}, serial: 1})
	return s
}

func normalizeUpstream(upstream string) string {
	if upstream == "" {
		return ""
	}
	if ip, err := netip.ParseAddr(strings.Trim(upstream, "[]")); err == nil {
		return netip.AddrPortFrom(ip, 53).String()
	}
	return upstream
}

// FQDN returns the DNS name of VM name in zone, without the trailing dot:
// FQDN("web", "banger.internal") is "web.banger.internal". An empty zone means
// DefaultZone.
func FQDN(name, zone string) string {
	zone = strings.ToLower(strings.Trim(zone, "."))
	if zone == "" {
		zone = DefaultZone
	}
	return strings.ToLower(name) + "." + zone
}

// Set records that VM name (a single label, any case) has address ip, replacing
// any previous address. An invalid ip removes the name.
func (s *Server) Set(name string, ip netip.Addr) {
	if !ip.IsValid() {
		s.Remove(name)
		return
	}
	key := strings.ToLower(name)
	ip = ip.Unmap()
	s.update(func(m map[string]netip.Addr) { m[key] = ip })
}

// Remove stops name from resolving. Removing an unknown name is a no-op.
func (s *Server) Remove(name string) {
	key := strings.ToLower(name)
	if _, ok := s.table.Load().records[key]; !ok {
		return
	}
	s.update(func(m map[string]netip.Addr) { delete(m, key) })
}

// Replace swaps the whole table for records in one step, so a query sees
// either the old table or the new one. Used by the daemon on start-up and
// reconcile, where it knows the full set of running VMs.
func (s *Server) Replace(records map[string]netip.Addr) {
	next := make(map[string]netip.Addr, len(records))
	for name, ip := range records {
		if ip.IsValid() {
			next[strings.ToLower(name)] = ip.Unmap()
		}
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.table.Store(&table{records: next, serial: s.table.Load().serial + 1})
}

// update applies change to a copy of the current records and publishes it.
func (s *Server) update(change func(map[string]netip.Addr)) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	cur := s.table.Load()
	next := maps.Clone(cur.records)
	change(next)
	s.table.Store(&table{records: next, serial: cur.serial + 1})
}

// Lookup returns the address recorded for VM name (any case).
func (s *Server) Lookup(name string) (netip.Addr, bool) {
	ip, ok := s.table.Load().records[strings.ToLower(name)]
	return ip, ok
}

// Addrs returns the addresses the server listens on: for every address given
// to ListenAndServe, the UDP address followed by the TCP one.
func (s *Server) Addrs() []net.Addr {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return append([]net.Addr(nil), s.addrs...)
}

// ListenAndServe listens on UDP and TCP at each addr ("127.0.0.1:0" picks one
// port free for both protocols), returns once all are listening, and serves
// until ctx is done. On error nothing is left listening.
func (s *Server) ListenAndServe(ctx context.Context, addrs ...string) error {
	var opened []*listenerPair
	for _, addr := range addrs {
		p, err := listenPair(ctx, addr)
		if err != nil {
			for _, o := range opened {
				o.close()
			}
			return err
		}
		opened = append(opened, p)
	}
	s.addrMu.Lock()
	for _, p := range opened {
		s.addrs = append(s.addrs, p.udp.LocalAddr(), p.tcp.Addr())
	}
	s.addrMu.Unlock()
	for _, p := range opened {
		s.serve(ctx, p)
	}
	return nil
}
