package image

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// Bootability says which VMM can boot an image's files, and why not.
type Bootability struct {
	QEMU        bool     // bzImage or ELF kernel, ext4 rootfs, initrd readable when set
	Firecracker bool     // also an x86-64 ELF vmlinux (Firecracker has no bzImage loader)
	Reasons     []string // one line per problem found
}

// Inspect checks an image's files before the daemon registers or boots it:
// the kernel exists and is a bzImage or an ELF file, the rootfs is ext4 (by
// its superblock magic), the initrd exists when one is named, and vmlinux is
// an x86-64 ELF. It reads only headers, so it is cheap enough for every start.
func Inspect(kernel, vmlinux, initrd, rootfs string) Bootability {
	var b Bootability
	kernelOK := checkKernel(kernel, &b.Reasons)
	rootfsOK := checkExt4(rootfs, &b.Reasons)
	initrdOK := true
	if initrd != "" {
		initrdOK = checkInitrd(initrd, &b.Reasons)
	}
	vmlinuxOK := false
	if vmlinux == "" {
		b.Reasons = append(b.Reasons, "no vmlinux (uncompressed ELF kernel): Firecracker cannot boot a bzImage")
	} else {
		vmlinuxOK = checkVMLinux(vmlinux, &b.Reasons)
	}
	b.QEMU = kernelOK && rootfsOK && initrdOK
	b.Firecracker = vmlinuxOK && rootfsOK && initrdOK
	return b
}

func readHead(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, n)
	m, err := io.ReadFull(f, buf)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		err = nil
	}
	return buf[:m], err
}

func checkKernel(path string, reasons *[]string) bool {
	if path == "" {
		*reasons = append(*reasons, "no kernel")
		return false
	}
	head, err := readHead(path, 0x210)
	if err != nil {
		*reasons = append(*reasons, fmt.Sprintf("kernel: %v", err))
		return false
	}
	if bytes.HasPrefix(head, elfMagic) {
		return true
	}
	if len(head) >= 0x206 && string(head[0x202:0x206]) == "HdrS" {
		return true
	}
	*reasons = append(*reasons, fmt.Sprintf("kernel %s is neither a bzImage (no HdrS boot header) nor an ELF file", path))
	return false
}

// ext4 superblock: 1024 bytes in; s_magic (0xEF53, little endian) at +56.
const ext4MagicOffset = 1024 + 56

func checkExt4(path string, reasons *[]string) bool {
	if path == "" {
		*reasons = append(*reasons, "no rootfs")
		return false
	}
	head, err := readHead(path, ext4MagicOffset+2)
	if err != nil {
		*reasons = append(*reasons, fmt.Sprintf("rootfs: %v", err))
		return false
	}
	if len(head) < ext4MagicOffset+2 || binary.LittleEndian.Uint16(head[ext4MagicOffset:]) != 0xEF53 {
		*reasons = append(*reasons, fmt.Sprintf("rootfs %s is not an ext2/3/4 filesystem (no 0xEF53 superblock magic)", path))
		return false
	}
	return true
}

func checkInitrd(path string, reasons *[]string) bool {
	st, err := os.Stat(path)
	if err != nil {
		*reasons = append(*reasons, fmt.Sprintf("initrd: %v", err))
		return false
	}
	if !st.Mode().IsRegular() || st.Size() == 0 {
		*reasons = append(*reasons, fmt.Sprintf("initrd %s is empty or not a regular file", path))
		return false
	}
	return true
}

func checkVMLinux(path string, reasons *[]string) bool {
	f, err := elf.Open(path)
	if err != nil {
		*reasons = append(*reasons, fmt.Sprintf("vmlinux: %v", err))
		return false
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		*reasons = append(*reasons, fmt.Sprintf("vmlinux %s is %v %v, not an x86-64 ELF", path, f.Class, f.Machine))
		return false
	}
	return true
}
