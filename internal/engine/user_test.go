package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/system"
)

func TestGuestArgv(t *testing.T) {
	sw := []string{"sh", "-c", switchUserScript, "banger-user"}
	cat := func(a ...[]string) []string {
		var out []string
		for _, s := range a {
			out = append(out, s...)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		oci  bool
		c    GuestCommand
		want []string
	}{
		{"plain image, image default", false, GuestCommand{Argv: []string{"id"}}, []string{"id"}},
		{"plain image, root", false, GuestCommand{Argv: []string{"id"}, User: "root"}, []string{"id"}},
		{"plain image, uid 0", false, GuestCommand{Argv: []string{"id"}, User: "0"}, []string{"id"}},
		{"plain image, user", false, GuestCommand{Argv: []string{"id", "-u"}, User: "app"}, cat(sw, []string{"app", "--", "id", "-u"})},
		{"plain image, login shell", false, GuestCommand{Login: true}, nil},
		{"plain image, login shell as user", false, GuestCommand{Login: true, User: "1000"}, cat(sw, []string{"1000", "--login"})},
		{"plain image, nothing to run", false, GuestCommand{User: "app"}, nil},
		{"container image, USER", true, GuestCommand{Argv: []string{"id"}}, []string{"/.banger/run", "--", "id"}},
		{"container image, --user", true, GuestCommand{Argv: []string{"id"}, User: "root"}, []string{"/.banger/run", "--user", "root", "--", "id"}},
		{"container image, ENTRYPOINT", true, GuestCommand{}, []string{"/.banger/run"}},
		{"container image, ENTRYPOINT as user", true, GuestCommand{User: "app"}, []string{"/.banger/run", "--user", "app"}},
		{"container image, login shell", true, GuestCommand{Login: true}, nil},
		{"container image, login shell as user", true, GuestCommand{Login: true, User: "app"}, []string{"/.banger/run", "--user", "app", "--login"}},
		{"container image, command on a terminal", true, GuestCommand{Login: true, Argv: []string{"top"}}, []string{"/.banger/run", "--", "top"}},
	} {
		if got := guestArgv(tc.oci, tc.c); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: guestArgv = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestValidUser(t *testing.T) {
	for _, ok := range []string{"", "root", "0", "1000", "4294967294", "app", "_apt", "www-data", "a.b", "Debian-exim", "host$"} {
		if err := ValidUser(ok); err != nil {
			t.Errorf("ValidUser(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"a b", "-x", "1:2", "app:staff", "root;id", "$(id)", "4294967295", "99999999999", "1app", "ü", strings.Repeat("a", 33), "a/b"} {
		err := ValidUser(bad)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "invalid user") {
			t.Errorf("ValidUser(%q) = %v, want an invalid-argument error", bad, err)
		}
	}
}

// TestSwitchUserScript runs the script with this host's sh and
// start-stop-daemon (as in a Debian image) and, when its package is cached,
// with busybox alone (as in the minimal image).
func TestSwitchUserScript(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch users (run as root, e.g. make test)")
	}
	shells := map[string]string{"host": os.Getenv("PATH")}
	if bb := busyboxDir(t); bb != "" {
		shells["busybox"] = bb
	}
	for name, path := range shells {
		t.Run(name, func(t *testing.T) {
			// sh -c 'cd "$HOME"; sh -c SCRIPT banger-user USER MODE ARGS...'
			run := func(stdin, user, mode string, args ...string) (string, error) {
				outer := `cd "$HOME" && ` + stdin + `exec sh -c "$0" banger-user "$@"`
				out, err := system.ExecRunner{}.Run(context.Background(), "env", append([]string{"-i", "PATH=" + path, "HOME=/root",
					"sh", "-c", outer, switchUserScript, user, mode}, args...)...)
				return string(out), err
			}
			if out, err := run("", "nobody", "--", "sh", "-c", `echo "$(id -u):$(id -g) $USER $HOME $PWD"`); err != nil || out != "65534:65534 nobody /nonexistent /\n" {
				t.Errorf("as nobody: %q, %v; want uid and gid 65534, USER and HOME of nobody, in / (its home does not exist)", out, err)
			}
			if out, err := run("", "65534", "--", "id", "-un"); err != nil || out != "nobody\n" {
				t.Errorf("as uid 65534: %q, %v", out, err)
			}
			// A shell builtin is run as the program of that name.
			if out, err := run("", "nobody", "--", "echo", "hi"); err != nil || out != "hi\n" {
				t.Errorf("echo as nobody: %q, %v", out, err)
			}
			_, err := run("", "no-such-user", "--", "true")
			var ce *system.CommandError
			if !errors.As(err, &ce) || ce.ExitCode != 126 || !strings.Contains(ce.Stderr, `banger: no user "no-such-user" in the guest's /etc/passwd`) {
				t.Errorf("unknown user: %v, want exit 126 and the reason", err)
			}
			_, err = run("", "nobody", "--", "no-such-command")
			if !errors.As(err, &ce) || ce.ExitCode != 127 || !strings.Contains(ce.Stderr, "no-such-command: command not found") {
				t.Errorf("unknown command: %v, want exit 127 and the reason", err)
			}
			// --login runs the user's shell from passwd: nobody's refuses.
			out, err := run("echo id | ", "nobody", "--login")
			if !errors.As(err, &ce) || ce.ExitCode == 0 || !strings.Contains(out+ce.Stderr, "not available") {
				t.Errorf("login shell of nobody: %q, %v; want nologin's refusal", out, err)
			}
		})
	}
}

// busyboxDir unpacks the cached busybox-static package into a directory of
// its applets, or returns "" when it is not cached.
func busyboxDir(t *testing.T) string {
	debs, _ := filepath.Glob("/var/cache/banger/debs/busybox-static_*.deb")
	if len(debs) == 0 {
		t.Log("no cached busybox-static package: the busybox case is skipped")
		return ""
	}
	// Not t.TempDir: nobody must be able to reach the applets.
	dir, err := os.MkdirTemp("", "busybox")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := (system.ExecRunner{}).Run(ctx, "dpkg-deb", "-x", debs[0], dir); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "applets")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "awk", "id", "echo", "true", "env", "start-stop-daemon"} {
		if err := os.Symlink(filepath.Join(dir, "bin", "busybox"), filepath.Join(bin, a)); err != nil {
			t.Fatal(err)
		}
	}
	return bin
}
