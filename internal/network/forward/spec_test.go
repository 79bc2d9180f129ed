package forward

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	good := []struct {
		in   string
		want Spec
		str  string
	}{
		{"8080:80", Spec{"127.0.0.1", 8080, 80, TCP}, "127.0.0.1:8080:80/tcp"},
		{"8080:80/udp", Spec{"127.0.0.1", 8080, 80, UDP}, "127.0.0.1:8080:80/udp"},
		{"8080:80/TCP", Spec{"127.0.0.1", 8080, 80, TCP}, "127.0.0.1:8080:80/tcp"},
		{"0.0.0.0:8080:80/udp", Spec{"0.0.0.0", 8080, 80, UDP}, "0.0.0.0:8080:80/udp"},
		{"[::1]:8080:80/tcp", Spec{"::1", 8080, 80, TCP}, "[::1]:8080:80/tcp"},
		{"[::]:53:53/udp", Spec{"::", 53, 53, UDP}, "[::]:53:53/udp"},
		{"[0:0::1]:1:65535", Spec{"::1", 1, 65535, TCP}, "[::1]:1:65535/tcp"},
		{"10.0.0.1:65535:1", Spec{"10.0.0.1", 65535, 1, TCP}, "10.0.0.1:65535:1/tcp"},
	}
	for _, tc := range good {
		got, err := ParseSpec(tc.in)
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseSpec(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if got.String() != tc.str {
			t.Errorf("ParseSpec(%q).String() = %q, want %q", tc.in, got.String(), tc.str)
		}
		again, err := ParseSpec(got.String())
		if err != nil || again != got {
			t.Errorf("ParseSpec(%q) does not round-trip: %+v, %v", got.String(), again, err)
		}
	}

	bad := []struct{ in, wantErr string }{
		{"", "want [HOST_ADDR:]HOST_PORT:GUEST_PORT"},
		{"80", "want [HOST_ADDR:]HOST_PORT:GUEST_PORT"},
		{"a:80", `host port "a" is not a number`},
		{"8080:b", `guest port "b" is not a number`},
		{"+80:80", `host port "+80" is not a number`},
		{" 80:80", `host port " 80" is not a number`},
		{"8080:", `guest port "" is not a number`},
		{"8080:80/sctp", `protocol "sctp" is not tcp or udp`},
		{"8080:80/", `protocol "" is not tcp or udp`},
		{"8080:80/tcp/udp", `guest port "80/tcp" is not a number`},
		{"0:80", "host port 0 is out of range 1-65535"},
		{"8080:0", "guest port 0 is out of range 1-65535"},
		{"65536:80", "host port 65536 is out of range"},
		{"8080:99999999999999999999", "guest port 99999999999999999999 is out of range"},
		{"::1:8080:80", "put an IPv6 address in brackets"},
		{"[::1]8080:80", "IPv6 address in brackets"},
		{"[::1:8080:80", "IPv6 address in brackets"},
		{"[::1]:8080", "want [HOST_ADDR:]HOST_PORT:GUEST_PORT"},
		{"localhost:8080:80", `host address "localhost" is not an IP address`},
		{":8080:80", `host address "" is not an IP address`},
		{"1.2.3.4:8080:80:90", "want [HOST_ADDR:]HOST_PORT:GUEST_PORT"},
	}
	for _, tc := range bad {
		got, err := ParseSpec(tc.in)
		if err == nil {
			t.Errorf("ParseSpec(%q) = %+v, want an error", tc.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), strconv.Quote(tc.in)) {
			t.Errorf("ParseSpec(%q) error %q, want it to quote the spec and say %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestValidateSpecs(t *testing.T) {
	spec := func(s string) Spec {
		t.Helper()
		sp, err := ParseSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		return sp
	}
	tests := []struct {
		name       string
		specs      []Spec
		privileged bool
		wantErrs   []string // substrings; none means valid
	}{
		{"distinct", []Spec{spec("8080:80"), spec("8081:80"), spec("8080:80/udp"), spec("0.0.0.0:9000:90")}, false, nil},
		{"empty", nil, false, nil},
		{"defaults filled", []Spec{{HostPort: 8080, GuestPort: 80}}, false, nil},
		{"same port twice", []Spec{spec("8080:80"), spec("8080:81")}, false,
			[]string{"port specs 127.0.0.1:8080:80/tcp and 127.0.0.1:8080:81/tcp use the same host port 127.0.0.1:8080/tcp"}},
		{"wildcard covers loopback", []Spec{spec("0.0.0.0:8080:80"), spec("8080:81")}, false, []string{"same host port"}},
		{"dual-stack wildcard covers IPv4", []Spec{spec("8080:81"), spec("[::]:8080:80")}, false, []string{"same host port"}},
		{"IPv4 wildcard and IPv6 loopback coexist", []Spec{spec("0.0.0.0:8080:80"), spec("[::1]:8080:80")}, false, nil},
		{"privileged without the right", []Spec{spec("80:80")}, false,
			[]string{"host port 80 is privileged (below 1024) and this process lacks CAP_NET_BIND_SERVICE"}},
		{"privileged with the right", []Spec{spec("80:80")}, true, nil},
		{"out of range", []Spec{{HostAddr: "127.0.0.1", HostPort: 70000, GuestPort: 80, Proto: TCP}}, false,
			[]string{"host port 70000 is out of range"}},
		{"guest out of range", []Spec{{HostPort: 8080, GuestPort: -1}}, false, []string{"guest port -1 is out of range"}},
		{"bad proto", []Spec{{HostPort: 8080, GuestPort: 80, Proto: "sctp"}}, false, []string{`protocol "sctp"`}},
		{"bad address", []Spec{{HostAddr: "example.com", HostPort: 8080, GuestPort: 80}}, false, []string{`host address "example.com"`}},
		{"every problem reported", []Spec{spec("80:80"), spec("8080:80"), spec("8080:80")}, false,
			[]string{"host port 80 is privileged", "same host port"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validateSpecs(tc.specs, 1024, tc.privileged)
			if len(tc.wantErrs) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tc.wantErrs)
			}
			for _, want := range tc.wantErrs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
		})
	}
}

func TestValidateSpecsUsesThisProcess(t *testing.T) {
	err := ValidateSpecs([]Spec{{HostPort: 1, GuestPort: 80}})
	if canBindPrivileged() != (err == nil) {
		t.Fatalf("ValidateSpecs(port 1) = %v, but canBindPrivileged() = %v", err, canBindPrivileged())
	}
	if err := ValidateSpecs([]Spec{{HostPort: 65000, GuestPort: 80}}); err != nil {
		t.Fatalf("unprivileged port refused: %v", err)
	}
}

func TestCheckHostPortFree(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	err = CheckHostPortFree(Spec{HostPort: port, GuestPort: 80})
	want := "host port 127.0.0.1:" + strconv.Itoa(port) + "/tcp is already in use"
	if err == nil || err.Error() != want {
		t.Fatalf("CheckHostPortFree on a taken port = %v, want %q", err, want)
	}
	if !errors.Is(err, ErrPortInUse) {
		t.Fatalf("error %v does not match ErrPortInUse", err)
	}
	var inUse *PortInUseError
	if !errors.As(err, &inUse) || inUse.Spec.HostPort != port {
		t.Fatalf("error %v is not a *PortInUseError for port %d", err, port)
	}

	// The UDP port of the same number is a different socket.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpPort := pc.LocalAddr().(*net.UDPAddr).Port
	err = CheckHostPortFree(Spec{HostPort: udpPort, GuestPort: 53, Proto: UDP})
	if !errors.Is(err, ErrPortInUse) || !strings.Contains(err.Error(), "/udp is already in use") {
		t.Fatalf("CheckHostPortFree on a taken udp port = %v", err)
	}
	pc.Close()
	if err := CheckHostPortFree(Spec{HostPort: udpPort, GuestPort: 53, Proto: UDP}); err != nil {
		t.Fatalf("CheckHostPortFree on a released udp port: %v", err)
	}
	// The check releases the port: binding it afterwards works.
	if err := CheckHostPortFree(Spec{HostPort: udpPort, GuestPort: 53, Proto: UDP}); err != nil {
		t.Fatalf("second CheckHostPortFree: %v", err)
	}
}
