package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runMan runs "banger __man DIR" through Run, as make man does.
func runMan(t *testing.T, dir string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := Run(context.Background(), []string{"__man", dir}, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// visibleCommands walks a fresh command tree independently of man.go:
// every command help lists, by its man page name.
func visibleCommands() map[string]*cobra.Command {
	out := map[string]*cobra.Command{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		out[strings.ReplaceAll(c.CommandPath(), " ", "-")] = c
		for _, s := range c.Commands() {
			if !s.Hidden && s.Deprecated == "" && s.Name() != "help" {
				walk(s)
			}
		}
	}
	walk((&app{}).rootCmd())
	return out
}

// One page per command, no more: not for the hidden __man, not for help.
// It works with a broken config file, as a package build may meet one.
func TestManPagesForEveryCommand(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(bad, []byte("this is = = not toml"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BANGER_CONFIG", bad)
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	dir := filepath.Join(t.TempDir(), "man")
	code, out, errOut := runMan(t, dir)
	if code != 0 {
		t.Fatalf("__man: exit %d: %s", code, errOut)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	cmds := visibleCommands()
	var want []string
	for name := range cmds {
		want = append(want, name+".1")
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("pages:\n got %q\nwant %q", got, want)
	}
	for _, must := range []string{"banger.1", "banger-vm-run.1", "banger-daemon-status.1", "banger-vm-session-start.1", "banger-completion.1"} {
		if !slices.Contains(got, must) {
			t.Errorf("no %s among %q", must, got)
		}
	}
	if !strings.Contains(out, "man pages in "+dir) {
		t.Errorf("stdout %q", out)
	}

	for name, c := range cmds {
		b, err := os.ReadFile(filepath.Join(dir, name+".1"))
		if err != nil {
			t.Fatal(err)
		}
		page := string(b)
		esc := roffText(name)
		for _, want := range []string{
			`.TH "` + strings.ToUpper(esc) + `" 1 "2023\-11\-14" "banger `,
			".SH NAME\n" + esc + ` \- ` + roffText(c.Short) + "\n",
			".SH SYNOPSIS\n.B " + roffText(c.CommandPath()) + "\n",
		} {
			if !strings.Contains(page, want) {
				t.Errorf("%s.1 lacks %q:\n%s", name, want, page)
			}
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !f.Hidden && !strings.Contains(page, `\fB`+roffText("--"+f.Name)+`\fR`) {
				t.Errorf("%s.1 does not document --%s", name, f.Name)
			}
		})
		for _, s := range c.Commands() {
			if s.IsAvailableCommand() && !strings.Contains(page, roffText(name+"-"+s.Name())) {
				t.Errorf("%s.1 does not point to its subcommand %s", name, s.Name())
			}
		}
		if c.HasParent() && !strings.Contains(page, ".SH SEE ALSO\n.BR "+roffText(strings.ReplaceAll(c.Parent().CommandPath(), " ", "-"))+" (1)") {
			t.Errorf("%s.1 does not point back to its parent", name)
		}
	}
	root, _ := os.ReadFile(filepath.Join(dir, "banger.1"))
	for _, want := range []string{".SH EXIT STATUS\n", ".SH ENVIRONMENT\n", ".SH FILES\n", ".I /etc/banger/config.toml\n", "bangerd.service"} {
		if !strings.Contains(string(root), want) {
			t.Errorf("banger.1 lacks %q", want)
		}
	}

	// groff, where installed, renders every page without a warning.
	if _, err := system.LookPath("groff"); err != nil {
		t.Logf("groff not installed: pages not rendered (%v)", err)
		return
	}
	for _, name := range got {
		var stderr bytes.Buffer
		cmd, err := system.StartCommand(context.Background(), system.CommandSpec{
			Argv: []string{"groff", "-man", "-Tutf8", "-ww", "-z", filepath.Join(dir, name)}, Stderr: &stderr,
		})
		if err != nil {
			t.Fatal(err)
		}
		st, err := cmd.Wait()
		if err != nil || st.Code != 0 || stderr.Len() > 0 {
			t.Errorf("groff %s: exit %d (%v): %s", name, st.Code, err, stderr.String())
		}
	}
}

func TestManDate(t *testing.T) {
	d, err := manDate("0")
	if err != nil || !d.Equal(time.Unix(0, 0)) {
		t.Errorf("manDate(0) = %v, %v", d, err)
	}
	if d, err := manDate(""); err != nil || time.Since(d) > time.Minute {
		t.Errorf("manDate(\"\") = %v, %v: want now", d, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if code, _, errOut := runMan(t, t.TempDir()); code != ExitUsage || !strings.Contains(errOut, "SOURCE_DATE_EPOCH") {
		t.Errorf("__man with SOURCE_DATE_EPOCH=yesterday: exit %d, %q", code, errOut)
	}
}

func TestRoffText(t *testing.T) {
	for in, want := range map[string]string{
		"plain":          "plain",
		"--name N":       `\-\-name N`,
		`C:\path`:        `C:\epath`,
		".starts a req":  `\&.starts a req`,
		"'also a req":    `\&'also a req`,
		"a\n.b\n'c\nd.e": "a\n\\&.b\n\\&'c\nd.e",
	} {
		if got := roffText(in); got != want {
			t.Errorf("roffText(%q) = %q, want %q", in, got, want)
		}
	}
	if got := roffQuote(`say "hi"`); got != `"say \(dqhi\(dq"` {
		t.Errorf("roffQuote = %q", got)
	}
}

// The command is hidden: not in help, not in completions.
func TestManCommandHidden(t *testing.T) {
	var stdout, stderr bytes.Buffer
	Run(context.Background(), []string{"--help"}, strings.NewReader(""), &stdout, &stderr)
	if strings.Contains(stdout.String(), "__man") {
		t.Errorf("help lists __man:\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "daemon") {
		t.Fatalf("help output unexpected, the check above proves nothing:\n%s", stdout.String())
	}
}
