package cli

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/units"

	"github.com/spf13/cobra"
)

func (a *app) vmTTLCmd() *cobra.Command {
	var action string
	cmd := &cobra.Command{
		Use:   "ttl NAME DURATION|+DURATION|none [--action delete|stop]",
		Short: "Set a VM's TTL: DURATION from now (1h, 7d), +DURATION more than now, or none",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := ttlRequest(args[1], action)
			if err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			vm, err := c.SetTTL(a.ctx, args[0], req)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: %s\n", vm.Name, lifetime(vm.Spec.Options, time.Now()))
			return nil
		},
	}
	cmd.Flags().StringVar(&action, "action", "", "what happens when the TTL expires: delete or stop (default: unchanged, else delete)")
	return cmd
}

// ttlRequest reads vm ttl's argument: "1h" (from now), "+30m" (added to
// the current expiry) or "none".
func ttlRequest(arg, action string) (client.TTLRequest, error) {
	req := client.TTLRequest{Action: action}
	switch action {
	case "", string(client.TTLDelete), string(client.TTLStop), string(client.TTLSuspend):
	default:
		return req, usageError{fmt.Errorf("invalid --action %q: want delete, stop or suspend", action)}
	}
	if arg == "none" || arg == "off" {
		if action != "" {
			return req, usageError{fmt.Errorf("--action with no ttl: nothing would expire")}
		}
		req.Clear = true
		return req, nil
	}
	s, add := strings.CutPrefix(arg, "+")
	d, err := units.ParseDuration(s)
	if err != nil {
		return req, usageError{fmt.Errorf("invalid ttl: %w (or none)", err)}
	}
	if d <= 0 {
		return req, usageError{fmt.Errorf("invalid ttl %s: want a positive duration such as 30m, 12h or 7d (or none)", arg)}
	}
	req.TTLSeconds, req.Add = int64((d+time.Second-1)/time.Second), add
	return req, nil
}

// lifetime says when a VM expires and how long it may idle, for vm show
// and vm ttl.
func lifetime(o client.VMOptions, now time.Time) string {
	var parts []string
	if !o.ExpiresAt.IsZero() {
		action := o.TTLAction
		if action == "" {
			action = client.TTLDelete
		}
		parts = append(parts, fmt.Sprintf("%s at %s (%s)", action, o.ExpiresAt.Local().Format(time.RFC3339), until(o.ExpiresAt, now)))
	}
	if o.IdleTimeoutSeconds > 0 {
		parts = append(parts, fmt.Sprintf("stop after %s idle", time.Duration(o.IdleTimeoutSeconds)*time.Second))
	}
	if len(parts) == 0 {
		return "no ttl, no idle timeout"
	}
	return strings.Join(parts, "; ")
}

// until is a short "in 29m" (or "overdue") for vm list.
func until(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d <= 0:
		return "due now"
	case d < time.Minute:
		return fmt.Sprintf("in %ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("in %dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("in %dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("in %dd", int(d.Hours()/24))
}

// expiresColumn is vm list's EXPIRES: the TTL's time left and action.
func expiresColumn(o client.VMOptions, now time.Time) string {
	if o.ExpiresAt.IsZero() {
		return "-"
	}
	s := until(o.ExpiresAt, now)
	if o.TTLAction == client.TTLStop {
		s += " (stop)"
	}
	return s
}

// idleColumn is vm list's IDLE: the idle timeout.
func idleColumn(o client.VMOptions) string {
	if o.IdleTimeoutSeconds == 0 {
		return "-"
	}
	return (time.Duration(o.IdleTimeoutSeconds) * time.Second).String()
}

func (a *app) vmStatsCmd() *cobra.Command {
	var output string
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "stats NAME [--watch] [-o json]",
		Short: "Show a running VM's CPU, memory, disk and network counters (and lifetime)",
		Long: "Show a running VM's counters: CPU time, memory, disk bytes read and written (its\n" +
			"cgroup when confined, else its VMM process), network bytes and packets as the guest\n" +
			"sees them (its tap), its last activity and lifetime. With --watch, print one line\n" +
			"per --interval with rates until interrupted (with -o json, one object per line).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if interval < 100*time.Millisecond {
				return usageError{fmt.Errorf("invalid --interval %s: want at least 100ms", interval)}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			st, err := c.VMStats(a.ctx, args[0])
			if err != nil {
				return err
			}
			if !watch {
				return a.render(output, st, nil, statsRows(st))
			}
			return a.watchStats(c, args[0], st, output, interval)
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "keep printing samples with rates until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "time between samples with --watch")
	return cmd
}

func statsRows(st client.VMStats) [][]string {
	var rows [][]string
	row := func(k, v string) { rows = append(rows, []string{k + ":", v}) }
	row("VM", st.Name)
	row("Source", st.Source)
	row("CPU time", fmt.Sprintf("%.2fs", st.CPUSeconds))
	row("Memory", approx(st.MemoryBytes))
	row("Disk", fmt.Sprintf("read %s, written %s", approx(st.DiskReadBytes), approx(st.DiskWriteBytes)))
	if st.Tap != "" {
		row("Network", fmt.Sprintf("received %s (%d packets), sent %s (%d packets) on %s", approx(st.NetRxBytes), st.NetRxPackets,
			approx(st.NetTxBytes), st.NetTxPackets, st.Tap))
	} else {
		row("Network", "-")
	}
	row("Last activity", ago(st.LastActivity))
	o := client.VMOptions{ExpiresAt: st.ExpiresAt, IdleTimeoutSeconds: st.IdleTimeoutSeconds}
	row("Lifetime", lifetime(o, st.Time))
	return rows
}

// watchStats prints a sample per interval with the rates since the one
// before, until interrupted or the VM stops.
func (a *app) watchStats(c *client.Client, name string, prev client.VMStats, output string, interval time.Duration) error {
	if output == "json" {
		if err := a.printJSONLine(prev); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.stdout, "%-8s  %6s  %9s  %10s  %10s  %10s  %10s\n", "TIME", "CPU%", "MEMORY", "DISK R/s", "DISK W/s", "NET RX/s", "NET TX/s")
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := c.VMStats(a.ctx, name)
		if err != nil {
			if a.ctx.Err() != nil {
				return nil
			}
			return err
		}
		if output == "json" {
			if err := a.printJSONLine(st); err != nil {
				return err
			}
		} else {
			dt := st.Time.Sub(prev.Time).Seconds()
			if dt <= 0 {
				dt = interval.Seconds()
			}
			rate := func(now, before int64) string { return approx(max(0, int64(float64(now-before)/dt))) }
			fmt.Fprintf(a.stdout, "%-8s  %6.1f  %9s  %10s  %10s  %10s  %10s\n", st.Time.Local().Format("15:04:05"),
				max(0, (st.CPUSeconds-prev.CPUSeconds)/dt*100), approx(st.MemoryBytes),
				rate(st.DiskReadBytes, prev.DiskReadBytes), rate(st.DiskWriteBytes, prev.DiskWriteBytes),
				rate(st.NetRxBytes, prev.NetRxBytes), rate(st.NetTxBytes, prev.NetTxBytes))
		}
		prev = st
	}
}

// approx is a byte count in a short, rounded form (1.5MiB).
func approx(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f, i := float64(n), 0
	for f >= unit && i < 5 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f%s", f, []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}[i])
}

func (a *app) printJSONLine(v any) error { return json.NewEncoder(a.stdout).Encode(v) }
