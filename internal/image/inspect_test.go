package image

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeExt4 has only what Inspect reads: the superblock magic.
func fakeExt4(t *testing.T) string {
	b := make([]byte, 4096)
	binary.LittleEndian.PutUint16(b[1080:], 0xEF53)
	return writeTemp(t, "rootfs.ext4", b)
}

// elfHeader is a minimal valid ELF64 header for machine, enough for debug/elf.
func elfHeader(machine uint16) []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1                     // ELFCLASS64, little endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2)       // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], machine) // e_machine
	binary.LittleEndian.PutUint32(h[20:], 1)       // e_version
	binary.LittleEndian.PutUint16(h[52:], 64)      // e_ehsize
	binary.LittleEndian.PutUint16(h[54:], 56)      // e_phentsize
	binary.LittleEndian.PutUint16(h[58:], 64)      // e_shentsize
	return h
}

func fakeVMLinux(t *testing.T, machine uint16) string {
	return writeTemp(t, "vmlinux", elfHeader(machine))
}

func fakeKernel(t *testing.T) string {
	return writeTemp(t, "vmlinuz", fakeBzImage([]byte("payload"), 7))
}

func TestInspectGoodImage(t *testing.T) {
	initrd := writeTemp(t, "initrd.img", []byte("\x1f\x8b\x08 not really"))
	b := Inspect(fakeKernel(t), fakeVMLinux(t, 62), initrd, fakeExt4(t))
	if !b.QEMU || !b.Firecracker || len(b.Reasons) != 0 {
		t.Fatalf("Inspect(good image) = %+v", b)
	}
	// An ELF kernel boots QEMU too (PVH), and the initrd is optional.
	b = Inspect(fakeVMLinux(t, 62), "", "", fakeExt4(t))
	if !b.QEMU || b.Firecracker {
		t.Fatalf("Inspect(ELF kernel, no vmlinux) = %+v, want QEMU only", b)
	}
}

func TestInspectBadImages(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	notExt4 := writeTemp(t, "rootfs.img", make([]byte, 4096))
	short := writeTemp(t, "short", []byte("tiny"))
	emptyInitrd := writeTemp(t, "initrd", nil)
	cases := []struct {
		name                            string
		kernel, vmlinux, initrd, rootfs string
		wantQEMU, wantFirecracker       bool
		wantReason                      string
	}{
		{"missing kernel", missing, fakeVMLinux(t, 62), "", fakeExt4(t), false, true, "kernel"},
		{"kernel is junk", short, "", "", fakeExt4(t), false, false, "neither a bzImage"},
		{"rootfs not ext4", fakeKernel(t), fakeVMLinux(t, 62), "", notExt4, false, false, "not an ext2/3/4"},
		{"rootfs too short", fakeKernel(t), "", "", short, false, false, "not an ext2/3/4"},
		{"missing rootfs", fakeKernel(t), "", "", missing, false, false, "rootfs"},
		{"missing initrd", fakeKernel(t), fakeVMLinux(t, 62), missing, fakeExt4(t), false, false, "initrd"},
		{"empty initrd", fakeKernel(t), fakeVMLinux(t, 62), emptyInitrd, fakeExt4(t), false, false, "empty"},
		{"vmlinux for arm64", fakeKernel(t), fakeVMLinux(t, 183), "", fakeExt4(t), true, false, "not an x86-64 ELF"},
		{"vmlinux not ELF", fakeKernel(t), fakeKernel(t), "", fakeExt4(t), true, false, "vmlinux"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := Inspect(c.kernel, c.vmlinux, c.initrd, c.rootfs)
			if b.QEMU != c.wantQEMU || b.Firecracker != c.wantFirecracker {
				t.Errorf("Inspect = QEMU %v Firecracker %v, want %v %v (reasons %q)", b.QEMU, b.Firecracker, c.wantQEMU, c.wantFirecracker, b.Reasons)
			}
			if !strings.Contains(strings.Join(b.Reasons, "\n"), c.wantReason) {
				t.Errorf("reasons %q lack %q", b.Reasons, c.wantReason)
			}
		})
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatal("Inspect created a file")
	}
}
