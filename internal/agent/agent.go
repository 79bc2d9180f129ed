// Package agent is banger's guest agent: a small program in the guest
// (cmd/banger-agent, installed by the image build as
// /usr/lib/banger/agent) that answers one-line commands on the
// virtio-serial port org.banger.agent. banger uses it after restoring saved
// state, over a channel that does not depend on the guest's network: to
// correct the clock and, for a clone, to give it its own MAC, address,
// hostname, RNG seed and SSH host key before it talks to anyone. The host's
// side is internal/vmm/qemu's AgentClient; docs/snapshots.md has the
// protocol.
//
// Request: "<id> <command> [args...]". Answer: "<id> ok [text]" or
// "<id> err <message>".
//
//	ping                         ok
//	set-time EPOCH_NS [nearest]  set the wall clock to EPOCH_NS; ok <seconds>
//	set-ip ADDR/LEN [GW]         eth0's only IPv4 address, and the default route via GW
//	set-mac MAC                  eth0's MAC address
//	set-hostname NAME            hostname, /etc/hostname, /etc/hosts
//	reseed HEX                   the bytes mixed into the kernel's RNG, which reseeds at once
//	regen-hostkey                a new ed25519 host key, served from the next connection; ok <type> <base64>
//	set-hostkey HEX              install the host's ed25519 key (dropbear's file), served from the next connection; ok dropbear|openssh
//
// The id comes back with every answer: the port holds a write while no
// host end is connected, so an answer may reach a later client, which
// skips it by its id.
//
// Why a program and not a shell script (the agent was one): a restored
// guest runs under a VMM that has none of its code translated yet when
// there is no KVM, and every busybox applet is a fork, each costing tens
// of milliseconds there. A clone's identity is on the path of every vm run
// --from; here it is system calls in one process.
package agent

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// System is what the commands change in the guest. The Linux one is
// NewLinux; tests use their own.
type System interface {
	SetTime(t time.Time) error
	// SetIP makes addr eth0's only IPv4 address and, when gw is valid,
	// the default route one via gw.
	SetIP(addr netip.Prefix, gw netip.Addr) error
	SetMAC(mac net.HardwareAddr) error
	SetHostname(name string) error
	// Reseed mixes seed into the kernel's RNG and has it reseed now.
	Reseed(seed []byte) error
	// InstallHostKey installs an ed25519 host key given in dropbear's file
	// format for the guest's SSH server, which serves it from its next
	// connection, and names that server: ServerDropbear or ServerOpenSSH.
	InstallHostKey(dropbear []byte) (server string, err error)
}

// Server answers commands with Sys.
type Server struct {
	Sys System
	// Console, if set, gets a line for each command that fails. Not for
	// every command: in a guest just restored under TCG, the serial
	// console's kernel path is cold and costs a clone tens of ms per line.
	Console io.Writer
	// Poll is how long to wait before reading again while no host end is
	// connected (the port reads empty at once then); 20 ms if zero.
	Poll time.Duration
	// Wait, if set, waits instead of Poll after an empty read, until the
	// port may have something to read (the agent waits for the port's next
	// wake-up; see cmd/banger-agent).
	Wait func(ctx context.Context) error
}

// Serve answers the requests read from port, in order, until ctx is done
// or port fails. An empty read means no host end is connected: it waits
// Poll and reads again. A line cut by a disconnection is completed by
// later reads. One goroutine does it all: every command is cheap, and
// handing work between goroutines would wake the guest's other vCPU, which
// costs more than it saves in a guest just restored under TCG.
func (s *Server) Serve(ctx context.Context, port io.ReadWriter) error {
	poll := s.Poll
	if poll == 0 {
		poll = 20 * time.Millisecond
	}
	r := bufio.NewReader(port)
	var pending strings.Builder
	for ctx.Err() == nil {
		part, err := r.ReadString('\n')
		pending.WriteString(part)
		if err == nil {
			line := pending.String()
			pending.Reset()
			if answer, ok := s.Handle(line); ok {
				if _, err := io.WriteString(port, answer); err != nil {
					return fmt.Errorf("answering: %w", err)
				}
			}
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		if s.Wait != nil {
			if err := s.Wait(ctx); err != nil && ctx.Err() == nil {
				return err
			}
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(poll):
		}
	}
	return ctx.Err()
}

// Handle runs one request line and returns its answer line; ok is false
// for a line that is not a request (too short, or a malformed id).
func (s *Server) Handle(line string) (answer string, ok bool) {
	f := strings.Fields(line)
	if len(f) < 2 || !validID(f[0]) {
		return "", false
	}
	id, cmd, args := f[0], f[1], f[2:]
	text, err := s.run(cmd, args)
	if err != nil {
		msg := oneLine(err.Error())
		if s.Console != nil {
			fmt.Fprintf(s.Console, "banger-agent: %s\n", msg)
		}
		return fmt.Sprintf("%s err %s\n", id, msg), true
	}
	if text == "" {
		return id + " ok\n", true
	}
	return fmt.Sprintf("%s ok %s\n", id, text), true
}

func (s *Server) run(cmd string, args []string) (string, error) {
	arg := func(i int) string {
		if i < len(args) {
			return args[i]
		}
		return ""
	}
	switch cmd {
	case "ping":
		return "", nil
	case "set-time":
		ns, err := strconv.ParseInt(arg(0), 10, 64)
		if err != nil || ns <= 0 || strings.HasPrefix(arg(0), "+") {
			return "", errors.New("set-time: want nanoseconds since the epoch")
		}
		// "nearest" asked the shell agent to step at once to a whole
		// second; a system call sets the exact time, which is nearer.
		t := time.Unix(0, ns)
		if err := s.Sys.SetTime(t); err != nil {
			return "", fmt.Errorf("set-time: %w", err)
		}
		return strconv.FormatInt(t.Unix(), 10), nil
	case "set-ip":
		addr, err := netip.ParsePrefix(arg(0))
		if err != nil || !addr.Addr().Is4() {
			return "", errors.New("set-ip: want ADDR/LEN [GATEWAY]")
		}
		var gw netip.Addr
		if arg(1) != "" {
			if gw, err = netip.ParseAddr(arg(1)); err != nil || !gw.Is4() {
				return "", fmt.Errorf("set-ip: bad gateway %s", arg(1))
			}
		}
		if err := s.Sys.SetIP(addr, gw); err != nil {
			return "", fmt.Errorf("set-ip: cannot set %s on eth0: %w", addr, err)
		}
		return "", nil
	case "set-mac":
		mac, err := net.ParseMAC(arg(0))
		if err != nil || len(mac) != 6 {
			return "", errors.New("set-mac: want aa:bb:cc:dd:ee:ff")
		}
		if err := s.Sys.SetMAC(mac); err != nil {
			return "", fmt.Errorf("set-mac: cannot set %s on eth0: %w", mac, err)
		}
		return "", nil
	case "set-hostname":
		name := arg(0)
		if !validHostname(name) {
			return "", errors.New("set-hostname: bad name")
		}
		if err := s.Sys.SetHostname(name); err != nil {
			return "", fmt.Errorf("set-hostname: %w", err)
		}
		return "", nil
	case "reseed":
		seed, err := hex.DecodeString(arg(0))
		if err != nil || len(seed) == 0 || len(seed) > 4096 {
			return "", errors.New("reseed: want hex bytes")
		}
		if err := s.Sys.Reseed(seed); err != nil {
			return "", fmt.Errorf("reseed: %w", err)
		}
		return "", nil
	case "set-hostkey":
		key, err := hex.DecodeString(arg(0))
		if err != nil || !isDropbearEd25519(key) {
			return "", errors.New("set-hostkey: want dropbear's ed25519 key file in hex")
		}
		server, err := s.Sys.InstallHostKey(key)
		if err != nil {
			return "", fmt.Errorf("set-hostkey: %w", err)
		}
		return server, nil
	case "regen-hostkey":
		k, err := NewHostKey()
		if err != nil {
			return "", fmt.Errorf("regen-hostkey: %w", err)
		}
		if _, err := s.Sys.InstallHostKey(k.Dropbear); err != nil {
			return "", fmt.Errorf("regen-hostkey: %w", err)
		}
		return k.Public, nil
	}
	return "", fmt.Errorf("unknown command %s", cmd)
}

func validID(id string) bool {
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return id != ""
}

func validHostname(name string) bool {
	if name == "" || len(name) > 64 || name[0] == '-' {
		return false
	}
	for _, c := range name {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
