package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// stats summarises a set of durations.
type stats struct {
	n                     int
	median, p90, min, max time.Duration
}

func summarise(ds []time.Duration) stats {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return stats{}
	}
	return stats{n: len(s), median: percentile(s, 50), p90: percentile(s, 90), min: s[0], max: s[len(s)-1]}
}

// percentile of sorted s, nearest-rank; the median of an even count is the
// mean of the two middle values.
func percentile(s []time.Duration, p int) time.Duration {
	if p == 50 && len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	i := (p*len(s) + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

func expand(argv []string, i int) []string {
	out := make([]string, len(argv))
	for j, a := range argv {
		out[j] = strings.ReplaceAll(a, "{i}", strconv.Itoa(i))
	}
	return out
}

// runOnce runs argv to completion with stdout on /dev/null and returns how
// long the process took, from just before the fork to its reaping.
func runOnce(ctx context.Context, argv []string, devnull *os.File) (time.Duration, error) {
	var stderr bytes.Buffer
	start := time.Now()
	c, err := system.StartCommand(ctx, system.CommandSpec{Argv: argv, Stdout: devnull, Stderr: &stderr})
	if err != nil {
		return 0, err
	}
	st, err := c.Wait()
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	if st.Code != 0 {
		return took, fmt.Errorf("%s: exit %d: %s", strings.Join(argv, " "), st.Code, strings.TrimSpace(stderr.String()))
	}
	return took, nil
}

func cmdTime(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("time", flag.ContinueOnError)
	n := fs.Int("n", 30, "measured runs")
	parallel := fs.Int("parallel", 1, "runs at once")
	warmup := fs.Int("warmup", 2, "unmeasured runs first (serial)")
	label := fs.String("label", "", "name printed with the figures")
	target := fs.Duration("target", 0, "median target (0: none)")
	save := fs.String("save", "", "write the median in nanoseconds to this file")
	after := fs.String("after", "", "command run, untimed, after each run ({i} expanded)")
	offset := fs.Int("offset", 0, "first iteration number")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return errors.New("no command given")
	}
	if *label == "" {
		*label = strings.Join(argv, " ")
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	afterArgv := strings.Fields(*after)
	one := func(i int) (time.Duration, error) {
		d, err := runOnce(ctx, expand(argv, i), devnull)
		if err != nil {
			return d, err
		}
		if len(afterArgv) > 0 {
			if _, err := runOnce(ctx, expand(afterArgv, i), devnull); err != nil {
				return d, fmt.Errorf("after: %w", err)
			}
		}
		return d, nil
	}
	for i := 0; i < *warmup; i++ {
		if _, err := one(*offset + 1_000_000 + i); err != nil {
			return fmt.Errorf("warmup: %w", err)
		}
	}
	ds := make([]time.Duration, *n)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	wallStart := time.Now()
	for w := 0; w < *parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= *n || ctx.Err() != nil {
					return
				}
				d, err := one(*offset + i)
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				ds[i] = d
			}
		}()
	}
	wg.Wait()
	wall := time.Since(wallStart)
	if firstErr != nil {
		return firstErr
	}
	s := summarise(ds)
	line := fmt.Sprintf("%-44s n=%d parallel=%d median=%s p90=%s min=%s max=%s wall=%s",
		*label, s.n, *parallel, ms(s.median), ms(s.p90), ms(s.min), ms(s.max), ms(wall))
	if *target > 0 {
		line += fmt.Sprintf("  target<%s %s", ms(*target), verdict(s.median < *target))
	}
	fmt.Println(line)
	if *save != "" {
		return os.WriteFile(*save, []byte(strconv.FormatInt(int64(s.median), 10)+"\n"), 0o644)
	}
	return nil
}

func readSaved(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(v), nil
}

func cmdRatio(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ratio", flag.ContinueOnError)
	label := fs.String("label", "ratio", "name printed with the figure")
	num := fs.String("num", "", "file with the numerator's median (banger)")
	den := fs.String("den", "", "file with the denominator's median (baseline)")
	target := fs.Float64("target", 0, "ratio target (<=)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	a, err := readSaved(*num)
	if err != nil {
		return err
	}
	b, err := readSaved(*den)
	if err != nil {
		return err
	}
	if b <= 0 {
		return fmt.Errorf("baseline median is %s", b)
	}
	r := float64(a) / float64(b)
	line := fmt.Sprintf("%-44s %s / %s = %.2fx", *label, ms(a), ms(b), r)
	if *target > 0 {
		line += fmt.Sprintf("  target<=%.2fx %s", *target, verdict(r <= *target))
	}
	fmt.Println(line)
	return nil
}

func cmdRSS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("rss", flag.ContinueOnError)
	pid := fs.Int("pid", 0, "process id")
	label := fs.String("label", "bangerd VmRSS", "name printed with the figure")
	target := fs.Float64("target-mib", 0, "target in MiB (<)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", *pid))
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		kb, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return fmt.Errorf("parse VmRSS %q: %w", rest, err)
		}
		mib := kb / 1024
		out := fmt.Sprintf("%-44s %.1f MiB", *label, mib)
		if *target > 0 {
			out += fmt.Sprintf("  target<%.0f MiB %s", *target, verdict(mib < *target))
		}
		fmt.Println(out)
		return nil
	}
	return fmt.Errorf("no VmRSS in /proc/%d/status", *pid)
}

// cmdWaitPort polls a TCP address until it accepts a connection: every
// 20ms, each attempt bounded to 200ms (an address without a host yet never
// answers ARP, and the kernel would wait seconds).
func cmdWaitPort(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("waitport", flag.ContinueOnError)
	addr := fs.String("addr", "", "host:port")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after")
	if err := fs.Parse(args); err != nil {
		return err
	}
	deadline := time.Now().Add(*timeout)
	for {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		c, err := d.DialContext(dctx, "tcp", *addr)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s did not answer within %s: %w", *addr, *timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
