package model

import (
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

// nameOracle is the naming rule written a second way.
var nameOracle = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`)

func TestValidateName(t *testing.T) {
	good := []string{"a", "0", "9lives", "a-b", "a--b", "web-1", strings.Repeat("a", 32), strings.Repeat("z9", 16), "brave-otter-1f2e"}
	for _, name := range good {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q) = %v, want nil", name, err)
		}
	}
	bad := []struct{ name, msg string }{
		{"", "invalid name: empty (use lowercase letters, digits and inner hyphens, 1 to 32 characters)"},
		{strings.Repeat("a", 33), "invalid name: 33 characters, at most 32"},
		{strings.Repeat("a", 10000), "invalid name: 10000 characters, at most 32"},
		{"-a", `invalid name "-a": use lowercase letters, digits and inner hyphens, 1 to 32 characters`},
		{"a-", `invalid name "a-": use lowercase letters`},
		{"-", `invalid name "-": use lowercase letters`},
		{"Web", `invalid name "Web"`},
		{"a_b", `invalid name "a_b"`},
		{"a.b", `invalid name "a.b"`},
		{"..", `invalid name ".."`},
		{"a/b", `invalid name "a/b"`},
		{"a b", `invalid name "a b"`},
		{"a\x00b", `invalid name "a\x00b"`},
		{"a\n", `invalid name "a\n"`},
		{"caf\u00e9", `invalid name "café"`},
		{"\xff\xfe", `invalid name "\xff\xfe"`},
		// 32 bytes but fewer characters: the limit counts bytes.
		{strings.Repeat("é", 17), "invalid name: 34 characters, at most 32"},
	}
	for _, c := range bad {
		err := ValidateName(c.name)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("ValidateName(%q) = %v, want an error containing %q", c.name, err, c.msg)
		}
	}
	for _, name := range append(good, "a-", "-a", "A", strings.Repeat("b", 33)) {
		if (ValidateName(name) == nil) != nameOracle.MatchString(name) {
			t.Errorf("ValidateName(%q) disagrees with the oracle", name)
		}
	}
}

// FuzzValidateName checks that every accepted name keeps the rule's
// promises and that ValidateName agrees with an independent regexp.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "web-1", "-a", "a-", "a--b", "A", "", strings.Repeat("a", 32), strings.Repeat("a", 33), "caf\u00e9", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := ValidateName(name)
		if oracle := nameOracle.MatchString(name); (err == nil) != oracle {
			t.Fatalf("ValidateName(%q) = %v, but the oracle says valid=%v", name, err, oracle)
		}
		if err != nil {
			if !strings.HasPrefix(err.Error(), "invalid name") || !utf8.ValidString(err.Error()) {
				t.Fatalf("ValidateName(%q) error %q does not state the rule in valid UTF-8", name, err)
			}
			return
		}
		if len(name) < 1 || len(name) > MaxNameLen || name[0] == '-' || name[len(name)-1] == '-' {
			t.Fatalf("accepted %q: wrong length or an outer hyphen", name)
		}
		if strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
			t.Fatalf("accepted %q with a character outside [a-z0-9-]", name)
		}
	})
}

func TestImageNameFromRef(t *testing.T) {
	for ref, want := range map[string]string{
		"docker.io/library/python:3.12-slim":          "python-3-12-slim",
		"localhost:5000/app:1":                        "app-1",
		"ghcr.io/org/Tool@sha256:abcdef":              "tool",
		"/tmp/images/busybox.tar":                     "busybox",
		"/tmp/x/layout":                               "layout",
		"registry/averyveryverylongrepositoryname:v1": "averyveryverylongrepositoryname",
	} {
		got := ImageNameFromRef(ref)
		if got != want {
			t.Errorf("ImageNameFromRef(%q) = %q, want %q", ref, got, want)
		}
		if err := ValidateName(got); err != nil {
			t.Errorf("ImageNameFromRef(%q) = %q is not a valid name: %v", ref, got, err)
		}
	}
}
