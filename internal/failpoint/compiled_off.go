//go:build !bangertest

package failpoint

// compiled is false in production builds: Hit reduces to "return nil" and
// nothing reads EnvVar.
const compiled = false
