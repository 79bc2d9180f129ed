package agent

import (
	"bytes"
	"crypto/ed25519"
	"strings"
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

// TestGuestKeyFiles: a key the host kept for a clone goes to dropbear's
// path as it is, or, in OpenSSH's format, to sshd's path with its .pub
// (which the boot prints on the console); anything else is an error.
func TestGuestKeyFiles(t *testing.T) {
	k, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	files, err := GuestKeyFiles(k.Dropbear)
	if err != nil || len(files) != 1 || files[0].Path != DiskKeyPath || files[0].Mode != 0o600 || !bytes.Equal(files[0].Data, k.Dropbear) {
		t.Errorf("dropbear key: %+v, %v", files, err)
	}
	pem, pub, err := OpenSSHKey(k.Dropbear)
	if err != nil {
		t.Fatal(err)
	}
	if pub != k.Public {
		t.Errorf("OpenSSHKey public %q, want %q", pub, k.Public)
	}
	files, err = GuestKeyFiles(pem)
	if err != nil || len(files) != 2 {
		t.Fatalf("openssh key: %+v, %v", files, err)
	}
	if files[0].Path != OpenSSHDiskKeyPath || files[0].Mode != 0o600 || !bytes.Equal(files[0].Data, pem) {
		t.Errorf("private file %s %o", files[0].Path, files[0].Mode)
	}
	if files[1].Path != OpenSSHDiskKeyPath+".pub" || files[1].Mode != 0o644 || strings.TrimSpace(string(files[1].Data)) != k.Public {
		t.Errorf("public file %s %o %q", files[1].Path, files[1].Mode, files[1].Data)
	}
	if s, err := ssh.ParsePrivateKey(files[0].Data); err != nil || strings.TrimSpace(string(ssh.MarshalAuthorizedKey(s.PublicKey()))) != k.Public {
		t.Errorf("the OpenSSH file does not hold the key: %v", err)
	}
	for _, bad := range [][]byte{nil, []byte("junk"), k.Dropbear[:40]} {
		if _, err := GuestKeyFiles(bad); err == nil {
			t.Errorf("GuestKeyFiles(%q) accepted", bad)
		}
	}
	if _, _, err := OpenSSHKey([]byte("junk")); err == nil {
		t.Error("OpenSSHKey accepted junk")
	}
}
