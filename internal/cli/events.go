package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) eventsCmd() *cobra.Command {
	var output, vm string
	var follow bool
	cmd := &cobra.Command{
		Use:   "events [-f] [--vm NAME] [-o json]",
		Short: "List (and with -f follow) VM lifecycle events with their times and causes",
		Long: "List the daemon's kept events, oldest first: created, started, stopped, deleted,\n" +
			"ttl-expired, vmm-exited, reconciled (kept or demoted at daemon start) and gc-removed,\n" +
			"with the time, the VM, the cause and how long the operation took. With -f, keep\n" +
			"printing new events as they happen (with -o json, one JSON object per line).\n" +
			"The daemon keeps the newest events_keep (10000) events.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if cmd.Flags().Changed("vm") && vm == "" {
				return usageError{fmt.Errorf("invalid --vm: empty")}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			if !follow {
				evs, err := c.Events(a.ctx, vm)
				if err != nil {
					return err
				}
				var rows [][]string
				for _, ev := range evs {
					rows = append(rows, eventRow(ev))
				}
				return a.render(output, evs, []string{"TIME", "KIND", "VM", "CAUSE", "TOOK"}, rows)
			}
			enc := json.NewEncoder(a.stdout)
			if output != "json" {
				fmt.Fprintf(a.stdout, "%-19s  %-12s  %-20s  %s\n", "TIME", "KIND", "VM", "CAUSE")
			}
			err = c.FollowEvents(a.ctx, vm, func(ev client.Event) error {
				if output == "json" {
					return enc.Encode(ev)
				}
				r := eventRow(ev)
				cause := r[3]
				if r[4] != "-" {
					cause += " (" + r[4] + ")"
				}
				_, err := fmt.Fprintf(a.stdout, "%-19s  %-12s  %-20s  %s\n", r[0], r[1], r[2], cause)
				return err
			})
			if a.ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	outputFlag(cmd, &output)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events as they happen")
	cmd.Flags().StringVar(&vm, "vm", "", "only this VM's events")
	return cmd
}

func eventRow(ev client.Event) []string {
	took := "-"
	if ev.TookMillis > 0 {
		took = (time.Duration(ev.TookMillis) * time.Millisecond).String()
	}
	return []string{ev.Time.Local().Format("2006-01-02 15:04:05"), ev.Kind, dash(ev.VMName), dash(ev.Cause), took}
}
