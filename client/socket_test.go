package client_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"
)

// TestDefaultSocket: a zero Client talks where a daemon with the default
// configuration listens.
func TestDefaultSocket(t *testing.T) {
	cfg := config.Defaults()
	cfg.Finish()
	if cfg.Socket != client.DefaultSocket {
		t.Errorf("the daemon's default socket is %s, client.DefaultSocket %s", cfg.Socket, client.DefaultSocket)
	}
}

func TestUnreachable(t *testing.T) {
	c := &client.Client{Socket: filepath.Join(t.TempDir(), "none.sock")}
	_, err := c.Version(context.Background())
	if !errors.Is(err, client.ErrDaemonUnreachable) || client.IsNotFound(err) {
		t.Errorf("Version on a missing socket = %v, want ErrDaemonUnreachable", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.ListVMs(ctx); !errors.Is(err, client.ErrDaemonUnreachable) || !errors.Is(err, context.Canceled) {
		t.Errorf("ListVMs with a cancelled context = %v, want ErrDaemonUnreachable wrapping context.Canceled", err)
	}
}
