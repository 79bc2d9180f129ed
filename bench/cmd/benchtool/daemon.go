package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/system"
)

// daemonClient returns an API client for the daemon the environment names.
func daemonClient() (*client.Client, config.Config, error) {
	cfg, err := config.Load(nil)
	if err != nil {
		return nil, cfg, err
	}
	return &client.Client{Socket: cfg.Socket}, cfg, nil
}

// forEach runs fn for 0..n-1 with w workers and returns the first error.
func forEach(ctx context.Context, n, w int, fn func(i int) error) error {
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// cmdSeed creates VMs through the running daemon's create path (POST
// /v1/vms), so the rows are exactly what the daemon records.
func cmdSeed(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("seed", flag.ContinueOnError)
	n := fs.Int("n", 10000, "VMs to create")
	workers := fs.Int("workers", 4, "requests at once")
	prefix := fs.String("prefix", "seed", "name prefix")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, _, err := daemonClient()
	if err != nil {
		return err
	}
	start := time.Now()
	var lastMu sync.Mutex
	lastBatch := time.Now()
	err = forEach(ctx, *n, *workers, func(i int) error {
		if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: fmt.Sprintf("%s-%05d", *prefix, i)}); err != nil {
			return fmt.Errorf("create vm %d: %w", i, err)
		}
		if (i+1)%2000 == 0 {
			lastMu.Lock()
			fmt.Fprintf(os.Stderr, "  seeded %d (last 2000 in %s)\n", i+1, time.Since(lastBatch).Round(time.Millisecond))
			lastBatch = time.Now()
			lastMu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	took := time.Since(start)
	fmt.Printf("%-44s %d VMs in %s (%.0f/s, %.2fms each through POST /v1/vms)\n", "seed via daemon create path", *n,
		took.Round(time.Millisecond), float64(*n)/took.Seconds(), float64(took)/float64(*n)/1e6)
	return nil
}

// cmdReconcile times startup reconcile: N VMs recorded running, half of them
// alive (real fc-double processes that outlived the daemon) and half dead
// with stale handles.json files. Each round starts every VM, stops the
// daemon, kills half the VMMs, then starts bangerd and times it to ready.
func cmdReconcile(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	n := fs.Int("n", 200, "VMs recorded running")
	rounds := fs.Int("rounds", 3, "measured daemon restarts")
	bangerd := fs.String("bangerd", "", "bangerd binary")
	workers := fs.Int("workers", 4, "requests at once while preparing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *bangerd == "" {
		return errors.New("-bangerd is required")
	}
	c, cfg, err := daemonClient()
	if err != nil {
		return err
	}
	names := make([]string, *n)
	for i := range names {
		names[i] = fmt.Sprintf("rec-%03d", i)
	}
	prep := time.Now()
	if err := forEach(ctx, *n, *workers, func(i int) error {
		_, err := c.CreateVM(ctx, client.CreateVMRequest{Name: names[i], MemoryMiB: 128, VCPUs: 1})
		return err
	}); err != nil {
		return fmt.Errorf("creating vms: %w", err)
	}
	fmt.Fprintf(os.Stderr, "  created %d VMs in %s\n", *n, time.Since(prep).Round(time.Millisecond))
	var tookReady, tookLog []time.Duration
	for round := 0; round < *rounds; round++ {
		prep = time.Now()
		if err := forEach(ctx, *n, *workers, func(i int) error {
			_, err := c.StartVM(ctx, names[i])
			return err
		}); err != nil {
			return fmt.Errorf("starting vms: %w", err)
		}
		fmt.Fprintf(os.Stderr, "  round %d: started %d VMs in %s\n", round+1, *n, time.Since(prep).Round(time.Millisecond))
		vms, err := c.ListVMs(ctx)
		if err != nil {
			return err
		}
		if err := stopDaemon(ctx, c); err != nil {
			return err
		}
		// Kill the VMMs of every other VM: their handles.json goes stale.
		killed := 0
		for _, vm := range vms {
			if !strings.HasPrefix(vm.Name, "rec-") || vm.Live == nil || vm.Live.Handles.PID == 0 {
				continue
			}
			var idx int
			fmt.Sscanf(vm.Name, "rec-%d", &idx)
			if idx%2 == 1 {
				p := system.Process{PID: vm.Live.Handles.PID, Start: vm.Live.Handles.PIDStart}
				if err := p.Kill(3 * time.Second); err != nil {
					return fmt.Errorf("killing vmm of %s: %w", vm.Name, err)
				}
				killed++
			}
		}
		logPath := filepath.Join(cfg.StateDir, "bangerd.log")
		logOffset := fileSize(logPath)
		start := time.Now()
		p, err := system.StartDetached(system.DetachedSpec{Argv: []string{*bangerd}, LogPath: filepath.Join(cfg.StateDir, "bangerd.out"), Dir: "/"})
		if err != nil {
			return err
		}
		ready := false
		for time.Since(start) < 60*time.Second {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			v, err := c.Version(cctx)
			cancel()
			if err == nil && v.Ready {
				ready = true
				break
			}
			if !p.Alive() {
				return fmt.Errorf("bangerd exited during startup; see %s", logPath)
			}
			time.Sleep(time.Millisecond)
		}
		took := time.Since(start)
		if !ready {
			return fmt.Errorf("bangerd not ready after %s", took)
		}
		tookReady = append(tookReady, took)
		logTook, line := reconcileLogLine(logPath, logOffset)
		if logTook > 0 {
			tookLog = append(tookLog, logTook)
		}
		fmt.Fprintf(os.Stderr, "  round %d: killed %d, start->ready %s; log: %s\n", round+1, killed, took.Round(time.Millisecond), line)
	}
	s, l := summarise(tookReady), summarise(tookLog)
	fmt.Printf("%-44s n=%d median=%s p90=%s (reconcile took= median %s)  target<2000ms %s\n",
		fmt.Sprintf("reconcile %d running (half dead)", *n), s.n, ms(s.median), ms(s.p90), ms(l.median), verdict(s.median < 2*time.Second))
	// Leave nothing behind: force-delete the VMs (their VMMs are killed).
	return forEach(ctx, *n, *workers, func(i int) error { return c.DeleteVM(ctx, names[i], true) })
}

// stopDaemon asks the daemon to shut down and waits for its process to go,
// so the state-dir lock is free for the next one.
func stopDaemon(ctx context.Context, c *client.Client) error {
	v, err := c.Version(ctx)
	if err != nil {
		return err
	}
	st, _ := system.ProcStartTime(v.PID)
	if err := c.Shutdown(ctx); err != nil {
		return err
	}
	if !(system.Process{PID: v.PID, Start: st}).WaitExit(15 * time.Second) {
		return fmt.Errorf("bangerd pid %d did not exit", v.PID)
	}
	return nil
}

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// reconcileLogLine finds the "reconcile done" line written after offset and
// returns its took= value.
func reconcileLogLine(path string, offset int64) (time.Duration, string) {
	f, err := os.Open(path)
	if err != nil {
		return 0, ""
	}
	defer f.Close()
	f.Seek(offset, 0)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "reconcile done") {
			continue
		}
		for _, kv := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(kv, "took="); ok {
				d, _ := time.ParseDuration(v)
				return d, strings.TrimSpace(line[strings.Index(line, "msg="):])
			}
		}
		return 0, line
	}
	return 0, "(no reconcile line)"
}
