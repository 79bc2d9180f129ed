package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/netip"
)

// validName reports whether name is a VM name: lowercase letters, digits and
// inner hyphens, 1 to 32 characters. Kernel resource names come from the
// VM's id, never from its name, but names still appear in DNS and paths.
func validName(name string) error {
	if len(name) == 0 {
		return fmt.Errorf("invalid name: empty (use lowercase letters, digits and inner hyphens, 1 to 32 characters)")
	}
	if len(name) > 32 {
		return fmt.Errorf("invalid name: %d characters, at most 32", len(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && i > 0 && i < len(name)-1)
		if !ok {
			return fmt.Errorf("invalid name %q: use lowercase letters, digits and inner hyphens, 1 to 32 characters", name)
		}
	}
	return nil
}

// newID returns a VM or session id: 32 lowercase hex characters, no hyphens
// (Firecracker ids and dm names take it as is).
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var adjectives = []string{"brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lively", "merry",
	"nimble", "polite", "quick", "rapid", "sunny", "tidy", "vivid", "witty", "zesty", "bold", "crisp", "daring", "fresh", "grand"}
var nouns = []string{"otter", "falcon", "badger", "heron", "lynx", "panda", "raven", "tiger", "walrus", "yak", "bison",
	"cobra", "dingo", "egret", "gecko", "ibis", "koala", "lemur", "moose", "newt", "okapi", "puffin", "quokka", "stoat"}

// generateName returns a readable name not in taken.
func generateName(taken func(string) bool) string {
	pick := func(s []string) string {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(s))))
		return s[n.Int64()]
	}
	for range 100 {
		name := pick(adjectives) + "-" + pick(nouns)
		if !taken(name) {
			return name
		}
	}
	for {
		name := pick(adjectives) + "-" + pick(nouns) + "-" + newID()[:4]
		if !taken(name) {
			return name
		}
	}
}

func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	return netip.ParsePrefix(s)
}
