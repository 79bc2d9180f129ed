package fcdouble

import (
	"encoding/binary"
	"os"
)

// WriteFakeKernel writes a minimal, well-formed x86-64 ELF executable at
// path: what the double (and banger's image checks) accept as a vmlinux.
// It boots nothing; it is for tests that run the double.
func WriteFakeKernel(path string) error {
	h := make([]byte, 64+56)
	copy(h, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0}) // ELF64, little endian, version 1, SysV
	binary.LittleEndian.PutUint16(h[16:], 2)         // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 0x3e)      // EM_X86_64
	binary.LittleEndian.PutUint32(h[20:], 1)         // EV_CURRENT
	binary.LittleEndian.PutUint64(h[24:], 0x1000000) // entry
	binary.LittleEndian.PutUint64(h[32:], 64)        // program headers right after the header
	binary.LittleEndian.PutUint16(h[52:], 64)        // header size
	binary.LittleEndian.PutUint16(h[54:], 56)        // program header size
	binary.LittleEndian.PutUint16(h[56:], 1)         // one program header
	binary.LittleEndian.PutUint16(h[58:], 64)        // section header size
	ph := h[64:]
	binary.LittleEndian.PutUint32(ph[0:], 1)               // PT_LOAD
	binary.LittleEndian.PutUint32(ph[4:], 5)               // R+X
	binary.LittleEndian.PutUint64(ph[16:], 0x1000000)      // vaddr
	binary.LittleEndian.PutUint64(ph[24:], 0x1000000)      // paddr
	binary.LittleEndian.PutUint64(ph[32:], uint64(len(h))) // file size
	binary.LittleEndian.PutUint64(ph[40:], uint64(len(h))) // mem size
	binary.LittleEndian.PutUint64(ph[48:], 0x1000)         // align
	return os.WriteFile(path, h, 0o644)
}
