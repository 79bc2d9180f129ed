// Command banger is banger's CLI. Wiring only: see internal/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-dev/banger/internal/cli"
)

func main() {
	// SIGTERM ends the CLI; SIGINT is handled by commands that pass it on
	// to a guest, and otherwise ends the CLI too.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := cli.Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
