package image

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
)

// agentPath is where a minimal image keeps the guest agent (inittab
// respawns it).
const agentPath = "usr/lib/banger/agent"

// CheckAgent refuses, before anything is made, a guest agent that a
// minimal guest could not run: missing, not an x86-64 Linux executable, or
// linked against libraries (the guest's libc need not match the host's).
func CheckAgent(path string) error { return checkAgent(path) }

func checkAgent(path string) error {
	if path == "" {
		return errors.New("no guest agent binary (banger-agent; make build puts it in bin/)")
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("guest agent %s: not an executable: %w", path, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		return fmt.Errorf("guest agent %s: not an x86-64 executable (%v %v %v)", path, f.Class, f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("guest agent %s: dynamically linked; build it static (CGO_ENABLED=0, or -tags netgo,osusergo)", path)
		}
	}
	return nil
}

// InstallAgent copies the guest agent binary src, checked as CheckAgent
// does, to dst (mode 0755): internal/oci puts it in container images.
func InstallAgent(src, dst string) error { return installAgent(src, dst) }

// installAgent copies the checked agent binary to dst, mode 0755.
func installAgent(src, dst string) error {
	if err := checkAgent(src); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, 0o755)
}
