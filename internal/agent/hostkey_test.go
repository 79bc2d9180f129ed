package agent

import (
	"bytes"
	"crypto/ed25519"
	"testing"

	"golang.org/x/crypto/ssh"
)

// A host-made key is in dropbear's file format (checked against a key file
// dropbearkey 2022.83 wrote: type and 64-byte seed+public, each an SSH
// string) and its public half matches.
func TestNewHostKey(t *testing.T) {
	k, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	b := k.Dropbear
	if len(b) != 4+11+4+64 || string(b[:15]) != "\x00\x00\x00\x0bssh-ed25519" || string(b[15:19]) != "\x00\x00\x00\x40" {
		t.Fatalf("dropbear key file % x", b)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k.Public))
	if err != nil {
		t.Fatal(err)
	}
	if got := pub.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey); !bytes.Equal(got, b[19+32:]) {
		t.Errorf("public key %x is not the file's %x", got, b[19+32:])
	}
	if k2, _ := NewHostKey(); bytes.Equal(k2.Dropbear, k.Dropbear) {
		t.Error("two keys alike")
	}
}

func TestIsDropbearEd25519(t *testing.T) {
	k, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	if !isDropbearEd25519(k.Dropbear) {
		t.Fatal("a new key is refused")
	}
	for name, b := range map[string][]byte{"short": k.Dropbear[:82], "long": append(bytes.Clone(k.Dropbear), 0),
		"another type": append([]byte("\x00\x00\x00\x0bssh-ed25518"), k.Dropbear[15:]...), "empty": nil} {
		if isDropbearEd25519(b) {
			t.Errorf("%s: accepted", name)
		}
	}
}
