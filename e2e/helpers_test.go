package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"
)

// cliTimeout bounds one CLI command; a hung command fails its test instead
// of the whole binary.
const cliTimeout = 3 * time.Minute

// createFlags keep guests small: 2 cores are shared by everything.
var createFlags = []string{"--memory", "256", "--vcpus", "1", "--disk-size", "1G", "--work-disk-size", "256M"}

// requireSuite skips t unless the suite is prepared and runs in a private
// network namespace.
func requireSuite(t *testing.T) {
	t.Helper()
	if reason := os.Getenv(skipEnv); reason != "" {
		t.Skip(reason)
	}
	if os.Getenv(binEnv) == "" {
		t.Skip("suite not prepared: run go test as root without setting " + system.NetNSEnv)
	}
	if !system.InPrivateNetNS() {
		t.Skip("not in a private network namespace (the kernel refused one): guests are never booted on the host's network")
	}
}

// runCLI runs the built banger binary with stdin (nil: /dev/null) and
// returns its output and exit code; -1 means it could not run or timed out.
func runCLI(stdin []byte, timeout time.Duration, args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out, errOut bytes.Buffer
	spec := system.CommandSpec{Argv: append([]string{filepath.Join(os.Getenv(binEnv), "banger")}, args...), Stdout: &out, Stderr: &errOut, Dir: "/"}
	if stdin != nil {
		spec.Stdin = bytes.NewReader(stdin)
	}
	c, err := system.StartCommand(ctx, spec)
	if err != nil {
		return "", err.Error(), -1
	}
	st, err := c.Wait()
	if err != nil {
		return out.String(), errOut.String() + err.Error(), -1
	}
	if ctx.Err() != nil {
		return out.String(), errOut.String() + fmt.Sprintf("\n(killed after %s)", timeout), -1
	}
	return out.String(), errOut.String(), st.Code
}

// banger runs the CLI and logs the command, its duration and exit code.
func banger(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return bangerIn(t, nil, args...)
}

// bangerIn is banger with stdin.
func bangerIn(t *testing.T, stdin []byte, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	start := time.Now()
	stdout, stderr, code = runCLI(stdin, cliTimeout, args...)
	t.Logf("banger %s -> exit %d in %s", shellJoin(args), code, time.Since(start).Round(time.Millisecond))
	return stdout, stderr, code
}

// mustBanger fails t unless the command exits 0, and returns its stdout.
func mustBanger(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := banger(t, args...)
	if code != 0 {
		t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", shellJoin(args), code, out, errOut)
	}
	return out
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\n'\"$`\\*;&|<>()") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// runVM creates and boots a VM through vm run and registers its forced
// delete as cleanup.
func runVM(t *testing.T, name string) {
	t.Helper()
	deleteAtEnd(t, name)
	mustBanger(t, append(append([]string{"vm", "run", "--name", name}, createFlags...), "--", "true")...)
}

// deleteAtEnd removes the VM when the test ends, whatever happened.
func deleteAtEnd(t *testing.T, names ...string) {
	t.Helper()
	t.Cleanup(func() {
		args := append([]string{"vm", "delete", "-f"}, names...)
		if out, errOut, code := runCLI(nil, cliTimeout, args...); code != 0 {
			t.Errorf("cleanup: banger %s: exit %d: %s%s", shellJoin(args), code, out, errOut)
		}
	})
}

// showVM returns vm show -o json.
func showVM(t *testing.T, name string) client.VM {
	t.Helper()
	out := mustBanger(t, "vm", "show", "-o", "json", name)
	var vm client.VM
	if err := json.Unmarshal([]byte(out), &vm); err != nil {
		t.Fatalf("vm show %s: %v\n%s", name, err, out)
	}
	return vm
}

// sessions returns session list -o json, by session name.
func sessions(t *testing.T, vm string) map[string]client.GuestSession {
	t.Helper()
	out := mustBanger(t, "vm", "session", "list", "-o", "json", vm)
	var list []client.GuestSession
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("session list %s: %v\n%s", vm, err, out)
	}
	m := map[string]client.GuestSession{}
	for _, s := range list {
		m[s.Name] = s
	}
	return m
}

// eventually polls cond every 200 ms until it holds or timeout passes; the
// last failure message goes into the test failure. Guests under TCG are
// slow, so this bounds how long a guest-side effect may take to show.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %s", what, timeout, msg)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// linkNames lists the network interfaces of this namespace.
func linkNames() ([]string, error) {
	out, err := system.ExecRunner{}.Run(context.Background(), "ip", "-br", "link")
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			name, _, _ := strings.Cut(f[0], "@")
			names = append(names, name)
		}
	}
	return names, nil
}

// daemonPID is the bangerd that holds the suite's state directory lock, or
// the zero Process.
func daemonPID() system.Process {
	b, err := os.ReadFile(filepath.Join(os.Getenv(stateEnv), "bangerd.lock"))
	if err != nil {
		return system.Process{}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return system.Process{}
	}
	// The file keeps the last daemon's PID: make sure it is still a bangerd.
	if argv, err := system.ProcCmdline(pid); err != nil || len(argv) == 0 || filepath.Base(argv[0]) != "bangerd" {
		return system.Process{}
	}
	st, err := system.ProcStartTime(pid)
	if err != nil {
		return system.Process{}
	}
	return system.Process{PID: pid, Start: st}
}

// qemuFor finds the QEMU process whose argv names the VM's API socket.
func qemuFor(apiSock string) (system.Process, bool) { return findQEMU(apiSock) }
