package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// cmdPair times two commands in turn, A B A B ..., so that drift in a
// loaded machine's speed hits both alike, and prints each one's figures,
// the ratio of the medians against the target and the median of the
// ratios pair by pair. -before-a/-before-b run untimed before each run
// (making the VM a start needs), -after-a/-after-b untimed after it.
func cmdPair(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("pair", flag.ContinueOnError)
	n := fs.Int("n", 5, "measured runs of each command")
	warmup := fs.Int("warmup", 0, "unmeasured pairs first")
	labelA := fs.String("label-a", "A", "name of the first command (the numerator)")
	labelB := fs.String("label-b", "B", "name of the second command (the baseline)")
	label := fs.String("label", "ratio", "name printed with the ratio")
	cmdB := fs.String("b", "", "the second command (split on spaces; {i} expanded)")
	beforeA := fs.String("before-a", "", "command run, untimed, before each run of A")
	beforeB := fs.String("before-b", "", "command run, untimed, before each run of B")
	afterA := fs.String("after-a", "", "command run, untimed, after each run of A")
	afterB := fs.String("after-b", "", "command run, untimed, after each run of B")
	target := fs.Float64("target", 0, "ratio target (<=; 0: none)")
	saveA := fs.String("save-a", "", "write A's median in nanoseconds to this file")
	saveB := fs.String("save-b", "", "write B's median in nanoseconds to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	a, b := fs.Args(), strings.Fields(*cmdB)
	if len(a) == 0 || len(b) == 0 {
		return errors.New("want -b 'COMMAND B' and -- COMMAND A")
	}
	if *n < 1 {
		return fmt.Errorf("-n %d: want at least 1", *n)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	side := func(name string, argv []string, before, after string) func(i int) (time.Duration, error) {
		bv, av := strings.Fields(before), strings.Fields(after)
		return func(i int) (time.Duration, error) {
			if len(bv) > 0 {
				if _, err := runOnce(ctx, expand(bv, i), devnull); err != nil {
					return 0, fmt.Errorf("%s: before: %w", name, err)
				}
			}
			d, err := runOnce(ctx, expand(argv, i), devnull)
			if err != nil {
				return d, fmt.Errorf("%s: %w", name, err)
			}
			if len(av) > 0 {
				if _, err := runOnce(ctx, expand(av, i), devnull); err != nil {
					return d, fmt.Errorf("%s: after: %w", name, err)
				}
			}
			return d, nil
		}
	}
	runA := side(*labelA, a, *beforeA, *afterA)
	runB := side(*labelB, b, *beforeB, *afterB)
	for i := 0; i < *warmup; i++ {
		if _, err := runA(1_000_000 + i); err != nil {
			return fmt.Errorf("warmup: %w", err)
		}
		if _, err := runB(1_000_000 + i); err != nil {
			return fmt.Errorf("warmup: %w", err)
		}
	}
	da, db := make([]time.Duration, *n), make([]time.Duration, *n)
	ratios := make([]float64, *n)
	for i := 0; i < *n; i++ {
		// Alternate which goes first, so neither always follows the other's
		// cleanup.
		first, second := runA, runB
		fd, sd := &da[i], &db[i]
		if i%2 == 1 {
			first, second, fd, sd = runB, runA, &db[i], &da[i]
		}
		if *fd, err = first(i); err != nil {
			return err
		}
		if *sd, err = second(i); err != nil {
			return err
		}
		ratios[i] = float64(da[i]) / float64(db[i])
	}
	sa, sb := summarise(da), summarise(db)
	for _, x := range []struct {
		label string
		s     stats
	}{{*labelA, sa}, {*labelB, sb}} {
		fmt.Printf("%-44s n=%d median=%s p90=%s min=%s max=%s\n", x.label, x.s.n, ms(x.s.median), ms(x.s.p90), ms(x.s.min), ms(x.s.max))
	}
	r := float64(sa.median) / float64(sb.median)
	line := fmt.Sprintf("%-44s %s / %s = %.3fx (pair by pair: median %.3fx, %s)", *label, ms(sa.median), ms(sb.median), r, medianFloat(ratios), fmtRatios(ratios))
	if *target > 0 {
		line += fmt.Sprintf("  target<=%.2fx %s", *target, verdict(r <= *target))
	}
	fmt.Println(line)
	for _, s := range []struct {
		path string
		d    time.Duration
	}{{*saveA, sa.median}, {*saveB, sb.median}} {
		if s.path != "" {
			if err := os.WriteFile(s.path, []byte(strconv.FormatInt(int64(s.d), 10)+"\n"), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

func medianFloat(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return s[len(s)/2]
}

func fmtRatios(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, " ")
}
