package cli

import (
	"fmt"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use: "version", Short: "Print CLI and daemon versions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintf(a.stdout, "banger  %s\n", client.ClientVersion())
			c, err := a.api()
			if err != nil {
				return err
			}
			v, err := c.Version(a.ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "bangerd %s (pid %d)\n", v.Version, v.PID)
			return nil
		},
	}
}
