package policy

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/network"
)

const (
	famInet   = nftables.TableFamilyINet
	famBridge = nftables.TableFamilyBridge
)

// Chain names. The base chains hook into the kernel; guest_host and
// guest_egress are jumped to for traffic from the bridge; vm_<id> chains
// hold one VM's ordered rules.
const (
	chainPrerouting  = "prerouting"
	chainInput       = "input"
	chainForward     = "forward"
	chainGuestHost   = "guest_host"
	chainGuestEgress = "guest_egress"
	vmChainPrefix    = "vm_"
)

// Rule comments. Base rules carry baseTag; a VM's rules carry vmTag(id),
// which is how Remove, List and Check tell whose a rule is.
const (
	baseTag     = "banger base"
	vmTagPrefix = "banger vm "
)

func vmTag(id string) string       { return vmTagPrefix + id }
func vmChainName(id string) string { return vmChainPrefix + id }

// bridgePriority is nft's "filter" priority in the bridge family.
const bridgePriority = -200

// chainSpec is a chain banger makes: a base chain when hook is set.
type chainSpec struct {
	family nftables.TableFamily
	name   string
	hook   *nftables.ChainHook
	prio   nftables.ChainPriority
}

func (c chainSpec) isBase() bool { return c.hook != nil }

type chainKey struct {
	family nftables.TableFamily
	name   string
}

// baseChains are the chains of banger's tables, in the order Render shows
// them. All chains are made before any rule, so jumps find their target.
func baseChains() []chainSpec {
	return []chainSpec{
		{famBridge, chainPrerouting, nftables.ChainHookPrerouting, bridgePriority},
		{famBridge, chainInput, nftables.ChainHookInput, bridgePriority},
		{famBridge, chainForward, nftables.ChainHookForward, bridgePriority},
		{famInet, chainInput, nftables.ChainHookInput, *nftables.ChainPriorityFilter},
		{famInet, chainGuestHost, nil, 0},
		{famInet, chainForward, nftables.ChainHookForward, *nftables.ChainPriorityFilter},
		{famInet, chainGuestEgress, nil, 0},
	}
}

// rule is one nftables rule with its text; text and exprs are built by the
// same calls, so what Render shows is what Apply writes.
type rule struct {
	family nftables.TableFamily
	chain  string
	tag    string
	text   string
	exprs  []expr.Any
}

func (r rule) userData() []byte { return userdata.AppendString(nil, userdata.TypeComment, r.tag) }

// ruleset is chains and rules, in the order they are made.
type ruleset struct {
	chains []chainSpec
	rules  []rule
}

func (rs ruleset) chainSet() map[chainKey]bool {
	s := make(map[chainKey]bool, len(rs.chains))
	for _, c := range rs.chains {
		s[chainKey{c.family, c.name}] = true
	}
	return s
}

// baseRuleset is what every VM shares.
//
// inet input: traffic from the bridge to the host is accepted only by
// guest_host (replies to what the host opened, DNS on the gateway, and each
// VM's allowed ports), then dropped. The inet hooks see the bridge, not the
// tap, as the input interface, so per-VM rules there key on the guest's
// source address, which the bridge table's anti-spoofing makes the VM's own.
//
// inet forward: what leaves the bridge by another interface goes through
// guest_egress (always-denied destinations, then the VM's lists). Packets
// bridged between two taps also pass the IP forward hook when
// br_netfilter's bridge-nf-call-iptables is on, with the bridge as both
// interfaces; "oifname != bridge" keeps them out of the egress rules.
// Without egress NAT guest_egress ends in a drop: nothing a guest sends
// leaves the host, whatever routes the host has.
//
// bridge input: a frame sent to the host for another address of the guest
// subnet (routed back onto the bridge, around isolation) is dropped.
func baseRuleset(cfg Config) ruleset {
	rs := ruleset{chains: baseChains()}
	add := func(fam nftables.TableFamily, chain string, b *builder) {
		rs.rules = append(rs.rules, b.rule(fam, chain, baseTag))
	}
	add(famBridge, chainInput, newBuilder(famBridge).iifPrefix(network.TapPrefix).etherType(etherIPv4).
		addr(fieldDaddr, cfg.Subnet, false).addr(fieldDaddr, netip.PrefixFrom(cfg.Gateway, 32), true).drop())

	add(famInet, chainGuestHost, newBuilder(famInet).ctEstablishedRelated().accept())
	add(famInet, chainGuestHost, newBuilder(famInet).addr(fieldDaddr, netip.PrefixFrom(cfg.Gateway, 32), false).dport(unix.IPPROTO_UDP, 53).accept())
	add(famInet, chainGuestHost, newBuilder(famInet).addr(fieldDaddr, netip.PrefixFrom(cfg.Gateway, 32), false).dport(unix.IPPROTO_TCP, 53).accept())
	add(famInet, chainInput, newBuilder(famInet).iifname(cfg.Bridge, false).jump(chainGuestHost))
	add(famInet, chainInput, newBuilder(famInet).iifname(cfg.Bridge, false).drop())

	for _, p := range AlwaysDenied {
		add(famInet, chainGuestEgress, newBuilder(famInet).addr(fieldDaddr, p, false).drop())
	}
	if !cfg.EgressNAT {
		add(famInet, chainGuestEgress, newBuilder(famInet).drop())
	}
	add(famInet, chainForward, newBuilder(famInet).iifname(cfg.Bridge, false).oifname(cfg.Bridge, true).jump(chainGuestEgress))
	return rs
}

// vmRuleset is one VM's chains and rules; p is normalized.
//
// bridge prerouting sends the tap's frames to vm_<id>, which accepts IPv4
// and ARP from the VM's own MAC and IP and drops everything else (other
// ethertypes, IPv6 and VLAN-tagged frames included). An isolated VM's frames
// never leave by another banger tap, and none reach its tap from one.
//
// A tap that has no policy is not filtered at L2. A catch-all on "bgr*"
// would also cut the taps of another daemon's bridge; scoping it to this
// bridge needs "meta ibrname", which kernels without NFT_BRIDGE_META (this
// development host's) refuse. So a VM's policy must be applied before its
// VMM starts.
func vmRuleset(cfg Config, p VMPolicy) ruleset {
	var rs ruleset
	tag := vmTag(p.VMID)
	vmChain := vmChainName(p.VMID)
	mac, _ := net.ParseMAC(p.MAC)
	ip32 := netip.PrefixFrom(p.IP, 32)
	add := func(fam nftables.TableFamily, chain string, b *builder) {
		rs.rules = append(rs.rules, b.rule(fam, chain, tag))
	}

	rs.chains = append(rs.chains, chainSpec{family: famBridge, name: vmChain})
	add(famBridge, chainPrerouting, newBuilder(famBridge).iifname(p.Tap, false).jump(vmChain))
	add(famBridge, vmChain, newBuilder(famBridge).etherSaddr(mac).etherType(etherIPv4).addr(fieldSaddr, ip32, false).accept())
	add(famBridge, vmChain, newBuilder(famBridge).etherSaddr(mac).etherType(etherARP).arpEthernetIPv4().arpSender(mac, p.IP).accept())
	add(famBridge, vmChain, newBuilder(famBridge).drop())
	if p.Isolated {
		add(famBridge, chainForward, newBuilder(famBridge).iifname(p.Tap, false).oifPrefix(network.TapPrefix).drop())
		add(famBridge, chainForward, newBuilder(famBridge).iifPrefix(network.TapPrefix).oifname(p.Tap, false).drop())
	}

	for _, port := range p.AllowHostPorts {
		add(famInet, chainGuestHost, newBuilder(famInet).addr(fieldSaddr, ip32, false).
			addr(fieldDaddr, netip.PrefixFrom(cfg.Gateway, 32), false).dport(unix.IPPROTO_TCP, port).accept())
	}

	if len(p.EgressAllow) > 0 || len(p.EgressDeny) > 0 {
		rs.chains = append(rs.chains, chainSpec{family: famInet, name: vmChain})
		add(famInet, chainGuestEgress, newBuilder(famInet).addr(fieldSaddr, ip32, false).jump(vmChain))
		for _, pr := range p.EgressDeny {
			add(famInet, vmChain, newBuilder(famInet).addr(fieldDaddr, pr, false).drop())
		}
		for _, pr := range p.EgressAllow {
			add(famInet, vmChain, newBuilder(famInet).addr(fieldDaddr, pr, false).accept())
		}
		if len(p.EgressAllow) > 0 {
			add(famInet, vmChain, newBuilder(famInet).drop())
		}
	}
	return rs
}

// builder accumulates a rule's match expressions and their nft text.
type builder struct {
	family nftables.TableFamily
	words  []string
	exprs  []expr.Any
}

func newBuilder(fam nftables.TableFamily) *builder { return &builder{family: fam} }

func (b *builder) add(text string, e ...expr.Any) *builder {
	if text != "" {
		b.words = append(b.words, text)
	}
	b.exprs = append(b.exprs, e...)
	return b
}

func (b *builder) rule(fam nftables.TableFamily, chain, tag string) rule {
	if fam != b.family {
		panic(fmt.Sprintf("policy: %v rule built for family %v", fam, b.family))
	}
	return rule{family: fam, chain: chain, tag: tag, text: strings.Join(b.words, " "), exprs: b.exprs}
}

const reg = 1 // NFT_REG_1: 16 bytes, enough for an IPv6 address

func cmp(op expr.CmpOp, data []byte) *expr.Cmp { return &expr.Cmp{Op: op, Register: reg, Data: data} }

func cmpOp(not bool) (expr.CmpOp, string) {
	if not {
		return expr.CmpOpNeq, "!= "
	}
	return expr.CmpOpEq, ""
}

// ifnameData is an interface name as the kernel compares it: NUL padded to
// IFNAMSIZ (as nft writes an exact name).
func ifnameData(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func (b *builder) ifname(key expr.MetaKey, word, name string, not bool) *builder {
	op, neg := cmpOp(not)
	return b.add(fmt.Sprintf("%s %s%q", word, neg, name), &expr.Meta{Key: key, Register: reg}, cmp(op, ifnameData(name)))
}

func (b *builder) iifname(name string, not bool) *builder {
	return b.ifname(expr.MetaKeyIIFNAME, "iifname", name, not)
}

func (b *builder) oifname(name string, not bool) *builder {
	return b.ifname(expr.MetaKeyOIFNAME, "oifname", name, not)
}

// iifPrefix matches interface names starting with prefix (nft's "name*"):
// the comparison covers the prefix's bytes only.
func (b *builder) iifPrefix(prefix string) *builder {
	return b.add(fmt.Sprintf("iifname %q", prefix+"*"), &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg}, cmp(expr.CmpOpEq, []byte(prefix)))
}

func (b *builder) oifPrefix(prefix string) *builder {
	return b.add(fmt.Sprintf("oifname %q", prefix+"*"), &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}, cmp(expr.CmpOpEq, []byte(prefix)))
}

const (
	etherIPv4 = 0x0800
	etherARP  = 0x0806
)

func (b *builder) etherSaddr(mac net.HardwareAddr) *builder {
	return b.add("ether saddr "+mac.String(),
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6}, cmp(expr.CmpOpEq, mac))
}

func (b *builder) etherType(t uint16) *builder {
	// No text: like nft, Render leaves the ethertype implied by the ip or
	// arp match that follows.
	return b.add("",
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2}, cmp(expr.CmpOpEq, binaryutil.BigEndian.PutUint16(t)))
}

// arpEthernetIPv4 checks that an ARP packet is Ethernet/IPv4 (htype 1,
// ptype 0x0800, hlen 6, plen 4), so the sender fields are where
// arpSender reads them.
func (b *builder) arpEthernetIPv4() *builder {
	return b.add("arp htype 1 arp ptype ip arp hlen 6 arp plen 4",
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 6},
		cmp(expr.CmpOpEq, []byte{0, 1, 8, 0, 6, 4}))
}

// arpSender matches the ARP sender hardware and protocol addresses (offsets
// 8 and 14 of an Ethernet/IPv4 ARP packet).
func (b *builder) arpSender(mac net.HardwareAddr, ip netip.Addr) *builder {
	a := ip.As4()
	return b.add(fmt.Sprintf("arp saddr ether %s arp saddr ip %s", mac, ip),
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 6}, cmp(expr.CmpOpEq, mac),
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: 14, Len: 4}, cmp(expr.CmpOpEq, a[:]))
}

type addrField int

const (
	fieldSaddr addrField = iota
	fieldDaddr
)

// addr matches the IPv4 or IPv6 source or destination against a prefix.
// In the inet family it first checks the packet's protocol (nft's implicit
// "meta nfproto"); in the bridge family the caller checks the ethertype.
func (b *builder) addr(field addrField, p netip.Prefix, not bool) *builder {
	word, off, size, proto := "ip", uint32(12), uint32(4), byte(unix.NFPROTO_IPV4)
	if p.Addr().Is6() {
		word, off, size, proto = "ip6", 8, 16, unix.NFPROTO_IPV6
	}
	if field == fieldDaddr {
		word += " daddr"
		off += size
	} else {
		word += " saddr"
	}
	var es []expr.Any
	if b.family == famInet {
		es = append(es, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}, cmp(expr.CmpOpEq, []byte{proto}))
	}
	es = append(es, &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size})
	text := p.Addr().String()
	if p.Bits() < p.Addr().BitLen() {
		mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
		es = append(es, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: size, Mask: mask, Xor: make([]byte, size)})
		text = p.String()
	}
	op, neg := cmpOp(not)
	es = append(es, cmp(op, p.Masked().Addr().AsSlice()))
	return b.add(word+" "+neg+text, es...)
}

// dport matches a TCP or UDP destination port.
func (b *builder) dport(proto byte, port uint16) *builder {
	name := map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[proto]
	return b.add(fmt.Sprintf("%s dport %d", name, port),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}, cmp(expr.CmpOpEq, []byte{proto}),
		&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		cmp(expr.CmpOpEq, binaryutil.BigEndian.PutUint16(port)))
}

// ctEstablishedRelated matches replies to connections already seen (the
// host's own SSH and port forwards to guests) and what they relate to.
func (b *builder) ctEstablishedRelated() *builder {
	mask := make([]byte, 4)
	binary.NativeEndian.PutUint32(mask, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	return b.add("ct state established,related",
		&expr.Ct{Register: reg, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		cmp(expr.CmpOpNeq, make([]byte, 4)))
}

func (b *builder) accept() *builder {
	return b.add("accept", &expr.Verdict{Kind: expr.VerdictAccept})
}

func (b *builder) drop() *builder { return b.add("drop", &expr.Verdict{Kind: expr.VerdictDrop}) }

func (b *builder) jump(chain string) *builder {
	return b.add("jump "+chain, &expr.Verdict{Kind: expr.VerdictJump, Chain: chain})
}
