// Command benchtool measures banger for bench/run.sh: it times whole
// processes (median, p90, against a target), compares two saved medians as a
// ratio, seeds VMs through the daemon's own create path, reads a process's
// resident memory, and times the daemon's startup reconcile. Figures are
// printed as information: PASS/MISS never fails the run.
//
// Usage:
//
//	benchtool time [-n N] [-parallel P] [-warmup W] [-label L] [-target D] [-save F] [-after CMD] -- ARGV...
//	benchtool ratio -label L -num F -den F -target X
//	benchtool pair [-n N] [-label-a L] [-label-b L] [-label L] [-target X] [-before-a|-before-b|-after-a|-after-b CMD] [-save-a F] [-save-b F] -b 'ARGV B' -- ARGV A
//	benchtool logstats -log bangerd.log [-msg "vm started"] [-vm PREFIX] [-offset BYTES] [-label L]
//	benchtool seed [-n N] [-workers W] [-prefix P]
//	benchtool rss -pid PID [-label L] [-target-mib M]
//	benchtool reconcile -bangerd PATH [-n N] [-rounds R]
//	benchtool waitport -addr HOST:PORT [-timeout D]
//	benchtool ociimage -o LAYOUT [-tag T] [-packages a,b] [-layers N] [-debs DIR]
//	benchtool tcp -direct IP:PORT -forward 127.0.0.1:PORT [-echo-direct ... -echo-forward ...] [-bytes N] [-rounds R]
//
// "{i}" in ARGV, -b, -before-* and -after* is replaced by the iteration number. The daemon
// is found from the environment, as banger finds it (BANGER_RUN_DIR ...).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: benchtool time|ratio|pair|logstats|seed|rss|reconcile|waitport|tcp|ociimage ...")
		return 2
	}
	cmds := map[string]func(context.Context, []string) error{
		"time":      cmdTime,
		"ratio":     cmdRatio,
		"pair":      cmdPair,
		"logstats":  cmdLogStats,
		"seed":      cmdSeed,
		"rss":       cmdRSS,
		"reconcile": cmdReconcile,
		"waitport":  cmdWaitPort,
		"tcp":       cmdTCP,
		"ociimage":  cmdOCIImage,
	}
	fn, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "benchtool: unknown command %q\n", args[0])
		return 2
	}
	if err := fn(ctx, args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchtool "+args[0]+": "+err.Error())
		return 1
	}
	return 0
}
