package cli

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

func (a *app) sessionCmd() *cobra.Command {
	return group(&cobra.Command{Use: "session", Short: "Long-running guest processes whose logs outlive the VM"},
		a.sessionStartCmd(), a.sessionListCmd(), a.sessionLogsCmd(), a.sessionSendCmd(), a.sessionStopCmd())
}

func (a *app) sessionStartCmd() *cobra.Command {
	var req client.StartSessionRequest
	cmd := &cobra.Command{
		Use:   "start NAME [--name S] [--stdin] [--cwd DIR] [--env K=V] [--user U] -- CMD...",
		Short: "Start CMD detached in the guest; returns at once",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkUser(req.User); err != nil {
				return err
			}
			req.Argv = args[1:]
			c, err := a.api()
			if err != nil {
				return err
			}
			gs, err := c.StartSession(a.ctx, args[0], req)
			if err != nil {
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
	userFlag(cmd, &req.User)
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
			list, err := c.ListSessions(a.ctx, args[0])
			if err != nil {
				return err
			}
			var rows [][]string
			for _, s := range list {
				code, ended := "-", "-"
				if s.ExitCode != nil {
					code = strconv.Itoa(*s.ExitCode)
				}
				if s.EndedAt != nil {
					ended = ago(*s.EndedAt)
				}
				rows = append(rows, []string{s.Name, string(s.Status), code, ago(s.StartedAt), ended, strings.Join(s.Command, " ")})
			}
			return a.render(output, list, []string{"NAME", "STATUS", "EXIT", "STARTED", "ENDED", "COMMAND"}, rows)
		},
	}
	outputFlag(cmd, &output)
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
			body, err := c.SessionLogs(a.ctx, args[0], args[1], client.SessionLogsOptions{Stream: stream, Tail: tail, Follow: follow})
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
			data, err := io.ReadAll(io.LimitReader(body, client.MaxBodyBytes+1))
			if err != nil {
				return err
			}
			if len(data) > client.MaxBodyBytes {
				return usageError{fmt.Errorf("send: at most %d bytes at a time", client.MaxBodyBytes)}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			return c.SendSession(a.ctx, args[0], args[1], bytes.NewReader(data))
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
			gs, err := c.StopSession(a.ctx, args[0], args[1], client.StopSessionRequest{Signal: sig, GraceSeconds: int64(grace.Seconds())})
			if err != nil {
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
