package model

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// MaxNameLen is the longest VM, image or session name.
const MaxNameLen = 32

// ValidateName checks a VM, image or session name: lowercase letters,
// digits and inner hyphens, 1 to MaxNameLen characters. Kernel resource
// names come from a VM's id, never from its name, but names still appear in
// DNS names and paths, which is why the rule is this narrow.
func ValidateName(name string) error {
	if len(name) == 0 {
		return fmt.Errorf("invalid name: empty (use lowercase letters, digits and inner hyphens, 1 to %d characters)", MaxNameLen)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("invalid name: %d characters, at most %d", len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(name)-1
		if !ok {
			return fmt.Errorf("invalid name %q: use lowercase letters, digits and inner hyphens, 1 to %d characters", name, MaxNameLen)
		}
	}
	return nil
}

var refNameChars = regexp.MustCompile(`[^a-z0-9-]+`)

// ImageNameFromRef derives a banger image name from a container image
// reference or file name: "docker.io/library/python:3.12-slim" gives
// "python-3-12-slim" (at most MaxNameLen characters).
func ImageNameFromRef(ref string) string {
	base := ref
	if i := strings.LastIndex(base, "/"); i >= 0 {
		base = base[i+1:]
	}
	base = strings.TrimSuffix(strings.TrimSuffix(base, ".tar.gz"), ".tar")
	if i := strings.Index(base, "@"); i >= 0 {
		base = base[:i]
	}
	name := strings.Trim(refNameChars.ReplaceAllString(strings.ToLower(base), "-"), "-")
	if len(name) > MaxNameLen {
		name = strings.TrimRight(name[:MaxNameLen], "-")
	}
	return name
}

// ValidateUser checks a guest user as vm run, exec, ssh and sessions take
// it (--user): empty (the image's default), a user name as useradd and
// POSIX's portable set allow (with a trailing $ for machine accounts), or
// a numeric uid. Anything else, e.g. "app:staff" or "-x", is refused before
// it reaches a guest.
func ValidateUser(u string) error {
	if u == "" {
		return nil
	}
	if n, err := strconv.ParseUint(u, 10, 32); err == nil {
		if n == 1<<32-1 {
			return fmt.Errorf("invalid user %q: uid 4294967295 is reserved", u)
		}
		return nil
	}
	if len(u) > 32 || !userName.MatchString(u) {
		return fmt.Errorf("invalid user %q: give a user name (letters, digits, _ . -, starting with a letter or _, at most 32) or a numeric uid", u)
	}
	return nil
}

var userName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*\$?$`)
