package cli

import (
	"bytes"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"

	"github.com/spf13/cobra"
)

func (a *app) sessionCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "session", Short: "Long-running guest processes whose logs outlive the VM"}
	cmd.AddCommand(a.sessionStartCmd(), a.sessionListCmd(), a.sessionLogsCmd(), a.sessionSendCmd(), a.sessionStopCmd())
	return cmd
}

func sessionPath(vm, s string) string {
	return "/v1/vms/" + url.PathEscape(vm) + "/sessions/" + url.PathEscape(s)
}

func (a *app) sessionStartCmd() *cobra.Command {
	var req api.StartSessionRequest
	cmd := &cobra.Command{
		Use:   "start NAME [--name S] [--stdin] [--cwd DIR] [--env K=V] -- CMD...",
		Short: "Start CMD detached in the guest; returns at once",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.Argv = args[1:]
			c, err := a.api()
			if err != nil {
				return err
			}
			var gs model.GuestSession
			if err := c.Do(a.ctx, "POST", "/v1/vms/"+url.PathEscape(args[0])+"/sessions", req, &gs); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, gs.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&req.Name, "name", "", "session name (generated when empty)")
	cmd.Flags().BoolVar(&req.Stdin, "stdin", false, "give the session a stdin pipe (see session send)")
	cmd.Flags().StringVar(&req.Cwd, "cwd", "", "working directory in the guest")
	cmd.Flags().StringArrayVar(&req.Env, "env", nil, "environment variable K=V (repeatable)")
	return cmd
}

func (a *app) sessionListCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list NAME",
		Short: "List a VM's sessions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			var list []model.GuestSession
			if err := c.Do(a.ctx, "GET", "/v1/vms/"+url.PathEscape(args[0])+"/sessions", nil, &list); err != nil {
				return err
			}
			if output == "json" {
				return a.printJSON(list)
			}
			tw := a.table()
			fmt.Fprintln(tw, "NAME\tSTATUS\tEXIT\tSTARTED\tENDED\tCOMMAND")
			for _, s := range list {
				code, ended := "-", "-"
				if s.ExitCode != nil {
					code = strconv.Itoa(*s.ExitCode)
				}
				if s.EndedAt != nil {
					ended = ago(*s.EndedAt)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Status, code, ago(s.StartedAt), ended, strings.Join(s.Command, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func (a *app) sessionLogsCmd() *cobra.Command {
	var stream string
	var tail int
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME SESSION",
		Short: "Print a session's output (also after the VM stopped)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < 0 {
				return usageError{fmt.Errorf("invalid --tail %d: want a number of lines >= 0", tail)}
			}
			if stream != "stdout" && stream != "stderr" {
				return usageError{fmt.Errorf("invalid --stream %q: want stdout or stderr", stream)}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			q := url.Values{"stream": {stream}, "tail": {strconv.Itoa(tail)}, "follow": {strconv.FormatBool(follow)}}
			body, err := c.Stream(a.ctx, "GET", sessionPath(args[0], args[1])+"/logs?"+q.Encode(), nil)
			if err != nil {
				return err
			}
			defer body.Close()
			_, err = io.Copy(a.stdout, body)
			if a.ctx.Err() != nil {
				return nil
			}
			return err
		},
	}
	cmd.Flags().StringVar(&stream, "stream", "stdout", "stdout or stderr")
	cmd.Flags().IntVar(&tail, "tail", 0, "only the last N lines (0: all)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the session ends")
	return cmd
}

func (a *app) sessionSendCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "send NAME SESSION [DATA | -]",
		Short: "Write bytes to a session's stdin pipe (DATA, or stdin with - or no DATA)",
		Args:  cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body io.Reader = a.stdin
			if len(args) == 3 && args[2] != "-" {
				body = strings.NewReader(args[2])
			}
			data, err := io.ReadAll(io.LimitReader(body, api.MaxBodyBytes+1))
			if err != nil {
				return err
			}
			if len(data) > api.MaxBodyBytes {
				return usageError{fmt.Errorf("send: at most %d bytes at a time", api.MaxBodyBytes)}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			return c.Do(a.ctx, "POST", sessionPath(args[0], args[1])+"/send", bytes.NewReader(data), nil)
		},
	}
}

func (a *app) sessionStopCmd() *cobra.Command {
	var sig string
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME SESSION",
		Short: "Signal a session's process group, then kill it after --grace",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.api()
			if err != nil {
				return err
			}
			var gs model.GuestSession
			if err := c.Do(a.ctx, "POST", sessionPath(args[0], args[1])+"/stop", api.StopSessionRequest{Signal: sig, GraceSeconds: int64(grace.Seconds())}, &gs); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, gs.Name, gs.Status)
			return nil
		},
	}
	cmd.Flags().StringVar(&sig, "signal", "TERM", "signal to send first")
	cmd.Flags().DurationVar(&grace, "grace", 5*time.Second, "time before SIGKILL")
	return cmd
}
