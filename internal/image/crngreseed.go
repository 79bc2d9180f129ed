package image

import "encoding/binary"

// crngReseedPath is where the minimal image keeps crng-reseed, which the
// guest agent's reseed command runs after writing the host's seed to
// /dev/urandom.
const crngReseedPath = "usr/lib/banger/crng-reseed"

// crngReseedELF returns crng-reseed: a static x86-64 Linux program that
// opens /dev/urandom and issues ioctl RNDRESEEDCRNG, so the kernel's CRNG
// is rekeyed from its input pool (which holds the seed just written, plus
// RDRAND output under -cpu max) at once. Clones restored from one saved
// state otherwise share their CRNG until its next scheduled reseed, up to
// a minute later (Linux 6.1 random.c, crng_has_old_seed): a write to
// /dev/urandom mixes bytes in without a reseed, and busybox has no applet
// that issues the ioctl (seedrng came with 1.36; the image has 1.35).
//
// The program exits with 0 on success, else with the errno (EPERM, 1,
// without CAP_SYS_ADMIN; ENODATA, 61, before the CRNG was first seeded).
// It is built here, byte by byte, because the image is assembled from
// Debian packages without a compiler; it is 174 bytes and the instructions
// are listed below.
func crngReseedELF() []byte {
	const (
		base     = 0x400000 // load address
		ehdrSize = 64
		phdrSize = 56
		codeOff  = ehdrSize + phdrSize
	)
	code := []byte{
		0xb8, 0x02, 0x00, 0x00, 0x00, // mov eax, 2          ; open
		0x48, 0x8d, 0x3d, 0x1d, 0x00, 0x00, 0x00, // lea rdi, [rip+0x1d] ; the path, after the code
		0x31, 0xf6, // xor esi, esi        ; O_RDONLY (the ioctl needs no write access)
		0x0f, 0x05, // syscall
		0x89, 0xc7, // mov edi, eax        ; fd (a negative errno makes ioctl fail with EBADF)
		0xb8, 0x10, 0x00, 0x00, 0x00, // mov eax, 16         ; ioctl
		0xbe, 0x07, 0x52, 0x00, 0x00, // mov esi, 0x5207     ; RNDRESEEDCRNG = _IO('R', 0x07)
		0x0f, 0x05, // syscall
		0x89, 0xc7, // mov edi, eax        ; 0 or -errno
		0xf7, 0xdf, // neg edi             ; exit status: errno
		0xb8, 0xe7, 0x00, 0x00, 0x00, // mov eax, 231        ; exit_group
		0x0f, 0x05, // syscall
	}
	// The lea's displacement counts from the end of the lea (offset 12).
	if len(code)-12 != 0x1d {
		panic("crng-reseed: path displacement out of date")
	}
	code = append(code, "/dev/urandom\x00"...)
	size := codeOff + len(code)

	b := make([]byte, size)
	le := binary.LittleEndian
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little-endian, ELF version 1 (System V ABI)
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 0x3e) // EM_X86_64
	le.PutUint32(b[20:], 1)    // EV_CURRENT
	le.PutUint64(b[24:], base+codeOff)
	le.PutUint64(b[32:], ehdrSize) // program headers follow the ELF header
	le.PutUint16(b[52:], ehdrSize)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], 1) // one program header, no sections

	ph := b[ehdrSize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // PF_R | PF_X
	le.PutUint64(ph[8:], 0) // the whole file ...
	le.PutUint64(ph[16:], base)
	le.PutUint64(ph[24:], base)
	le.PutUint64(ph[32:], uint64(size)) // ... mapped at base
	le.PutUint64(ph[40:], uint64(size))
	le.PutUint64(ph[48:], 0x1000)

	copy(b[codeOff:], code)
	return b
}
