package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
)

// cliHarness runs the CLI in this process against one bangerd (auto-started
// by the first command) on private directories.
type cliHarness struct {
	t          *testing.T
	state, run string
}

func newCLIHarness(t *testing.T) *cliHarness {
	t.Helper()
	requireHelpers(t)
	state := t.TempDir()
	run, err := os.MkdirTemp("/tmp", "bt") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range isolatedEnv(state, run) {
		t.Setenv(k, v)
	}
	t.Cleanup(func() {
		if left := tearDown(state, run, ""); left != "" {
			t.Error(left)
		}
		os.RemoveAll(run)
	})
	return &cliHarness{t: t, state: state, run: run}
}

// banger runs the CLI with args and returns its exit code and output.
func (h *cliHarness) banger(args ...string) (int, string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Run(ctx, args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func (h *cliHarness) mustBanger(args ...string) string {
	h.t.Helper()
	code, out, errOut := h.banger(args...)
	if code != 0 {
		h.t.Fatalf("banger %q: exit %d: %s", args, code, errOut)
	}
	return out
}

func (h *cliHarness) client() *client.Client {
	return &client.Client{Socket: filepath.Join(h.run, "bangerd.sock")}
}

// hostileNames are VM names the daemon must refuse. None can reach a path,
// a shell, DNS or a kernel object name.
var hostileNames = []string{
	".", "..", "a/b", "../x", "../../etc/passwd", "/abs", "./a", "a/", "/",
	"$(id)", "`id`", "${HOME}", "a;b", "a && b", "a|b", "a&b", "a>b", "a<b", "a'b", `a"b`, `a\b`,
	"a b", " a", "a ", "a\nb", "a\tb", "a\rb", "\n", "\x1b[31mred", "a\x7fb", "a\x01b",
	"-a", "-", "--", "a-", "-a-", "---",
	"*", "a*", "?", "[a]", "{a,b}", "~", "~root", "a#b", "a?b", "a=b", "a,b", "a+b", "a:b", "a@b", "a%2fb", "%2e%2e",
	"a.b", "a_b", "web.banger.internal",
	"Web", "WEB", "aB",
	"\u0430",             // Cyrillic а, looks like a
	"w\u0435b",           // Cyrillic е inside
	"\uff57\uff45\uff42", // fullwidth ｗｅｂ
	"web\u200b",          // zero-width space
	"\u00a0web",          // no-break space
	"web\u202e",          // right-to-left override
	"caf\u00e9",          // é
	"\U0001F642",         // emoji
	"\xff\xfe",           // not UTF-8
	strings.Repeat("a", 33),
	strings.Repeat("a", 10000),
	strings.Repeat("-", 32),
}

// validNames sit on the edges of the rule and must be accepted.
var validNames = []string{"a", "0", "9lives", "a-b", "a--b", "web-1", strings.Repeat("a", 32), strings.Repeat("z9", 16)}

// nameRule reports whether msg states the naming rule.
func nameRule(msg string) bool {
	return strings.Contains(msg, "invalid name") &&
		(strings.Contains(msg, "lowercase letters, digits and inner hyphens") || strings.Contains(msg, "at most 32"))
}

func TestHostileNames(t *testing.T) {
	h := newCLIHarness(t)
	if len(hostileNames) < 50 {
		t.Fatalf("only %d hostile names", len(hostileNames))
	}
	h.mustBanger("vm", "create", "--name", "keep")

	// Every hostile name is a usage error (exit 2) that states the rule and
	// creates nothing, whether given as --name=X or --name X.
	for _, name := range hostileNames {
		for _, args := range [][]string{{"vm", "create", "--name=" + name}, {"vm", "create", "--name", name}} {
			code, out, errOut := h.banger(args...)
			if code != ExitUsage || !nameRule(errOut) || out != "" {
				t.Errorf("banger vm create %q: exit %d, stdout %q, stderr %.200q; want exit 2 and the naming rule", args[2:], code, out, errOut)
			}
		}
	}
	// Image names follow the same rule (they name directories of built images).
	for _, name := range hostileNames {
		code, out, errOut := h.banger("image", "import", "--name="+name, "--kernel", "/nonexistent/vmlinux", "--rootfs", "/nonexistent/rootfs")
		if code != ExitUsage || !nameRule(errOut) || out != "" {
			t.Errorf("banger image import --name=%q: exit %d, stdout %q, stderr %.200q; want exit 2 and the naming rule", name, code, out, errOut)
		}
	}
	if out := h.mustBanger("image", "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("image list after hostile imports = %s, want []", out)
	}
	code, _, errOut := h.banger("vm", "create", "--name", "")
	if code != ExitUsage || !nameRule(errOut) {
		t.Errorf("banger vm create --name '': exit %d, stderr %q; want exit 2 and the naming rule", code, errOut)
	}
	if out := h.mustBanger("vm", "list", "-q"); out != "keep\n" {
		t.Fatalf("vm list -q after hostile creates = %q, want only keep", out)
	}
	ents, err := os.ReadDir(filepath.Join(h.state, "vms"))
	if err != nil || len(ents) != 0 {
		t.Errorf("state vms dir holds %v (err %v), want nothing: records are made, disks only at start", ents, err)
	}

	// Other verbs never succeed on a hostile name and never touch another VM.
	// (The exact code varies: "." and ".." are path-cleaned by the HTTP mux,
	// see the report; everything else is not_found.)
	for _, name := range hostileNames {
		for _, verb := range [][]string{{"vm", "show", name}, {"vm", "stop", name}, {"vm", "start", name}, {"vm", "delete", name}} {
			code, out, _ := h.banger(verb...)
			if code == 0 || out != "" {
				t.Errorf("banger %q: exit %d, stdout %.200q; want a failure and no output", verb, code, out)
			}
		}
	}
	out := h.mustBanger("vm", "show", "keep", "-o", "json")
	if !strings.Contains(out, `"state": "created"`) {
		t.Errorf("keep changed after hostile verbs: %s", out)
	}

	// Names on the edge of the rule are accepted and round-trip.
	for _, name := range validNames {
		if out := h.mustBanger("vm", "create", "--name", name); out != name+"\n" {
			t.Errorf("vm create --name %s printed %q", name, out)
		}
		if code, _, errOut := h.banger("vm", "show", name); code != 0 {
			t.Errorf("vm show %s: exit %d: %s", name, code, errOut)
		}
	}
	h.mustBanger(append([]string{"vm", "delete", "keep"}, validNames...)...)
	if out := h.mustBanger("vm", "list", "-q"); out != "" {
		t.Errorf("vm list -q after deletes = %q, want empty", out)
	}
	h.mustBanger("daemon", "stop")
}

// TestHostileNamesAPI covers what argv cannot carry (NUL) and what the CLI
// would refuse before the daemon sees it, at the API.
func TestHostileNamesAPI(t *testing.T) {
	h := newCLIHarness(t)
	h.mustBanger("daemon", "start")
	c := h.client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, name := range []string{"a\x00b", "\x00", "web\x00../x", "a\x00", strings.Repeat("\x00", 40)} {
		_, err := c.CreateVM(ctx, client.CreateVMRequest{Name: name})
		if !client.IsInvalidArgument(err) || !nameRule(err.Error()) {
			t.Errorf("CreateVM(%q): %v; want invalid_argument stating the rule", name, err)
		}
		if _, err := c.GetVM(ctx, name); !client.IsNotFound(err) {
			t.Errorf("GetVM(%q): %v; want not_found", name, err)
		}
		if err := c.DeleteVM(ctx, name, false); !client.IsNotFound(err) {
			t.Errorf("DeleteVM(%q): %v; want not_found", name, err)
		}
	}
	// A name bigger than the body limit is refused as such, not as a crash.
	_, err := c.CreateVM(ctx, client.CreateVMRequest{Name: strings.Repeat("a", client.MaxBodyBytes)})
	if !client.IsInvalidArgument(err) {
		t.Errorf("CreateVM with a %d-byte name: %v; want invalid_argument", client.MaxBodyBytes, err)
	}
	vms, err := c.ListVMs(ctx)
	if err != nil || len(vms) != 0 {
		t.Errorf("ListVMs = %v, %v; want none", vms, err)
	}
	h.mustBanger("daemon", "stop")
}
