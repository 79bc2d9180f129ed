// Package depcheck holds no code, only tests that enforce banger's import
// rules across the module: os/exec stays behind internal/system, and the CLI
// binary does not link the daemon's internals.
package depcheck
