//go:build !bangertest

package daemon

import "log/slog"

// testHooks is empty in production builds: test hooks exist only in
// binaries built with the bangertest tag (see testhooks_bangertest.go).
func testHooks(*slog.Logger) Deps { return Deps{} }
