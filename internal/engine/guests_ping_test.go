package engine

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/guest/guesttest"
)

// stallProxy forwards TCP to target until stalled, then forwards nothing
// more in either direction (a peer whose side is frozen, as a suspended
// guest's is, or a host side waiting out a retransmission backoff).
type stallProxy struct {
	ln      net.Listener
	stalled atomic.Bool
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go p.pipe(s, c)
			go p.pipe(c, s)
		}
	}()
	return p
}

func (p *stallProxy) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		for p.stalled.Load() {
			time.Sleep(10 * time.Millisecond) // hold the bytes: nothing gets through
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// A pooled connection is reused only if it answers a keepalive in time: a
// stuck one (kept across a suspension) is given up on within the wait
// instead of hanging the caller.
func TestPingWithinGivesUpOnStuckConnection(t *testing.T) {
	signer := guesttest.NewSigner(t)
	srv := guesttest.Start(t, guesttest.Options{ClientKey: signer.PublicKey()})
	p := newStallProxy(t, srv.Addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := guest.Dial(ctx, guest.Config{Addr: p.ln.Addr().String(), Signer: signer, KnownHostsFile: filepath.Join(t.TempDir(), "known_hosts")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := pingWithin(c, 2*time.Second); err != nil {
		t.Fatalf("live connection: %v", err)
	}
	p.stalled.Store(true)
	start := time.Now()
	if err := pingWithin(c, 200*time.Millisecond); err == nil {
		t.Fatal("a stuck connection answered")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("gave up after %s, want about 200ms", d)
	}
}
