package cli

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

// Warm pools: VMs restored from a snapshot and kept paused, claimed by
// vm run --pool in about the time of a resume.
func (a *app) poolCmd() *cobra.Command {
	var from string
	var size int
	var wait bool
	var timeout time.Duration
	create := &cobra.Command{
		Use: "create NAME --from SNAP --size N", Short: "Keep N VMs restored from a snapshot, paused, for vm run --pool",
		Long: "Keep N VMs restored from a snapshot, each with its own name, IP and SSH host key, paused\n" +
			"until vm run --pool NAME claims one; the pool then makes another in the background.\n" +
			"The members hold their memory while they wait. With --wait, return once all N are ready.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if from == "" {
				return usageError{fmt.Errorf("a pool needs --from SNAP (banger snapshot list shows them)")}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			p, err := c.CreatePool(a.ctx, client.CreatePoolRequest{Name: args[0], Snapshot: from, Size: size})
			if err != nil {
				return err
			}
			if wait {
				if p, err = a.waitPoolReady(c, p.Name, timeout); err != nil {
					return err
				}
			}
			fmt.Fprintf(a.stdout, "%s: %d of %d ready\n", p.Name, p.Ready, p.Size)
			return nil
		},
	}
	create.Flags().StringVar(&from, "from", "", "the snapshot the members are restored from")
	create.Flags().IntVar(&size, "size", 1, "how many members to keep ready")
	create.Flags().BoolVar(&wait, "wait", false, "wait until every member is ready")
	create.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "how long --wait waits")

	var output string
	list := &cobra.Command{
		Use: "list", Aliases: []string{"ls"}, Short: "List warm pools", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			pools, err := c.ListPools(a.ctx)
			if err != nil {
				return err
			}
			var rows [][]string
			for _, p := range pools {
				rows = append(rows, []string{p.Name, p.Snapshot, strconv.Itoa(p.Size), strconv.Itoa(p.Ready), strconv.Itoa(p.Warming), oneLine(p.LastError)})
			}
			return a.render(output, pools, []string{"NAME", "SNAPSHOT", "SIZE", "READY", "WARMING", "LAST ERROR"}, rows)
		},
	}
	outputFlag(list, &output)
	show := &cobra.Command{
		Use: "show POOL", Short: "Show a pool and its members", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			p, err := c.GetPool(a.ctx, args[0])
			if err != nil {
				return err
			}
			return a.printJSON(p)
		},
	}
	del := &cobra.Command{
		Use: "delete POOL", Aliases: []string{"rm"}, Short: "Delete a pool and its members (VMs claimed from it stay)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			return c.DeletePool(a.ctx, args[0])
		},
	}
	return group(&cobra.Command{Use: "pool", Short: "Manage warm pools of paused VMs"}, create, list, show, del)
}

// waitPoolReady polls a pool until all its members are ready.
func (a *app) waitPoolReady(c *client.Client, name string, timeout time.Duration) (client.Pool, error) {
	deadline := time.Now().Add(timeout)
	for {
		p, err := c.GetPool(a.ctx, name)
		if err != nil || p.Ready >= p.Size {
			return p, err
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("pool %s: %d of %d ready after %s", name, p.Ready, p.Size, timeout)
			if p.LastError != "" {
				msg += "; last error: " + p.LastError
			}
			return p, fmt.Errorf("%s", msg)
		}
		select {
		case <-a.ctx.Done():
			return p, a.ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}
