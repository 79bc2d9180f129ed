package daemon

import (
	"os"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

// As root, the daemon's tests run in a private network namespace that
// vanishes with them, so tests with real bridges and taps touch nothing of
// the host's.
func TestMain(m *testing.M) { os.Exit(system.ReexecInNewNetNS(m)) }

// requireNetNS skips unless the test runs as root in a private namespace.
func requireNetNS(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a bridge and taps (in a private network namespace)")
	}
	if !system.InPrivateNetNS() {
		t.Skip("not in a private network namespace: refusing to create network objects")
	}
}
