package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/jail"
	"github.com/banger-dev/banger/internal/system"
)

// inheritedFD starts "sh -c 'cat <&3'" through Start with a pipe as
// m.ExtraFiles[0] and returns what the child wrote to its log.
func inheritedFD(t *testing.T, m Machine) string {
	t.Helper()
	dir := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m.ExtraFiles = []*os.File{r}
	log := filepath.Join(dir, "out")
	p, err := Start(m, []string{"/bin/sh", "-c", "cat <&3"}, log)
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("state through fd 3\n")
	w.Close()
	deadline := time.Now().Add(10 * time.Second)
	for p.Alive() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b, _ := os.ReadFile(log)
	return string(b)
}

func TestStartPassesExtraFiles(t *testing.T) {
	if got := inheritedFD(t, Machine{}); got != "state through fd 3\n" {
		t.Fatalf("child read %q from fd 3", got)
	}
}

// The jail helper execs the VMM keeping inherited descriptors (QEMU's
// -incoming fd:3 depends on it).
func TestStartPassesExtraFilesThroughTheJail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the jail needs root")
	}
	dir, err := os.MkdirTemp("", "vmmjail")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	helper := filepath.Join(dir, "banger-jail")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := system.GoBuild(ctx, "./cmd/banger-jail", helper); err != nil {
		if errors.Is(err, system.ErrNoTool) {
			t.Skip("no go command to build banger-jail")
		}
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	m := Machine{Confine: &Confinement{
		Helper:   helper,
		SpecPath: filepath.Join(dir, "spec.json"),
		Spec:     jail.Spec{VMID: "fdtest", UID: 65534, GID: 65534, Root: root, Devices: []string{"/dev/null"}},
	}}
	got := inheritedFD(t, m)
	if strings.Contains(got, "banger-jail:") {
		t.Skipf("the jail cannot be entered here: %s", got)
	}
	if got != "state through fd 3\n" {
		t.Fatalf("jailed child read %q from fd 3", got)
	}
}
