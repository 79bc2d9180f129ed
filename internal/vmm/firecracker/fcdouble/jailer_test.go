package fcdouble

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestJailerDoubleRefusesBadCommandLines checks the jailer double's
// validation, done before anything is made: each case exits 1 with the
// jailer's message and leaves the chroot base empty.
func TestJailerDoubleRefusesBadCommandLines(t *testing.T) {
	dir := t.TempDir()
	exec := filepath.Join(dir, "firecracker")
	if err := os.WriteFile(exec, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	good := []string{"--id", "vm-1", "--exec-file", exec, "--uid", "1234", "--gid", "1234", "--chroot-base-dir", base}
	with := func(extra ...string) []string { return append(append([]string{}, good...), extra...) }
	replace := func(flag, value string) []string {
		out := append([]string{}, good...)
		for i := range out {
			if out[i] == flag {
				out[i+1] = value
			}
		}
		return out
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{good[2:], "Argument 'id' required"},
		{with("--id", "x"), "provided more than once"},
		{with("--unknown", "x"), "Found argument 'unknown'"},
		{with("--cgroup-version=2"), "Found argument 'cgroup-version=2'"},
		{with("--netns"), "requires a value"},
		{replace("--id", "vm_1"), "Invalid instance ID"},
		{replace("--id", strings.Repeat("a", 65)), "Invalid instance ID"},
		{replace("--exec-file", filepath.Join(dir, "none")), "Failed to canonicalize"},
		{replace("--exec-file", dir), "is not a file"},
		{replace("--chroot-base-dir", exec), "is not a directory"},
		{replace("--uid", "-1"), "Invalid uid"},
		{with("--cgroup-version", "3"), "Cgroup version not supported"},
		{with("--parent-cgroup", "a/../b"), "Parent cgroup path is invalid"},
		{with("--cgroup", "memory.max"), "Invalid format for cgroups"},
		{with("--cgroup", "memory.max=1=2"), "Invalid format for cgroups"},
		{with("--cgroup", "../memory.max=1"), "Invalid cgroup file"},
		{with("--resource-limit", "cores=1"), "Invalid resource argument"},
	} {
		var stdout, stderr bytes.Buffer
		code := JailerMain(c.args, &stdout, &stderr)
		if code != exitGeneric || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("jailer %q: exit %d, stderr %q; want 1 and %q", c.args, code, stderr.String(), c.want)
		}
	}
	if entries, _ := os.ReadDir(base); len(entries) != 0 {
		t.Errorf("refused command lines left %d entries in the chroot base", len(entries))
	}
}

func TestJailerDoubleParsesForwardedArgs(t *testing.T) {
	a, msg := parseJailerArgs([]string{"--id", "a", "--exec-file", "/f", "--uid", "1", "--gid", "2",
		"--cgroup", "memory.max=1", "--cgroup", "pids.max=2", "--new-pid-ns", "--", "--api-sock", "/run/x", "--id", "b"})
	if msg != "" {
		t.Fatal(msg)
	}
	if got := strings.Join(a.extra, " "); got != "--api-sock /run/x --id b" {
		t.Fatalf("forwarded args %q", got)
	}
	if len(a.multi["cgroup"]) != 2 || !a.bools["new-pid-ns"] || a.single["chroot-base-dir"] != "/srv/jailer" || a.single["cgroup-version"] != "1" {
		t.Fatalf("parsed %+v", a)
	}
}
