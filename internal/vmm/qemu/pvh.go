package qemu

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
	"os"
	"strings"

	"github.com/banger-dev/banger/internal/vmm"
)

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the note (owner "Xen")
// that gives a kernel's 32-bit PVH entry point. QEMU boots an ELF kernel
// only through it.
const xenElfnotePhys32Entry = 18

// hasPVHEntry reports whether the ELF kernel at path has the PVH entry
// note. Anything else (not an ELF, unreadable, no such note) is false.
func hasPVHEntry(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz > 1<<20 {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			continue
		}
		if notesHave(data, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return true
		}
	}
	return false
}

// notesHave walks ELF notes (name size, descriptor size, type, then the
// name and the descriptor, each padded to 4 bytes) for one of owner and
// type.
func notesHave(data []byte, bo binary.ByteOrder, owner string, typ uint32) bool {
	pad := func(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, t := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
		data = data[12:]
		if pad(namesz)+pad(descsz) > uint64(len(data)) {
			return false
		}
		name := string(bytes.TrimRight(data[:namesz], "\x00"))
		if name == owner && t == typ {
			return true
		}
		data = data[pad(namesz)+pad(descsz):]
	}
	return false
}

// isELF reports whether path starts with the ELF magic.
func isELF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	return err == nil && string(magic) == elf.ELFMAG
}

// bootKernel is the kernel QEMU loads for m. A new boot takes the image's
// vmlinux through PVH when it has the entry note: the guest then
// decompresses nothing (seconds under TCG) and keeps no compressed copy of
// itself in its memory, and so in the states saved from it. A restore
// loads the kind its state was saved from (savedPVH): the option ROMs
// that QEMU loads for each kind differ, and their memory is in the state.
func bootKernel(m vmm.Machine, savedPVH bool) string {
	if m.VMLinux == "" {
		return m.Kernel
	}
	if m.Incoming != nil {
		if savedPVH {
			return m.VMLinux
		}
		return m.Kernel
	}
	if hasPVHEntry(m.VMLinux) {
		return m.VMLinux
	}
	return m.Kernel
}

// fingerprintKernel is what machineFingerprint records of a -kernel: "elf"
// for a kernel booted through PVH; nothing for a bzImage, as states saved
// before PVH boots have it.
func fingerprintKernel(path string) string {
	if isELF(path) {
		return "-kernel elf"
	}
	return ""
}

// statePVH reports whether the state saved in file came from a VM booted
// through PVH (its machine fingerprint says so). Unreadable: false, and
// the restore reports the file's problem.
func statePVH(file string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	info, err := readStateHeader(f)
	return err == nil && strings.Contains(" "+info.Machine+" ", " -kernel elf ")
}
