package forward

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzParseSpec checks that ParseSpec never panics, that what it accepts
// passes the validator (ports in range, an IP address, tcp or udp), and that
// an accepted spec's String parses back to an equal spec whose String is
// the same text.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{
		"8080:80", "8080:80/udp", "8080:80/TCP", "0.0.0.0:8080:80/udp", "[::1]:8080:80/tcp", "[::]:53:53/udp",
		"[0:0::1]:1:65535", "[fe80::1%eth0]:8080:80", "[::ffff:10.0.0.1]:1:2", "[1.2.3.4]:80:80",
		"", "80", "::1:8080:80", "[::1]8080:80", "localhost:8080:80", "8080:80/tcp/udp", "0:80", "65536:80",
		"00080:080", "[fe80::1%a/b]:1:2/tcp", "[fe80::1%]]:1:2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseSpec(s)
		if err != nil {
			if spec != (Spec{}) || !strings.HasPrefix(err.Error(), "parsing port spec ") {
				t.Fatalf("ParseSpec(%q) = %+v, %v; want the zero Spec and an error naming the spec", s, spec, err)
			}
			return
		}
		if err := validateSpec(spec, 0, true); err != nil {
			t.Fatalf("ParseSpec(%q) = %+v, which the validator refuses: %v", s, spec, err)
		}
		if _, err := netip.ParseAddr(spec.HostAddr); err != nil || spec.Proto == "" {
			t.Fatalf("ParseSpec(%q) = %+v: defaults not filled in", s, spec)
		}
		str := spec.String()
		again, err := ParseSpec(str)
		if err != nil || again != spec {
			t.Fatalf("ParseSpec(%q) = %+v, whose String %q parses to %+v, %v", s, spec, str, again, err)
		}
		if again.String() != str {
			t.Fatalf("String is not stable: %q then %q", str, again.String())
		}
	})
}
