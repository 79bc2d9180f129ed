package qemu

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/vmm"
)

// writeELFWithNote writes a minimal 64-bit little-endian ELF whose one
// program header is a PT_NOTE holding a note of owner and typ.
func writeELFWithNote(t *testing.T, path, owner string, typ uint32) {
	t.Helper()
	le := binary.LittleEndian
	var note bytes.Buffer
	name := append([]byte(owner), 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	binary.Write(&note, le, uint32(len(owner)+1))
	binary.Write(&note, le, uint32(4))
	binary.Write(&note, le, typ)
	note.Write(name)
	note.Write([]byte{0, 0, 0x10, 0}) // the entry point
	const ehsize, phsize = 64, 56
	var b bytes.Buffer
	b.Write([]byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	b.Write(make([]byte, 8))
	binary.Write(&b, le, uint16(2))    // ET_EXEC
	binary.Write(&b, le, uint16(0x3e)) // x86-64
	binary.Write(&b, le, uint32(1))
	binary.Write(&b, le, uint64(0x1000000)) // entry
	binary.Write(&b, le, uint64(ehsize))    // phoff
	binary.Write(&b, le, uint64(0))         // shoff
	binary.Write(&b, le, uint32(0))
	binary.Write(&b, le, uint16(ehsize))
	binary.Write(&b, le, uint16(phsize))
	binary.Write(&b, le, uint16(1))
	binary.Write(&b, le, uint16(64))
	binary.Write(&b, le, uint16(0))
	binary.Write(&b, le, uint16(0))
	binary.Write(&b, le, uint32(4)) // PT_NOTE
	binary.Write(&b, le, uint32(4)) // PF_R
	binary.Write(&b, le, uint64(ehsize+phsize))
	binary.Write(&b, le, uint64(0))
	binary.Write(&b, le, uint64(0))
	binary.Write(&b, le, uint64(note.Len()))
	binary.Write(&b, le, uint64(note.Len()))
	binary.Write(&b, le, uint64(4))
	b.Write(note.Bytes())
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A kernel with PVH's entry note is booted through PVH on a new boot; one
// without it, or no vmlinux at all, boots the bzImage. A restore boots the
// kind its state was saved from.
func TestBootKernel(t *testing.T) {
	dir := t.TempDir()
	pvh, other, bz := filepath.Join(dir, "pvh"), filepath.Join(dir, "other"), filepath.Join(dir, "bzImage")
	writeELFWithNote(t, pvh, "Xen", xenElfnotePhys32Entry)
	writeELFWithNote(t, other, "Linux", xenElfnotePhys32Entry)
	os.WriteFile(bz, []byte("MZ\x00\x00not an elf"), 0o644)
	if !hasPVHEntry(pvh) || hasPVHEntry(other) || hasPVHEntry(bz) || hasPVHEntry(filepath.Join(dir, "missing")) {
		t.Fatalf("hasPVHEntry: pvh %v, other %v, bzImage %v", hasPVHEntry(pvh), hasPVHEntry(other), hasPVHEntry(bz))
	}
	restore := &vmm.Incoming{File: "state"}
	for _, tc := range []struct {
		name     string
		m        vmm.Machine
		savedPVH bool
		want     string
	}{
		{"new boot, vmlinux with the note", vmm.Machine{Kernel: bz, VMLinux: pvh}, false, pvh},
		{"new boot, vmlinux without it", vmm.Machine{Kernel: bz, VMLinux: other}, false, bz},
		{"new boot, no vmlinux", vmm.Machine{Kernel: bz}, false, bz},
		{"restore of a bzImage boot", vmm.Machine{Kernel: bz, VMLinux: pvh, Incoming: restore}, false, bz},
		{"restore of a PVH boot", vmm.Machine{Kernel: bz, VMLinux: pvh, Incoming: restore}, true, pvh},
	} {
		if got := bootKernel(tc.m, tc.savedPVH); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}
}

// The fingerprint says when the kernel was booted through PVH, and is what
// it always was for a bzImage: states saved before PVH boots still match,
// and statePVH reads the kind back from a state file.
func TestFingerprintKernelKind(t *testing.T) {
	dir := t.TempDir()
	pvh, bz := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "bzImage")
	writeELFWithNote(t, pvh, "Xen", xenElfnotePhys32Entry)
	os.WriteFile(bz, []byte("MZ bzImage"), 0o644)
	base := []string{"qemu", "-M", "microvm", "-m", "1024"}
	fpBz := machineFingerprint(append(append([]string{}, base...), "-kernel", bz))
	fpPVH := machineFingerprint(append(append([]string{}, base...), "-kernel", pvh))
	if fpBz != machineFingerprint(base) {
		t.Errorf("a bzImage changed the fingerprint: %q vs %q", fpBz, machineFingerprint(base))
	}
	if !strings.Contains(fpPVH, "-kernel elf") || fpPVH == fpBz {
		t.Errorf("PVH fingerprint %q", fpPVH)
	}
	for fp, want := range map[string]bool{fpPVH: true, fpBz: false} {
		file := filepath.Join(dir, "state")
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeStateHeader(f, StateInfo{QEMUVersion: "7.2.22", Machine: fp}); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got := statePVH(file); got != want {
			t.Errorf("statePVH for %q = %v", fp, got)
		}
	}
	if statePVH(filepath.Join(dir, "missing")) {
		t.Error("statePVH of a missing file")
	}
}
