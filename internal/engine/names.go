package engine

import (
	"crypto/rand"
	"encoding/hex"
	"math/big"
	"net/netip"

	"github.com/banger-dev/banger/internal/model"
)

// validName is the naming rule of VMs, images and sessions.
func validName(name string) error { return model.ValidateName(name) }

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
