// Package guest is how banger talks to a guest over SSH: it dials with a
// pinned host key, runs commands whose argv arrives byte for byte, moves files
// over SFTP, drives interactive terminals and manages detached "guest
// sessions" whose logs and exit codes live on the VM's work disk.
package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Config says how to reach one guest.
type Config struct {
	Addr   string     // host:port, e.g. 172.30.0.5:22
	User   string     // default "root"
	Signer ssh.Signer // banger's client key
	// KnownHostsFile is the VM's own pin file, in known_hosts format: the
	// guest's host key is pinned there on first contact, and a different key
	// later fails with ErrHostKeyChanged.
	KnownHostsFile string
	DialTimeout    time.Duration // per attempt; default 10s
	// ConnectTimeout bounds the TCP connect alone (0: DialTimeout). A SYN
	// lost while a guest's link comes up is sent again by the kernel only
	// after a second; DialRetry connects anew sooner.
	ConnectTimeout time.Duration
}

// ErrHostKeyChanged is returned when a guest offers a host key other than the
// one pinned for it. It is never retried: it means another machine answers at
// the VM's address, or the VM's identity was replaced.
var ErrHostKeyChanged = errors.New("guest host key changed")

// DefaultSFTPServer is where the guest image keeps OpenSSH's sftp-server. It
// is run directly when the SSH server refuses the "sftp" subsystem.
const DefaultSFTPServer = "/usr/lib/openssh/sftp-server"

// Client is a connection to one guest. Its methods may be called concurrently:
// each operation opens its own SSH session on the shared connection.
type Client struct {
	// SessionsRoot is the guest directory holding guest sessions; Dial sets
	// it to SessionsDir. Tests point it at a temporary directory.
	SessionsRoot string
	// SFTPServer is the guest's sftp-server binary, used when the "sftp"
	// subsystem is unavailable; Dial sets it to DefaultSFTPServer.
	SFTPServer string

	addr        string
	conn        *ssh.Client
	cancelGrace time.Duration // between SIGINT and closing the session on cancel
	pollEvery   time.Duration // log following and stop polling
}

const defaultDialTimeout = 10 * time.Second

// Dial connects to the guest once, pinning its host key on first contact.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Addr == "" || cfg.Signer == nil || cfg.KnownHostsFile == "" {
		return nil, fmt.Errorf("dial guest %q: config needs Addr, Signer and KnownHostsFile", cfg.Addr)
	}
	user := cfg.User
	if user == "" {
		user = "root"
	}
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = defaultDialTimeout
	}
	pins, err := readPins(cfg.KnownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("dial guest %s: %w", cfg.Addr, err)
	}
	var hostKeyErr error
	sshCfg := &ssh.ClientConfig{
		User:              user,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(cfg.Signer)},
		HostKeyAlgorithms: pinnedAlgorithms(pins),
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			hostKeyErr = checkPin(cfg.KnownHostsFile, cfg.Addr, pins, key)
			return hostKeyErr
		},
		Timeout: timeout,
	}

	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	cctx := dctx
	if cfg.ConnectTimeout > 0 && cfg.ConnectTimeout < timeout {
		var ccancel context.CancelFunc
		cctx, ccancel = context.WithTimeout(dctx, cfg.ConnectTimeout)
		defer ccancel()
	}
	conn, err := d.DialContext(cctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial guest %s: %w", cfg.Addr, err)
	}
	// The SSH handshake has no context: bound it by the deadline, and abort
	// it on cancellation by moving the deadline into the past.
	deadline, _ := dctx.Deadline()
	conn.SetDeadline(deadline)                                                    //nolint:errcheck // a TCP conn always accepts deadlines
	stop := context.AfterFunc(dctx, func() { conn.SetDeadline(time.Unix(1, 0)) }) //nolint:errcheck
	c, chans, reqs, err := ssh.NewClientConn(conn, cfg.Addr, sshCfg)
	if !stop() && err == nil {
		c.Close()
		return nil, fmt.Errorf("ssh handshake with guest %s: %w", cfg.Addr, dctx.Err())
	}
	if err != nil {
		conn.Close()
		if hostKeyErr != nil {
			return nil, hostKeyErr
		}
		return nil, fmt.Errorf("ssh handshake with guest %s: %w", cfg.Addr, err)
	}
	conn.SetDeadline(time.Time{}) //nolint:errcheck
	return &Client{
		SessionsRoot: SessionsDir,
		SFTPServer:   DefaultSFTPServer,
		addr:         cfg.Addr,
		conn:         ssh.NewClient(c, chans, reqs),
		cancelGrace:  2 * time.Second,
		pollEvery:    100 * time.Millisecond,
	}, nil
}

// DialRetry dials until the guest answers or wait passes, with a backoff from
// 50ms to 500ms, for a guest that is still booting, and every 20ms while
// the connection is refused. A changed host key is returned at once.
func DialRetry(ctx context.Context, cfg Config, wait time.Duration) (*Client, error) {
	deadline := time.Now().Add(wait)
	backoff := 50 * time.Millisecond
	// The connect of each attempt is bounded, from 250 ms doubling up to
	// the dial timeout: an unanswered SYN is followed by a new connection
	// rather than by the kernel's retransmission a second later.
	connect := firstConnectTimeout
	for {
		actx, cancel := context.WithDeadline(ctx, deadline)
		acfg := cfg
		if acfg.ConnectTimeout <= 0 {
			acfg.ConnectTimeout = connect
		}
		c, err := Dial(actx, acfg)
		cancel()
		if err == nil {
			return c, nil
		}
		if errors.Is(err, ErrHostKeyChanged) {
			return nil, err
		}
		if testHookDialFailed != nil {
			testHookDialFailed(err)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dial guest %s: %w (last error: %v)", cfg.Addr, ctx.Err(), err)
		}
		if time.Until(deadline) < backoff {
			return nil, fmt.Errorf("guest %s did not answer ssh within %s: %w", cfg.Addr, wait, err)
		}
		// A refused connection means the guest's network is up and its
		// SSH server not listening yet (starting, or restarting with a new
		// host key): it costs nothing to ask again soon, and growing the
		// pause would add up to half a second after the server is up.
		pause := backoff
		if errors.Is(err, syscall.ECONNREFUSED) {
			pause = refusedRetry
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("dial guest %s: %w (last error: %v)", cfg.Addr, ctx.Err(), err)
		case <-t.C:
		}
		if pause == backoff {
			backoff = min(2*backoff, 500*time.Millisecond)
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			limit := cfg.DialTimeout
			if limit <= 0 {
				limit = defaultDialTimeout
			}
			connect = min(2*connect, limit)
		}
	}
}

// refusedRetry is how soon DialRetry tries again after a refused connection.
const refusedRetry = 20 * time.Millisecond

// firstConnectTimeout bounds DialRetry's first TCP connect.
const firstConnectTimeout = 250 * time.Millisecond

// testHookDialFailed, when set by a test, sees every failed DialRetry attempt.
var testHookDialFailed func(error)

// Close closes the connection and every session on it.
func (c *Client) Close() error { return c.conn.Close() }

// Addr returns the guest address the client is connected to.
func (c *Client) Addr() string { return c.addr }

// readPins returns the keys pinned in a known_hosts-format file; a missing
// file pins nothing. A file that exists but does not parse is an error, so a
// damaged pin is never silently replaced.
func readPins(file string) ([]ssh.PublicKey, error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read host key pin: %w", err)
	}
	var keys []ssh.PublicKey
	for rest := data; len(bytes.TrimSpace(rest)) > 0; {
		var key ssh.PublicKey
		_, _, key, _, rest, err = ssh.ParseKnownHosts(rest)
		if err != nil {
			return nil, fmt.Errorf("parse host key pin %s: %w", file, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// pinnedAlgorithms asks the server for the pinned key's type, so a guest
// with several host keys presents the pinned one.
func pinnedAlgorithms(pins []ssh.PublicKey) []string {
	if len(pins) == 0 {
		return firstContactAlgorithms
	}
	var algs []string
	for _, k := range pins {
		if k.Type() == ssh.KeyAlgoRSA {
			algs = append(algs, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
		}
		algs = append(algs, k.Type())
	}
	return algs
}

// firstContactAlgorithms is the order of host key types asked for when no
// key is pinned yet: ed25519 first, then Go's own order. Every banger guest
// has an ed25519 key (the one guest-setup prints on the console), and Go's
// client would otherwise ask for RSA and ECDSA before it: dropbear 2022.83
// offers RSA even when it has no RSA key, and then fails the handshake,
// and with -R it would make an ECDSA key for the asking.
var firstContactAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA,
}

func checkPin(file, addr string, pins []ssh.PublicKey, key ssh.PublicKey) error {
	if len(pins) == 0 {
		if err := writePin(file, addr, key); err != nil {
			return fmt.Errorf("pin host key of guest %s: %w", addr, err)
		}
		return nil
	}
	for _, p := range pins {
		if bytes.Equal(p.Marshal(), key.Marshal()) {
			return nil
		}
	}
	return fmt.Errorf("guest %s offered host key %s, but %s pins %s: %w",
		addr, ssh.FingerprintSHA256(key), file, ssh.FingerprintSHA256(pins[0]), ErrHostKeyChanged)
}

// writePin writes the pin file atomically: temp file, fsync, rename, fsync dir.
func writePin(file, addr string, key ssh.PublicKey) error {
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n"
	return writeFileAtomic(file, []byte(line), 0o600)
}

func writeFileAtomic(file string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(file)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// PinHostKey pins key (an authorized_keys line such as "ssh-ed25519 AAAA...",
// as a clone's guest agent reports its new key through a channel that does
// not depend on the network) for the guest at addr, replacing any pin.
func PinHostKey(file, addr, key string) error {
	pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(key))
	if err != nil {
		return fmt.Errorf("host key %q: %w", key, err)
	}
	return writePin(file, addr, pk)
}
