//go:build bangertest

package daemon

import (
	"log/slog"
	"os"

	"github.com/banger-dev/banger/internal/model"
)

// testHooks reads the two test-only settings that let the CLI's end-to-end
// scripts stand a host process in for every guest: BANGER_TEST_GUEST_ADDR
// (where every VM's SSH server answers) and BANGER_TEST_GUEST_SESSIONS_ROOT
// (the guest directory of sessions). Production builds (without the bangertest
// tag) do not contain this file and read no such variable.
func testHooks(logger *slog.Logger) Deps {
	var deps Deps
	if addr := os.Getenv("BANGER_TEST_GUEST_ADDR"); addr != "" {
		logger.Warn("test hook: every vm's ssh is served at " + addr)
		deps.GuestAddr = func(model.VMRecord) string { return addr }
	}
	deps.GuestSessionsRoot = os.Getenv("BANGER_TEST_GUEST_SESSIONS_ROOT")
	return deps
}
