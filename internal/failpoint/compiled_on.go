//go:build bangertest

package failpoint

import (
	"fmt"
	"os"
)

const compiled = true

// init reads EnvVar before any package that declares points initializes
// (they import this one), so New finds their specs in pending. A malformed
// value stops the test binary at once rather than running without the
// failpoints the test asked for.
func init() {
	s := os.Getenv(EnvVar)
	if s == "" {
		return
	}
	specs, err := parseList(s)
	if err != nil {
		panic(fmt.Sprintf("%s: %v", EnvVar, err))
	}
	pending = specs
}
