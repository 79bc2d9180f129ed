package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func (a *app) doctorCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use: "doctor", Short: "Check the host and list every host object banger owns", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			rep, err := c.Doctor(a.ctx)
			if err != nil {
				return err
			}
			var checks [][]string
			for _, ch := range rep.Checks {
				mark := "ok"
				if !ch.OK {
					mark = "!!"
				}
				checks = append(checks, []string{"[" + mark + "]", ch.Name, ch.Detail})
			}
			if err := a.render(output, rep, nil, checks); err != nil || output == "json" {
				return err
			}
			fmt.Fprintf(a.stdout, "\nroot disk method: %s\ndefault vmm:      %s\n", rep.RootDiskMethod, dash(rep.DefaultVMM))
			orphans := 0
			if len(rep.Objects) > 0 {
				fmt.Fprintln(a.stdout, "\nhost objects:")
				var rows [][]string
				for _, o := range rep.Objects {
					owner := o.VM
					if o.Orphan {
						owner = "ORPHAN"
						orphans++
					}
					rows = append(rows, []string{o.Kind, o.Name, owner, o.Detail})
				}
				a.printTable([]string{"KIND", "NAME", "VM", "DETAIL"}, rows)
			}
			if orphans > 0 {
				fmt.Fprintf(a.stdout, "\n%d orphaned object(s): banger gc removes them\n", orphans)
			}
			return nil
		},
	}
	outputFlag(cmd, &output)
	return cmd
}

func (a *app) gcCmd() *cobra.Command {
	var dry bool
	cmd := &cobra.Command{
		Use: "gc", Short: "Remove host objects no VM accounts for", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			resp, err := c.GC(a.ctx, dry)
			if err != nil {
				return err
			}
			verb := "removed"
			if dry {
				verb = "would remove"
			}
			for _, o := range resp.Removed {
				fmt.Fprintf(a.stdout, "%s %s %s\n", verb, o.Kind, o.Name)
			}
			if ic := resp.ImageCaches; ic != nil {
				fmt.Fprintf(a.stdout, "image caches hold %d layers (%s) and %d root filesystems (%s); banger image prune removes those no image needs\n",
					ic.Layers.Count, human(ic.Layers.Bytes), ic.Rootfs.Count, human(ic.Rootfs.Bytes))
			}
			if len(resp.Errors) > 0 {
				return errors.New(strings.Join(resp.Errors, "; "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dry, "dry-run", false, "only list what would be removed")
	return cmd
}
