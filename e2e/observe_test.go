package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"
)

// vmStats returns vm stats -o json.
func vmStats(t *testing.T, name string) client.VMStats {
	t.Helper()
	out := mustBanger(t, "vm", "stats", "-o", "json", name)
	var st client.VMStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("vm stats %s: %v\n%s", name, err, out)
	}
	return st
}

// TestCPUCounterGrowsUnderLoad: a guest busy-looping makes its VM's CPU
// counter (its cgroup's, the VMM being confined) grow by about the time it
// spun; an idle guest's barely moves. Memory is reported, and vm stats
// --watch prints samples.
func TestCPUCounterGrowsUnderLoad(t *testing.T) {
	requireSuite(t)
	const name = "e2e-cpu"
	runVM(t, name)
	idle0 := vmStats(t, name)
	if idle0.Source != "cgroup" || idle0.MemoryBytes <= 0 || idle0.CPUSeconds <= 0 {
		t.Fatalf("stats of a confined running vm: %+v; want cgroup counters", idle0)
	}
	time.Sleep(3 * time.Second)
	idle1 := vmStats(t, name)
	idleRate := (idle1.CPUSeconds - idle0.CPUSeconds) / idle1.Time.Sub(idle0.Time).Seconds()

	mustBanger(t, "vm", "session", "start", name, "--name", "burn", "--", "sh", "-c", "while :; do :; done")
	t.Cleanup(func() { runCLI(nil, cliTimeout, "vm", "session", "stop", name, "burn") })
	time.Sleep(time.Second) // the loop is running
	busy0 := vmStats(t, name)
	time.Sleep(5 * time.Second)
	busy1 := vmStats(t, name)
	elapsed := busy1.Time.Sub(busy0.Time).Seconds()
	busyRate := (busy1.CPUSeconds - busy0.CPUSeconds) / elapsed
	t.Logf("cpu: idle %.2f, busy %.2f CPU-seconds per second (one vCPU)", idleRate, busyRate)
	// One vCPU spinning is about one host CPU (more under TCG, which
	// translates as it runs); the shared host may lend it less.
	if busyRate < 0.5 || busyRate < idleRate+0.3 {
		t.Errorf("cpu counter grew %.2fs in %.1fs of busy loop (idle rate %.2f/s): want about one CPU-second per second", busy1.CPUSeconds-busy0.CPUSeconds, elapsed, idleRate)
	}

	// --watch runs until interrupted: here, until its deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var watched bytes.Buffer
	c, err := system.StartCommand(ctx, system.CommandSpec{Argv: []string{filepath.Join(os.Getenv(binEnv), "banger"), "vm", "stats", name, "--watch", "--interval", "1s"}, Stdout: &watched, Dir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	c.Wait()
	lines := strings.Split(strings.TrimSpace(watched.String()), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "TIME") {
		t.Errorf("vm stats --watch printed %q; want a header and samples", watched.String())
	}
}

// TestFirstRunBuildsTheImage: on a host with no image (a second daemon on
// fresh directories and its own bridge, subnet, uids and cgroups), vm run
// builds the default image first, showing the build, then runs the
// command; its unnamed VM is gone afterwards.
func TestFirstRunBuildsTheImage(t *testing.T) {
	requireSuite(t)
	state := t.TempDir()
	run, err := os.MkdirTemp("/tmp", "bfr")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(),
		"BANGER_STATE_DIR="+state, "BANGER_RUN_DIR="+run, "BANGER_SOCKET="+filepath.Join(run, "bangerd.sock"),
		"BANGER_BRIDGE=bangerfr0", "BANGER_SUBNET=172.31.77.0/24", "BANGER_UID_RANGE=300000-300999",
		"BANGER_CGROUP_PARENT=banger-e2e-firstrun", "BANGER_SSH_KEY_PATH="+filepath.Join(state, "ssh", "id_ed25519"))
	cli := func(timeout time.Duration, args ...string) (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var out, errOut bytes.Buffer
		c, err := system.StartCommand(ctx, system.CommandSpec{Argv: append([]string{filepath.Join(os.Getenv(binEnv), "banger")}, args...),
			Env: env, Stdout: &out, Stderr: &errOut, Dir: "/"})
		if err != nil {
			return "", err.Error(), -1
		}
		st, err := c.Wait()
		if err != nil {
			return out.String(), errOut.String() + err.Error(), -1
		}
		t.Logf("banger %s -> exit %d", shellJoin(args), st.Code)
		return out.String(), errOut.String(), st.Code
	}
	t.Cleanup(func() {
		cli(cliTimeout, "daemon", "stop")
		os.RemoveAll(run)
	})
	if out, _, _ := cli(time.Minute, "image", "list", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("the fresh daemon has images: %s", out)
	}
	out, errOut, code := cli(10*time.Minute, append(append([]string{"vm", "run"}, createFlags...), "--", "echo", "first run")...)
	if code != 0 || out != "first run\n" {
		t.Fatalf("first vm run: exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	for _, want := range []string{"no default image on this host: building it first", "ok default"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("first vm run's stderr does not show %q:\n%s", want, errOut)
		}
	}
	if out, _, _ := cli(time.Minute, "vm", "list", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("vm run without --name left %q", out)
	}
	out, errOut, code = cli(5*time.Minute, append(append([]string{"vm", "run"}, createFlags...), "--", "true")...)
	if code != 0 || strings.Contains(errOut, "building") {
		t.Errorf("second vm run: exit %d, stderr %s; want no build", code, errOut)
	}
	if out, _, _ := cli(time.Minute, "events", "-o", "json"); !strings.Contains(out, `"kind": "deleted"`) {
		t.Errorf("events after two runs: %s", out)
	}
}
