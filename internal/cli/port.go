package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) vmPortCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "port NAME [add|remove SPEC]",
		Short: "List, add or remove port forwards ([HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp])",
		Args:  cobra.RangeArgs(1, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 && (len(args) != 3 || args[1] != "add" && args[1] != "remove") {
				return usageError{fmt.Errorf("usage: banger vm port NAME [add|remove SPEC]")}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			var ports []string
			switch {
			case len(args) == 1:
				ports, err = c.ListPorts(a.ctx, args[0])
			case args[1] == "add":
				ports, err = c.AddPort(a.ctx, args[0], args[2])
			default:
				return c.RemovePort(a.ctx, args[0], args[2])
			}
			if err != nil {
				return err
			}
			for _, p := range ports {
				fmt.Fprintln(a.stdout, p)
			}
			return nil
		},
	}
}
