package image

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

func TestCrngReseedELF(t *testing.T) {
	b := crngReseedELF()
	path := filepath.Join(t.TempDir(), "crng-reseed")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("not an ELF file: %v", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC || len(f.Progs) != 1 ||
		f.Progs[0].Type != elf.PT_LOAD || f.Progs[0].Filesz != uint64(len(b)) || f.Entry != 0x400000+120 {
		t.Fatalf("ELF header: class %v machine %v type %v entry %#x progs %+v", f.Class, f.Machine, f.Type, f.Entry, f.Progs)
	}
	f.Close()
	// Run it where it lacks CAP_SYS_ADMIN (a new user namespace), so it
	// cannot reseed the host's CRNG: EPERM (exit 1) shows it opened
	// /dev/urandom and the kernel took the ioctl for RNDRESEEDCRNG (an
	// unknown one would be ENOTTY, 25; a bad descriptor EBADF, 9).
	_, err = system.ExecRunner{}.Run(context.Background(), "unshare", "--user", "--map-root-user", path)
	var ce *system.CommandError
	switch {
	case err == nil:
		t.Fatal("crng-reseed succeeded without CAP_SYS_ADMIN")
	case errors.As(err, &ce) && ce.ExitCode == 1:
	case errors.As(err, &ce) && strings.Contains(ce.Stderr, "unshare"):
		t.Skipf("no user namespace here: %v", err)
	case errors.Is(err, system.ErrNoTool):
		t.Skip("unshare not installed")
	default:
		t.Fatalf("crng-reseed in a user namespace: %v, want exit 1 (EPERM)", err)
	}
}

func TestMinimalInittabStartsTheAgent(t *testing.T) {
	inittab, err := guestFiles.ReadFile("guest/minimal/etc/inittab")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(inittab), "\n::respawn:/usr/lib/banger/agent\n") {
		t.Errorf("inittab does not respawn the agent:\n%s", inittab)
	}
	agent, err := guestFiles.ReadFile("guest/minimal/usr/lib/banger/agent")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"org.banger.agent", "set-time)", "set-ip)", "set-mac)", "set-hostname)", "reseed)", "regen-hostkey)", "ping)", "/usr/lib/banger/crng-reseed"} {
		if !strings.Contains(string(agent), want) {
			t.Errorf("agent script lacks %q", want)
		}
	}
	// The script must parse (sh -n) with the host's shell.
	path := filepath.Join(t.TempDir(), "agent")
	if err := os.WriteFile(path, agent, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := (system.ExecRunner{}).Run(context.Background(), "sh", "-n", path); err != nil {
		t.Errorf("agent script: %v", err)
	}
}
