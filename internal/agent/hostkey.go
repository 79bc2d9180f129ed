package agent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// HostKey is an SSH host key for a guest: the private key in dropbear's
// file format, and the public key as an authorized_keys line.
type HostKey struct {
	Dropbear []byte
	Public   string
}

// dropbearEd25519Prefix starts dropbear's ed25519 key file: the key type as
// an SSH string, then the length of the 64 bytes of seed and public key.
var dropbearEd25519Prefix = []byte("\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x40")

// NewHostKey makes an ed25519 host key. Dropbear's file holds the key type
// and the 64 bytes of seed and public key, each as an SSH string (checked
// against a file dropbearkey 2022.83 wrote).
func NewHostKey() (HostKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return HostKey{}, err
	}
	spub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return HostKey{}, err
	}
	var b []byte
	for _, s := range [][]byte{[]byte(ssh.KeyAlgoED25519), priv} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return HostKey{Dropbear: b, Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub)))}, nil
}

// isDropbearEd25519 reports whether b has the shape of an ed25519 key file
// in dropbear's format. (Whether its public half is its seed's is not
// checked: the host made it, and the check costs tens of ms in a guest
// just restored under TCG.)
func isDropbearEd25519(b []byte) bool {
	return len(b) == len(dropbearEd25519Prefix)+ed25519.PrivateKeySize && bytes.HasPrefix(b, dropbearEd25519Prefix)
}

// OpenSSHKey turns an ed25519 key file in dropbear's format into OpenSSH's
// private key file (PEM) and its public key as an authorized_keys line:
// the files a guest whose SSH server is OpenSSH's needs.
func OpenSSHKey(dropbear []byte) (priv []byte, pub string, err error) {
	if !isDropbearEd25519(dropbear) {
		return nil, "", errors.New("not dropbear's ed25519 key file")
	}
	key := ed25519.PrivateKey(dropbear[len(dropbearEd25519Prefix):])
	block, err := ssh.MarshalPrivateKey(key, "")
	if err != nil {
		return nil, "", err
	}
	spub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return nil, "", err
	}
	return pem.EncodeToMemory(block), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(spub))), nil
}

// GuestKeyFile is a file a host key goes to on a guest's disk.
type GuestKeyFile struct {
	Path string
	Mode uint32
	Data []byte
}

// GuestKeyFiles are the files that put priv, a host key the host made for
// a clone (dropbear's format, or OpenSSH's PEM for a guest that runs
// OpenSSH's server), on the guest's disk, where its boot finds it.
func GuestKeyFiles(priv []byte) ([]GuestKeyFile, error) {
	if isDropbearEd25519(priv) {
		return []GuestKeyFile{{Path: DiskKeyPath, Mode: 0o600, Data: priv}}, nil
	}
	key, err := ssh.ParseRawPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	ed, ok := key.(*ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("host key: %T, want ed25519", key)
	}
	spub, err := ssh.NewPublicKey(ed.Public())
	if err != nil {
		return nil, err
	}
	return []GuestKeyFile{
		{Path: OpenSSHDiskKeyPath, Mode: 0o600, Data: priv},
		{Path: OpenSSHDiskKeyPath + ".pub", Mode: 0o644, Data: ssh.MarshalAuthorizedKey(spub)},
	}, nil
}
