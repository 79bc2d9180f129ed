package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// hostSem serialises loop and dm setup inside this process; the flock in
// lockHost does the same across processes (bangerd and a test, two daemons on
// one host). Finding a free loop and binding it are two steps, so two setups
// at once can pick the same device.
var hostSem = make(chan struct{}, 1)

const lockFileName = "banger-storage.lock"

// lockHost takes the host-wide setup lock, or gives up when ctx ends. The
// returned func releases it.
func (m *Manager) lockHost(ctx context.Context) (func(), error) {
	select {
	case hostSem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for host storage lock: %w", ctx.Err())
	}
	dir := m.LockDir
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		<-hostSem
		return nil, fmt.Errorf("opening host storage lock: %w", err)
	}
	// flock cannot be interrupted by a context, so poll with LOCK_NB.
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			<-hostSem
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			<-hostSem
			return nil, fmt.Errorf("waiting for host storage lock %s: %w", path, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return func() {
		f.Close() // closing the only descriptor drops the flock
		<-hostSem
	}, nil
}
