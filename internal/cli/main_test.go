package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/guest/guesttest"
	"github.com/banger-dev/banger/internal/system"

	"github.com/rogpeppe/go-internal/testscript"
)

// The end-to-end tests run the real CLI against a real bangerd (built once
// per test run) with the Firecracker double as VMM, on per-test state and
// run directories, without network.

var update = flag.Bool("update", false, "rewrite the golden files embedded in testdata/script/*.txtar")

var (
	helperBinDir string // holds bangerd and fc-double; first on PATH
	helperErr    error  // why they could not be built
)

// bangerMain is the banger command inside scripts: the test binary copied
// under the name banger, running the CLI exactly like cmd/banger.
func bangerMain() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cleanupM removes the helper binaries after the tests, since
// testscript.Main exits the process itself.
type cleanupM struct{ m *testing.M }

func (c cleanupM) Run() int {
	code := c.m.Run()
	if helperBinDir != "" && os.Getenv(helpersEnv) == "" {
		os.RemoveAll(helperBinDir)
	}
	return code
}

func TestMain(m *testing.M) {
	// Only the top-level test run builds; the copies of this binary run as
	// the banger command go straight to testscript.Main.
	if filepath.Base(os.Args[0]) != "banger" {
		helperBinDir, helperErr = buildHelpers()
		if helperErr == nil {
			os.Setenv("PATH", helperBinDir+string(os.PathListSeparator)+os.Getenv("PATH"))
		}
	}
	testscript.Main(cleanupM{m}, map[string]func(){"banger": bangerMain})
}

// helpersEnv names a directory holding prebuilt bangerd and fc-double, for
// runs where the go command cannot build (an unprivileged user without a
// module cache). The directory is not removed.
const helpersEnv = "BANGER_TEST_HELPERS"

// buildHelpers builds bangerd and fc-double into a fresh directory every
// user can read (the CLI finds bangerd on PATH).
func buildHelpers() (string, error) {
	if dir := os.Getenv(helpersEnv); dir != "" {
		for _, name := range []string{"bangerd", "fc-double"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
				return "", fmt.Errorf("%s=%s: %w", helpersEnv, dir, err)
			}
		}
		return dir, nil
	}
	dir, err := os.MkdirTemp("", "banger-cli-bin")
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, b := range []struct{ pkg, name string }{{"./cmd/bangerd", "bangerd"}, {"./cmd/fc-double", "fc-double"}} {
		if err := system.GoBuild(ctx, b.pkg, filepath.Join(dir, b.name), "bangertest"); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}

func requireHelpers(t testing.TB) {
	t.Helper()
	if helperErr != nil {
		t.Skipf("cannot build bangerd and fc-double: %v", helperErr)
	}
}

// isolatedEnv is the environment of one isolated banger installation.
func isolatedEnv(stateDir, runDir string) map[string]string {
	return map[string]string{
		"BANGER_STATE_DIR":        stateDir,
		"BANGER_RUN_DIR":          runDir,
		"BANGER_SOCKET":           "",
		"BANGER_NETWORK":          "off",
		"BANGER_CONFINE":          "off", // the double's test hooks do not reach into a jail
		"BANGER_CONFIG":           "/dev/null",
		"BANGER_FIRECRACKER_BIN":  filepath.Join(helperBinDir, "fc-double"),
		"BANGER_VMM":              "firecracker",
		"BANGER_GROUP":            "banger-test-nonexistent",
		"BANGER_ROOT_DISK_METHOD": "copy", // never touch the host's loop and dm devices
		"BANGER_LOG_LEVEL":        "debug",
	}
}

func TestScripts(t *testing.T) {
	requireHelpers(t)
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		UpdateScripts:       *update,
		Setup: func(env *testscript.Env) error {
			// Unix socket paths stay under 108 bytes only in a short directory.
			run, err := os.MkdirTemp("/tmp", "bt")
			if err != nil {
				return err
			}
			state := filepath.Join(env.WorkDir, "state")
			for k, v := range isolatedEnv(state, run) {
				env.Setenv(k, v)
			}
			env.Setenv("PATH", helperBinDir+string(os.PathListSeparator)+env.Getenv("PATH"))
			work := env.WorkDir
			env.Defer(func() {
				left := tearDown(state, run, work)
				os.RemoveAll(run)
				if left != "" {
					env.T().Log(left)
					env.T().FailNow()
				}
			})
			return nil
		},
		// [root]: the stand-in guest runs commands on this host, and only
		// root can switch users there.
		Condition: func(cond string) (bool, error) {
			if cond == "root" {
				return os.Geteuid() == 0, nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"mkimage":    cmdMkimage,
			"exitcode":   cmdExitcode,
			"killdaemon": cmdKilldaemon,
			"daemonpid":  cmdDaemonpid,
			"nofcdouble": cmdNofcdouble,
			"killfc":     cmdKillfc,
			"json":       cmdJSON,
			"jsonset":    cmdJSONSet,
			"capture":    cmdCapture,
			"emptydir":   cmdEmptydir,
			"nofiles":    cmdNofiles,
			"fakeguest":  cmdFakeguest,
		},
	})
}

// tearDown stops the daemon of stateDir and kills any Firecracker double
// left under runDir. It returns what a passing script should not have
// left behind, or "".
func tearDown(stateDir, runDir, workDir string) string {
	var left []string
	if p, ok := daemonProcess(stateDir); ok {
		c := &client.Client{Socket: filepath.Join(runDir, "bangerd.sock")}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c.Shutdown(ctx)
		cancel()
		if !p.WaitExit(10 * time.Second) {
			p.Kill(5 * time.Second)
			left = append(left, fmt.Sprintf("bangerd pid %d ignored shutdown and was killed", p.PID))
		}
	}
	for _, p := range fcDoubles(runDir) {
		p.Kill(5 * time.Second)
		left = append(left, fmt.Sprintf("fc-double pid %d was still running and was killed", p.PID))
	}
	// The stand-in guest's sessions run on this host in sessions of their
	// own, and outlive the script that started them unless it stopped
	// them (one, left by a failed script, kept the make test's lock open
	// for minutes). Their groups go; a session a script leaves running is
	// not a failure of the script.
	for _, p := range sessionRunners(workDir) {
		syscall.Kill(-p.PID, syscall.SIGKILL)
		p.Kill(5 * time.Second)
	}
	return strings.Join(left, "; ")
}

// sessionRunners are the stand-in guest's session processes started for
// the script in workDir: argv names a file under its guest/sessions.
func sessionRunners(workDir string) []system.Process {
	if workDir == "" {
		return nil
	}
	pids, _ := system.ListPIDs()
	var out []system.Process
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err != nil || !slices.ContainsFunc(argv, func(a string) bool { return strings.HasPrefix(a, workDir+"/guest/sessions/") }) {
			continue
		}
		if st, err := system.ProcStartTime(pid); err == nil {
			out = append(out, system.Process{PID: pid, Start: st})
		}
	}
	return out
}

// daemonProcess finds the bangerd serving stateDir: the pid in its lock
// file, checked to be a bangerd started for that state directory.
func daemonProcess(stateDir string) (system.Process, bool) {
	b, err := os.ReadFile(filepath.Join(stateDir, "bangerd.lock"))
	if err != nil {
		return system.Process{}, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return system.Process{}, false
	}
	argv, err := system.ProcCmdline(pid)
	if err != nil || len(argv) == 0 || filepath.Base(argv[0]) != "bangerd" {
		return system.Process{}, false
	}
	env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil || !strings.Contains("\x00"+string(env)+"\x00", "\x00BANGER_STATE_DIR="+stateDir+"\x00") {
		return system.Process{}, false
	}
	st, err := system.ProcStartTime(pid)
	if err != nil {
		return system.Process{}, false
	}
	return system.Process{PID: pid, Start: st}, true
}

// fcDoubles lists the live Firecracker doubles whose argv names a path under runDir.
func fcDoubles(runDir string) []system.Process {
	pids, _ := system.ListPIDs()
	var out []system.Process
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err != nil || len(argv) == 0 || filepath.Base(argv[0]) != "fc-double" {
			continue
		}
		mine := false
		for _, a := range argv {
			if strings.HasPrefix(a, runDir+"/") {
				mine = true
			}
		}
		if !mine {
			continue
		}
		if st, err := system.ProcStartTime(pid); err == nil {
			out = append(out, system.Process{PID: pid, Start: st})
		}
	}
	return out
}

// mkimage writes a fake kernel (an x86-64 ELF header) and a small ext4
// root filesystem into the script's work directory: vmlinux, rootfs.ext4.
func cmdMkimage(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: mkimage")
	}
	ts.Check(writeFakeImage(ts.MkAbs(".")))
}

func writeFakeImage(dir string) error {
	elf := make([]byte, 4096)
	copy(elf, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	elf[16], elf[18], elf[20] = 2, 0x3e, 1 // ET_EXEC, EM_X86_64, EV_CURRENT
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), elf, 0o644); err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs.ext4")
	f, err := os.Create(rootfs)
	if err != nil {
		return err
	}
	if err := f.Truncate(32 << 20); err != nil {
		f.Close()
		return err
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err = system.ExecRunner{}.Run(ctx, "mkfs.ext4", "-q", "-F", rootfs)
	return err
}

// exitcode N prog args... runs prog like exec and requires exit code N.
func cmdExitcode(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exitcode N program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	if err != nil {
		var ec interface{ ExitCode() int }
		if !errors.As(err, &ec) {
			ts.Fatalf("%s did not run: %v", args[1], err)
		}
		got = ec.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", args[1], got, want)
	}
}

// killdaemon kill -9s the bangerd of this script's state directory.
func cmdKilldaemon(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: killdaemon")
	}
	p, ok := daemonProcess(ts.Getenv("BANGER_STATE_DIR"))
	if !ok {
		ts.Fatalf("no bangerd runs for %s", ts.Getenv("BANGER_STATE_DIR"))
	}
	ts.Check(p.Kill(5 * time.Second))
}

// daemonpid VAR sets VAR to the pid of this script's bangerd.
func cmdDaemonpid(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: [!] daemonpid VAR")
	}
	p, ok := daemonProcess(ts.Getenv("BANGER_STATE_DIR"))
	if neg {
		if ok {
			ts.Fatalf("bangerd pid %d runs for %s", p.PID, ts.Getenv("BANGER_STATE_DIR"))
		}
		return
	}
	if !ok {
		ts.Fatalf("no bangerd runs for %s", ts.Getenv("BANGER_STATE_DIR"))
	}
	ts.Setenv(args[0], strconv.Itoa(p.PID))
}

// nofcdouble fails if a Firecracker double of this script's run directory
// is alive; ! nofcdouble fails unless one is.
func cmdNofcdouble(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 0 {
		ts.Fatalf("usage: [!] nofcdouble")
	}
	ps := fcDoubles(ts.Getenv("BANGER_RUN_DIR"))
	if !neg && len(ps) > 0 {
		ts.Fatalf("fc-double processes still alive: %v", ps)
	}
	if neg && len(ps) == 0 {
		ts.Fatalf("no fc-double process alive")
	}
}

// killfc kill -9s every Firecracker double of this script's run directory.
func cmdKillfc(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: killfc")
	}
	ps := fcDoubles(ts.Getenv("BANGER_RUN_DIR"))
	if len(ps) == 0 {
		ts.Fatalf("no fc-double process to kill")
	}
	for _, p := range ps {
		ts.Check(p.Kill(5 * time.Second))
	}
}

// json FILE PATH WANT checks one value of a JSON document (FILE may be
// stdout or stderr). PATH is dot-separated keys and array indexes; a "#"
// segment is the length of the array or object before it; "." is the root.
// WANT "<absent>" requires the path not to exist. With !, the value must
// differ from WANT.
func cmdJSON(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: [!] json FILE PATH WANT")
	}
	got, ok, err := jsonLookup(ts.ReadFile(args[0]), args[1])
	ts.Check(err)
	if !ok {
		got = "<absent>"
	}
	if (got == args[2]) == neg {
		ts.Fatalf("json %s: got %q, want %s%q", args[1], got, map[bool]string{true: "anything but ", false: ""}[neg], args[2])
	}
}

// jsonset VAR FILE PATH sets VAR to a value of a JSON document.
func cmdJSONSet(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: jsonset VAR FILE PATH")
	}
	got, ok, err := jsonLookup(ts.ReadFile(args[1]), args[2])
	ts.Check(err)
	if !ok {
		ts.Fatalf("json %s: absent", args[2])
	}
	ts.Setenv(args[0], got)
}

// jsonLookup returns the value at path in doc, rendered as text: strings
// as they are, numbers without exponent, other values as compact JSON.
func jsonLookup(doc, path string) (string, bool, error) {
	var v any
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return "", false, fmt.Errorf("decode json: %w", err)
	}
	if path != "." {
		for _, seg := range strings.Split(path, ".") {
			switch cur := v.(type) {
			case map[string]any:
				if seg == "#" {
					v = json.Number(strconv.Itoa(len(cur)))
					continue
				}
				next, ok := cur[seg]
				if !ok {
					return "", false, nil
				}
				v = next
			case []any:
				if seg == "#" {
					v = json.Number(strconv.Itoa(len(cur)))
					continue
				}
				i, err := strconv.Atoi(seg)
				if err != nil || i < 0 || i >= len(cur) {
					return "", false, nil
				}
				v = cur[i]
			default:
				return "", false, nil
			}
		}
	}
	switch x := v.(type) {
	case string:
		return x, true, nil
	case json.Number:
		return x.String(), true, nil
	}
	b, err := json.Marshal(v)
	return string(b), true, err
}

func TestJSONLookup(t *testing.T) {
	doc := `[{"name":"a","live":{"alive":true,"handles":{"pid":12345678901}},"ports":[],"n":null}]`
	for _, c := range []struct{ path, want string }{
		{"#", "1"}, {"0.name", "a"}, {"0.live.alive", "true"}, {"0.live.handles.pid", "12345678901"},
		{"0.ports", "[]"}, {"0.ports.#", "0"}, {"0.n", "null"}, {"0.#", "4"}, {".", `[{"live":{"alive":true,"handles":{"pid":12345678901}},"n":null,"name":"a","ports":[]}]`},
	} {
		got, ok, err := jsonLookup(doc, c.path)
		if err != nil || !ok || got != c.want {
			t.Errorf("jsonLookup(%q) = %q, %v, %v; want %q", c.path, got, ok, err, c.want)
		}
	}
	for _, p := range []string{"1", "0.nope", "0.name.x", "x"} {
		if got, ok, err := jsonLookup(doc, p); ok || err != nil {
			t.Errorf("jsonLookup(%q) = %q, %v, %v; want absent", p, got, ok, err)
		}
	}
	if _, _, err := jsonLookup("not json", "."); err == nil {
		t.Error("jsonLookup of invalid JSON succeeded")
	}
}

// capture VAR FILE sets VAR to the trimmed content of FILE (or stdout/stderr).
func cmdCapture(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: capture VAR FILE")
	}
	ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile(args[1])))
}

// emptydir DIR fails if DIR has any entry; nofiles DIR fails if anything
// but directories is under DIR. A missing DIR passes both.
func cmdEmptydir(ts *testscript.TestScript, neg bool, args []string) {
	dirEntriesCheck(ts, neg, "emptydir", args, func(d os.DirEntry) bool { return true })
}

func cmdNofiles(ts *testscript.TestScript, neg bool, args []string) {
	dirEntriesCheck(ts, neg, "nofiles", args, func(d os.DirEntry) bool { return !d.IsDir() })
}

func dirEntriesCheck(ts *testscript.TestScript, neg bool, name string, args []string, counts func(os.DirEntry) bool) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: %s DIR", name)
	}
	root := ts.MkAbs(args[0])
	var found []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != root && counts(d) {
			found = append(found, p)
		}
		return nil
	})
	if len(found) > 0 {
		ts.Fatalf("%s: %s holds %v", name, args[0], found)
	}
}

// fakeguest starts an SSH server on loopback that stands in for every
// guest of this script's daemon: it accepts the daemon's key (made here
// first, where the daemon will find it) and runs commands with the host's
// sh in $WORK/guest. It must run before the daemon starts, since the daemon
// reads BANGER_TEST_GUEST_ADDR and BANGER_TEST_GUEST_SESSIONS_ROOT at start.
func cmdFakeguest(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: fakeguest")
	}
	keyPath := filepath.Join(ts.Getenv("BANGER_STATE_DIR"), "ssh", "id_ed25519")
	ts.Check(os.MkdirAll(filepath.Dir(keyPath), 0o700))
	signer, err := guest.Keygen(keyPath)
	ts.Check(err)
	dir := ts.MkAbs("guest")
	ts.Check(os.MkdirAll(filepath.Join(dir, "sessions"), 0o755))
	srv, err := guesttest.New(guesttest.Options{ClientKey: signer.PublicKey(), Dir: dir})
	ts.Check(err)
	ts.Defer(srv.Close)
	ts.Setenv("BANGER_TEST_GUEST_ADDR", srv.Addr)
	ts.Setenv("BANGER_TEST_GUEST_SESSIONS_ROOT", filepath.Join(dir, "sessions"))
}
