package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/system"
)

func TestMinimalInittabStartsTheAgent(t *testing.T) {
	inittab, err := guestFiles.ReadFile("guest/minimal/etc/inittab")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(inittab), "\n::respawn:/"+agentPath+"\n") {
		t.Errorf("inittab does not respawn the agent:\n%s", inittab)
	}
	sshd, err := guestFiles.ReadFile("guest/minimal/usr/lib/banger/sshd")
	if err != nil {
		t.Fatal(err)
	}
	// The agent finds the listening dropbear by this file.
	if !strings.Contains(string(sshd), "echo $! >/run/banger-sshd.pid") {
		t.Errorf("the sshd loop does not record dropbear's pid:\n%s", sshd)
	}
	// The agent writes a clone's key where the loop has dropbear read it,
	// and guest-setup puts the disk's key there at boot.
	setup, err := guestFiles.ReadFile("guest/common/usr/lib/banger/guest-setup")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sshd), "key="+agent.RuntimeKeyPath+"\n") || !strings.Contains(string(sshd), "-r $key") {
		t.Errorf("the sshd loop does not serve %s:\n%s", agent.RuntimeKeyPath, sshd)
	}
	if !strings.Contains(string(setup), "cp $key "+agent.RuntimeKeyPath) {
		t.Errorf("guest-setup does not copy the host key to %s", agent.RuntimeKeyPath)
	}
}

// A minimal image's agent must be a static x86-64 executable; anything
// else is refused before the build makes anything.
func TestCheckAgent(t *testing.T) {
	dir := t.TempDir()
	static := filepath.Join(dir, "banger-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := system.GoBuild(ctx, "./cmd/banger-agent", static, "netgo", "osusergo"); err != nil {
		t.Fatalf("building the agent: %v", err)
	}
	if err := checkAgent(static); err != nil {
		t.Errorf("static agent refused: %v", err)
	}
	text := filepath.Join(dir, "script")
	os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755)
	dynamic, err := filepath.EvalSymlinks("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{"": "no guest agent", text: "not an executable",
		dynamic: "dynamically linked", filepath.Join(dir, "missing"): "not an executable"} {
		if err := checkAgent(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("checkAgent(%q) = %v, want %q", path, err, want)
		}
	}
	dst := filepath.Join(dir, "tree", agentPath)
	os.MkdirAll(filepath.Dir(dst), 0o755)
	if err := installAgent(static, dst); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(dst); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("installed agent: %v, %v", st, err)
	}

	// A minimal build without an agent fails before it makes anything.
	old := euid
	euid = func() int { return 0 }
	defer func() { euid = old }()
	out := filepath.Join(dir, "image")
	if _, err := Build(ctx, BuildOptions{Dir: out, Runner: system.ExecRunner{}}); err == nil || !strings.Contains(err.Error(), "no guest agent") {
		t.Errorf("Build without an agent = %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("Build without an agent left %s (%v)", out, err)
	}
}
