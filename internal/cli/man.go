package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/config"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// manCmd is the hidden "banger __man DIR" that make man and make install
// run: one roff page in section 1 per visible command, named after the
// command path (banger.1, banger-vm.1, banger-vm-run.1, ...). The pages are
// written here rather than with cobra/doc, which would add go-md2man and a
// YAML library to the module for a build step. SOURCE_DATE_EPOCH, when set,
// dates the pages (reproducible packages).
func (a *app) manCmd() *cobra.Command {
	return &cobra.Command{
		Use: "__man DIR", Short: "Write the man pages of every command into DIR", Hidden: true,
		Args: cobra.ExactArgs(1),
		// The pages do not depend on the settings: a broken config file must
		// not stop a build.
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, args []string) error {
			date, err := manDate(os.Getenv("SOURCE_DATE_EPOCH"))
			if err != nil {
				return usageError{err}
			}
			n, err := writeManPages(cmd.Root(), args[0], date, client.ClientVersion())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%d man pages in %s\n", n, args[0])
			return nil
		},
	}
}

// manDate is the date a page carries: SOURCE_DATE_EPOCH (seconds) if set,
// else now.
func manDate(epoch string) (time.Time, error) {
	if epoch == "" {
		return time.Now().UTC(), nil
	}
	s, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", epoch)
	}
	return time.Unix(s, 0).UTC(), nil
}

// manCommands lists root and every command below it that help would show
// (not hidden, not deprecated, not cobra's help command), parents first.
func manCommands(root *cobra.Command) []*cobra.Command {
	out := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if c.IsAvailableCommand() && !c.IsAdditionalHelpTopicCommand() {
			out = append(out, manCommands(c)...)
		}
	}
	return out
}

// manName is a command's page name: its path with dashes, "banger-vm-run".
func manName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-")
}

// writeManPages writes one page per command of root's tree into dir and
// returns how many it wrote.
func writeManPages(root *cobra.Command, dir string, date time.Time, version string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	cmds := manCommands(root)
	for _, c := range cmds {
		p := filepath.Join(dir, manName(c)+".1")
		if err := os.WriteFile(p, manPage(c, date, version), 0o644); err != nil {
			return 0, err
		}
	}
	return len(cmds), nil
}

// manPage renders one command as a man(7) page.
func manPage(c *cobra.Command, date time.Time, version string) []byte {
	var b bytes.Buffer
	name := manName(c)
	fmt.Fprintf(&b, ".TH %s 1 %s %s %s\n", roffQuote(strings.ToUpper(name)), roffQuote(date.Format("2006-01-02")),
		roffQuote("banger "+version), roffQuote("banger manual"))
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", roffText(name), roffText(c.Short))

	b.WriteString(".SH SYNOPSIS\n")
	use := strings.TrimPrefix(c.UseLine(), c.CommandPath())
	if c.HasAvailableSubCommands() {
		use = " COMMAND [ARGS]"
	}
	fmt.Fprintf(&b, ".B %s\n", roffText(c.CommandPath()))
	if use = strings.TrimSpace(use); use != "" {
		b.WriteString(roffText(use) + "\n")
	}

	b.WriteString(".SH DESCRIPTION\n")
	desc := c.Long
	if desc == "" {
		desc = c.Short
		if !strings.HasSuffix(desc, ".") {
			desc += "."
		}
	}
	writeParagraphs(&b, desc)
	if len(c.Aliases) > 0 {
		fmt.Fprintf(&b, ".PP\nAlso: %s.\n", roffText(strings.Join(c.Aliases, ", ")))
	}

	if subs := availableSubcommands(c); len(subs) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, s := range subs {
			fmt.Fprintf(&b, ".TP\n\\fB%s\\fR(1)\n%s\n", roffText(manName(s)), roffText(s.Short))
		}
	}
	writeFlags(&b, "OPTIONS", c.NonInheritedFlags())
	writeFlags(&b, "OPTIONS INHERITED FROM PARENT COMMANDS", c.InheritedFlags())
	if c.Example != "" {
		b.WriteString(".SH EXAMPLES\n.PP\n.nf\n.RS\n" + roffText(strings.Trim(c.Example, "\n")) + "\n.RE\n.fi\n")
	}
	if !c.HasParent() {
		writeRootSections(&b)
	}

	var also []string
	if c.HasParent() {
		also = append(also, manName(c.Parent()))
	}
	for _, s := range availableSubcommands(c) {
		also = append(also, manName(s))
	}
	if len(also) > 0 {
		b.WriteString(".SH SEE ALSO\n")
		for i, n := range also {
			sep := ","
			if i == len(also)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, ".BR %s (1)%s\n", roffText(n), sep)
		}
	}
	return b.Bytes()
}

func availableSubcommands(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() && !s.IsAdditionalHelpTopicCommand() {
			out = append(out, s)
		}
	}
	return out
}

// writeRootSections adds what applies to every command to the banger(1)
// page: exit codes, settings, files.
func writeRootSections(b *bytes.Buffer) {
	d := config.Defaults()
	d.Finish()
	b.WriteString(".SH EXIT STATUS\n")
	for _, e := range []struct {
		code int
		what string
	}{
		{ExitOK, "success"},
		{ExitError, "error"},
		{ExitUsage, "bad input (usage, flags, invalid argument)"},
		{ExitNotFound, "not found"},
		{ExitExists, "already exists"},
		{ExitConflict, "conflict (e.g. image in use, VM not running)"},
		{ExitUnreachable, "the daemon cannot be reached"},
		{ExitExecFailed, "vm run, exec and ssh: banger itself failed; otherwise they exit with the guest command's code"},
	} {
		fmt.Fprintf(b, ".TP\n%d\n%s\n", e.code, roffText(e.what))
	}
	b.WriteString(".SH ENVIRONMENT\n")
	fmt.Fprintf(b, ".TP\n.B BANGER_CONFIG\n%s\n", roffText("The config file to read instead of "+config.DefaultFile+"."))
	fmt.Fprintf(b, ".TP\n.B BANGER_\\fIKEY\\fR\n%s\n", roffText("Any config key, in upper case (BANGER_STATE_DIR, BANGER_LOG_LEVEL, ...); bangerd started by banger sees the same settings."))
	b.WriteString(".SH FILES\n")
	for _, f := range []struct{ path, what string }{
		{config.DefaultFile, "Settings (TOML); config.toml.example beside it lists every key with its default."},
		{d.Socket, "The daemon's API socket. When bangerd.service is installed and systemd runs, banger uses the service's daemon and never starts one of its own; otherwise any command starts bangerd on demand."},
		{d.StateDir, "The store, images and VM disks."},
	} {
		fmt.Fprintf(b, ".TP\n.I %s\n%s\n", roffText(f.path), roffText(f.what))
	}
}

// writeFlags renders a flag set as a tagged list, sorted by name.
func writeFlags(b *bytes.Buffer, title string, fs *pflag.FlagSet) {
	var flags []*pflag.Flag
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			flags = append(flags, f)
		}
	})
	if len(flags) == 0 {
		return
	}
	sort.Slice(flags, func(i, j int) bool { return flags[i].Name < flags[j].Name })
	b.WriteString(".SH " + title + "\n")
	for _, f := range flags {
		varname, usage := pflag.UnquoteUsage(f)
		tag := ""
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			tag = "\\fB" + roffText("-"+f.Shorthand) + "\\fR, "
		}
		tag += "\\fB" + roffText("--"+f.Name) + "\\fR"
		if varname != "" {
			tag += " \\fI" + roffText(varname) + "\\fR"
		}
		if def := flagDefault(f); def != "" {
			usage += " (default " + def + ")"
		}
		fmt.Fprintf(b, ".TP\n%s\n%s\n", tag, roffText(usage))
	}
}

// flagDefault is a flag's default as help shows it, "" for zero values.
func flagDefault(f *pflag.Flag) string {
	switch f.DefValue {
	case "", "false", "0", "[]", "0s":
		return ""
	}
	if f.Value.Type() == "string" {
		return strconv.Quote(f.DefValue)
	}
	return f.DefValue
}

// writeParagraphs writes text with blank lines as paragraph breaks; lines
// that start with white space are kept as they are (examples, lists).
func writeParagraphs(b *bytes.Buffer, text string) {
	for _, para := range strings.Split(strings.Trim(text, "\n"), "\n\n") {
		if strings.TrimSpace(para) == "" {
			continue
		}
		b.WriteString(".PP\n")
		if strings.HasPrefix(para, " ") || strings.HasPrefix(para, "\t") {
			b.WriteString(".nf\n" + roffText(para) + "\n.fi\n")
			continue
		}
		b.WriteString(roffText(para) + "\n")
	}
}

// roffText escapes text for a man page: backslashes, hyphens (so that
// flags copy as ASCII), and a leading dot or quote that would start a
// request.
func roffText(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}

// roffQuote is a request argument: escaped, in double quotes.
func roffQuote(s string) string {
	return `"` + strings.ReplaceAll(roffText(s), `"`, `\(dq`) + `"`
}
