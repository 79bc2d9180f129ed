// Package forward publishes VM ports on the host with a userspace proxy run by
// the daemon: TCP connections are spliced to the guest, UDP datagrams travel
// through per-client sessions that expire when idle. Nothing is written into
// the kernel's firewall, so nothing is left behind when the daemon dies.
package forward

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Proto is the transport of a forwarded port.
type Proto string

// The protocols a Spec may name.
const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// DefaultHostAddr is where a forwarded port is published when a spec names no
// address: loopback, so a VM is not exposed to the network by accident.
const DefaultHostAddr = "127.0.0.1"

// Spec is one forwarded port: HostAddr:HostPort on the host to GuestPort in
// the VM. An empty HostAddr means DefaultHostAddr and an empty Proto means TCP.
type Spec struct {
	HostAddr  string
	HostPort  int
	GuestPort int
	Proto     Proto
}

// specSyntax is the form quoted in parse errors.
const specSyntax = "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]"

// ParseSpec parses a port spec "[HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]",
// such as "8080:80", "0.0.0.0:8080:80/udp" or "[::1]:8080:80/tcp". The host
// address must be an IP literal (IPv6 in brackets); it defaults to 127.0.0.1
// and the protocol to tcp.
func ParseSpec(s string) (Spec, error) {
	spec, err := parseSpec(s)
	if err != nil {
		return Spec{}, fmt.Errorf("parsing port spec %q: %w", s, err)
	}
	return spec, nil
}

func parseSpec(s string) (Spec, error) {
	spec := Spec{HostAddr: DefaultHostAddr, Proto: TCP}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		proto := Proto(strings.ToLower(rest[i+1:]))
		if proto != TCP && proto != UDP {
			return Spec{}, fmt.Errorf("protocol %q is not tcp or udp", rest[i+1:])
		}
		spec.Proto = proto
		rest = rest[:i]
	}

	var addr string
	var hasAddr bool
	var ports []string
	if strings.HasPrefix(rest, "[") {
		hasAddr = true
		end := strings.IndexByte(rest, ']')
		if end < 0 || !strings.HasPrefix(rest[end+1:], ":") {
			return Spec{}, fmt.Errorf("want %s with an IPv6 address in brackets", specSyntax)
		}
		addr = rest[1:end]
		ports = strings.Split(rest[end+2:], ":")
		if len(ports) != 2 {
			return Spec{}, fmt.Errorf("want %s", specSyntax)
		}
	} else {
		parts := strings.Split(rest, ":")
		switch len(parts) {
		case 2:
			ports = parts
		case 3:
			addr, ports, hasAddr = parts[0], parts[1:], true
		default:
			return Spec{}, fmt.Errorf("want %s (put an IPv6 address in brackets)", specSyntax)
		}
	}
	if hasAddr {
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			return Spec{}, fmt.Errorf("host address %q is not an IP address", addr)
		}
		spec.HostAddr = ip.String()
	}

	var err error
	if spec.HostPort, err = parsePort("host", ports[0]); err != nil {
		return Spec{}, err
	}
	if spec.GuestPort, err = parsePort("guest", ports[1]); err != nil {
		return Spec{}, err
	}
	return spec, nil
}

// parsePort accepts only plain decimal digits: no sign, spaces or names.
func parsePort(which, s string) (int, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%s port %q is not a number", which, s)
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s port %s is out of range 1-65535", which, s)
	}
	return n, nil
}

// String returns the spec in the full form ParseSpec reads back, such as
// "127.0.0.1:8080:80/tcp".
func (s Spec) String() string {
	s = s.withDefaults()
	return fmt.Sprintf("%s:%d/%s", net.JoinHostPort(s.HostAddr, strconv.Itoa(s.HostPort)), s.GuestPort, s.Proto)
}

// hostString names the host side, as in "127.0.0.1:8080/tcp".
func (s Spec) hostString() string {
	s = s.withDefaults()
	return net.JoinHostPort(s.HostAddr, strconv.Itoa(s.HostPort)) + "/" + string(s.Proto)
}

func (s Spec) hostAddrPort() string {
	s = s.withDefaults()
	return net.JoinHostPort(s.HostAddr, strconv.Itoa(s.HostPort))
}

func (s Spec) withDefaults() Spec {
	if s.HostAddr == "" {
		s.HostAddr = DefaultHostAddr
	}
	if s.Proto == "" {
		s.Proto = TCP
	}
	return s
}

// ValidateSpecs checks a VM's port specs before anything is bound: protocols,
// addresses, port ranges, two specs claiming the same host port, and host
// ports below the kernel's unprivileged limit when this process may not bind
// them. It returns every problem found, joined.
func ValidateSpecs(specs []Spec) error {
	return validateSpecs(specs, privilegedPortLimit(), canBindPrivileged())
}

func validateSpecs(specs []Spec, privilegedBelow int, privileged bool) error {
	var errs []error
	for i, s := range specs {
		s = s.withDefaults()
		if err := validateSpec(s, privilegedBelow, privileged); err != nil {
			errs = append(errs, fmt.Errorf("port spec %s: %w", s, err))
			continue
		}
		for _, earlier := range specs[:i] {
			if hostPortsClash(earlier.withDefaults(), s) {
				errs = append(errs, fmt.Errorf("port specs %s and %s use the same host port %s", earlier.withDefaults(), s, s.hostString()))
				break
			}
		}
	}
	return errors.Join(errs...)
}

func validateSpec(s Spec, privilegedBelow int, privileged bool) error {
	if s.Proto != TCP && s.Proto != UDP {
		return fmt.Errorf("protocol %q is not tcp or udp", s.Proto)
	}
	if _, err := netip.ParseAddr(s.HostAddr); err != nil {
		return fmt.Errorf("host address %q is not an IP address", s.HostAddr)
	}
	if s.HostPort < 1 || s.HostPort > 65535 {
		return fmt.Errorf("host port %d is out of range 1-65535", s.HostPort)
	}
	if s.GuestPort < 1 || s.GuestPort > 65535 {
		return fmt.Errorf("guest port %d is out of range 1-65535", s.GuestPort)
	}
	if s.HostPort < privilegedBelow && !privileged {
		return fmt.Errorf("host port %d is privileged (below %d) and this process lacks CAP_NET_BIND_SERVICE", s.HostPort, privilegedBelow)
	}
	return nil
}

// hostPortsClash reports whether two specs would need the same host socket.
// A wildcard address clashes with every address of its family, and "::"
// (dual-stack on Linux) with IPv4 addresses as well.
func hostPortsClash(a, b Spec) bool {
	if a.Proto != b.Proto || a.HostPort != b.HostPort {
		return false
	}
	ipA, errA := netip.ParseAddr(a.HostAddr)
	ipB, errB := netip.ParseAddr(b.HostAddr)
	if errA != nil || errB != nil {
		return a.HostAddr == b.HostAddr
	}
	ipA, ipB = ipA.Unmap(), ipB.Unmap()
	if ipA == ipB {
		return true
	}
	covers := func(wild, other netip.Addr) bool {
		return wild.IsUnspecified() && (wild.Is6() || other.Is4())
	}
	return covers(ipA, ipB) || covers(ipB, ipA)
}

// privilegedPortLimit is the first port an unprivileged process may bind
// (sysctl net.ipv4.ip_unprivileged_port_start, 1024 unless changed).
func privilegedPortLimit() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 1024
	}
	return n
}

// capNetBindService is CAP_NET_BIND_SERVICE's bit (linux/capability.h).
const capNetBindService = 10

// canBindPrivileged reports whether this process holds CAP_NET_BIND_SERVICE
// in its effective set, read from /proc/self/status (CapEff, hex).
func canBindPrivileged() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return os.Geteuid() == 0
	}
	for line := range strings.Lines(string(b)) {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return os.Geteuid() == 0
		}
		return caps&(1<<capNetBindService) != 0
	}
	return os.Geteuid() == 0
}

// ErrPortInUse matches (with errors.Is) the error returned when a spec's host
// port is already bound by another socket.
var ErrPortInUse = errors.New("host port already in use")

// PortInUseError reports that a spec's host port is taken; it matches
// ErrPortInUse and unwraps to the bind error (EADDRINUSE).
type PortInUseError struct {
	Spec Spec
	Err  error
}

// Error says which host port is taken, as "host port 127.0.0.1:8080/tcp is already in use".
func (e *PortInUseError) Error() string {
	return fmt.Sprintf("host port %s is already in use", e.Spec.hostString())
}

// Unwrap returns the underlying bind error.
func (e *PortInUseError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrPortInUse) true.
func (e *PortInUseError) Is(target error) bool { return target == ErrPortInUse }

// bindError turns a bind failure for s into a PortInUseError or a wrapped
// error naming the host port.
func bindError(s Spec, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return &PortInUseError{Spec: s.withDefaults(), Err: err}
	}
	return fmt.Errorf("binding host port %s: %w", s.hostString(), err)
}

// CheckHostPortFree binds the spec's host port and releases it at once, so a
// caller can refuse a spec before changing anything. A taken port gives a
// *PortInUseError ("host port 127.0.0.1:8080/tcp is already in use").
func CheckHostPortFree(s Spec) error {
	s = s.withDefaults()
	switch s.Proto {
	case TCP:
		ln, err := net.Listen("tcp", s.hostAddrPort())
		if err != nil {
			return bindError(s, err)
		}
		return ln.Close()
	case UDP:
		pc, err := net.ListenPacket("udp", s.hostAddrPort())
		if err != nil {
			return bindError(s, err)
		}
		return pc.Close()
	}
	return fmt.Errorf("checking host port %s: protocol %q is not tcp or udp", s.hostString(), s.Proto)
}
