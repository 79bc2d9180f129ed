package daemon

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/guest/guesttest"
	"github.com/banger-dev/banger/internal/model"
	"golang.org/x/crypto/ssh"
)

// A burst of execs on a VM with no SSH connection yet makes one handshake,
// not one per exec: eight at once once met a loaded guest (and dropbear's
// limit on unauthenticated connections per address) that closed some of
// them, and those execs failed with EOF.
func TestConcurrentExecsShareOneDial(t *testing.T) {
	var srv *guesttest.Server
	var addrMu sync.Mutex
	e := newEnvWith(t, envOpts{}, func(d *Deps) {
		d.GuestAddr = func(model.VMRecord) string {
			addrMu.Lock()
			defer addrMu.Unlock()
			return srv.Addr
		}
	})
	key, err := os.ReadFile(e.cfg.SSHKeyPath)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	addrMu.Lock()
	srv = guesttest.Start(t, guesttest.Options{ClientKey: signer.PublicKey()})
	addrMu.Unlock()
	e.importImage()
	e.createStarted("burst")
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.c.Exec(ctx, "burst", client.ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo %d; exit %d", i, i)}})
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			var out bytes.Buffer
			code, err := s.Wait(&out, &out)
			if err != nil || code != i || out.String() != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("exec %d: code %d out %q err %v", i, code, out.String(), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.Accepted(); n != 1 {
		t.Errorf("%d ssh connections for 8 concurrent execs, want 1", n)
	}
}
