package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// elfMagic starts every ELF file; Firecracker (and QEMU's PVH loader) take an
// uncompressed ELF kernel, which is what ExtractVMLinux produces.
var elfMagic = []byte("\x7fELF")

// compression is one way a kernel payload can be compressed. decode writes
// the decompressed stream of src to w; tail says src may be followed by data
// that is not part of the stream (magic scanning, where the end is unknown).
type compression struct {
	name   string
	magic  []byte
	decode func(ctx context.Context, r Runner, src []byte, w io.Writer, tail bool) error
}

// compressions are tried in this order when scanning for a magic. The LZ4
// legacy magic comes first: Debian's kernels are built with CONFIG_KERNEL_LZ4.
var compressions = []compression{
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, decodeLZ4Legacy},
	{"gzip", []byte{0x1f, 0x8b, 0x08}, decodeGzip},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, decodeWithTool("xz", "-dc", "--single-stream")},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, decodeWithTool("zstd", "-dc")},
}

// ExtractVMLinux cuts the uncompressed ELF kernel out of a bzImage (vmlinuz)
// so that Firecracker, which has no bzImage loader, can boot the same kernel.
// It reads the compressed payload's position from the boot protocol header
// (payload_offset/payload_length, protocol 2.08+); without one it scans for
// a compression magic, like the kernel's scripts/extract-vmlinux. LZ4 and
// gzip are decoded in Go; xz and zstd need the xz or zstd tool through r.
// The output is written atomically and must start with \x7fELF.
func ExtractVMLinux(ctx context.Context, r Runner, vmlinuz, out string) error {
	data, err := os.ReadFile(vmlinuz)
	if err != nil {
		return fmt.Errorf("extracting vmlinux from %s: %w", vmlinuz, err)
	}
	if bytes.HasPrefix(data, elfMagic) {
		return fmt.Errorf("extracting vmlinux from %s: already an uncompressed ELF kernel", vmlinuz)
	}
	var errs []error
	if payload, ok := bzImagePayload(data); ok {
		c, found := compressionOf(payload)
		if !found {
			errs = append(errs, fmt.Errorf("bzImage payload has an unknown compression (magic % x)", payload[:min(6, len(payload))]))
		} else {
			// The kernel build appends the uncompressed size (4 bytes, LE)
			// after every compressed payload (scripts/Makefile.lib size_append).
			stream := payload[:len(payload)-4]
			want := int64(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
			// The header is authoritative: no guessing by scanning after it.
			if err := writeDecoded(ctx, r, c, stream, false, out, want); err != nil {
				return fmt.Errorf("extracting vmlinux from %s: %s payload: %w", vmlinuz, c.name, err)
			}
			return nil
		}
	}
	for _, c := range compressions {
		for off := 0; ; {
			i := bytes.Index(data[off:], c.magic)
			if i < 0 {
				break
			}
			off += i
			err := writeDecoded(ctx, r, c, data[off:], true, out, -1)
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("extracting vmlinux from %s: %w", vmlinuz, ctx.Err())
			}
			errs = append(errs, fmt.Errorf("%s at offset %d: %w", c.name, off, err))
			off++
		}
	}
	if len(errs) == 0 {
		return fmt.Errorf("extracting vmlinux from %s: no compressed kernel found", vmlinuz)
	}
	return fmt.Errorf("extracting vmlinux from %s: %w", vmlinuz, errors.Join(errs...))
}

// bzImagePayload returns the compressed kernel inside a bzImage, located by
// the boot protocol header (Documentation/arch/x86/boot.rst).
func bzImagePayload(data []byte) ([]byte, bool) {
	if len(data) < 0x250 || string(data[0x202:0x206]) != "HdrS" {
		return nil, false
	}
	if binary.LittleEndian.Uint16(data[0x206:0x208]) < 0x208 {
		return nil, false // no payload_offset field before protocol 2.08
	}
	setupSects := int(data[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(data[0x248:0x24c]))
	n := int(binary.LittleEndian.Uint32(data[0x24c:0x250]))
	if n <= 4 || off < 0 || off+n > len(data) {
		return nil, false
	}
	return data[off : off+n], true
}

func compressionOf(payload []byte) (compression, bool) {
	for _, c := range compressions {
		if bytes.HasPrefix(payload, c.magic) {
			return c, true
		}
	}
	return compression{}, false
}

// writeDecoded decodes src into out (through a temporary file renamed into
// place), checks the ELF magic and, when want >= 0, the size.
func writeDecoded(ctx context.Context, r Runner, c compression, src []byte, tail bool, out string, want int64) (err error) {
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := c.decode(ctx, r, src, bw, tail); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	head := make([]byte, len(elfMagic))
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, elfMagic) {
		return fmt.Errorf("decompressed data is not an ELF file (starts % x)", head)
	}
	if want >= 0 {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size() != want {
			return fmt.Errorf("decompressed %d bytes, header says %d", st.Size(), want)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

func decodeGzip(_ context.Context, _ Runner, src []byte, w io.Writer, _ bool) error {
	zr, err := gzip.NewReader(bytes.NewReader(src))
	if err != nil {
		return err
	}
	zr.Multistream(false) // anything after the first member is not ours
	_, err = io.Copy(w, zr)
	return err
}

// decodeWithTool runs a decompressor that reads a file and writes stdout. The
// payload goes through a temporary file because a Runner has no stdin.
func decodeWithTool(tool string, args ...string) func(context.Context, Runner, []byte, io.Writer, bool) error {
	return func(ctx context.Context, r Runner, src []byte, w io.Writer, tail bool) error {
		if r == nil {
			return fmt.Errorf("%s decompression needs a runner", tool)
		}
		f, err := os.CreateTemp("", "banger-kernel-payload-*")
		if err != nil {
			return err
		}
		defer os.Remove(f.Name())
		if _, err := f.Write(src); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		out, err := r.Run(ctx, tool, append(args, f.Name())...)
		// With trailing data after the stream (scan mode) the tool may
		// complain after writing everything; the ELF check judges the output.
		if err != nil && (!tail || len(out) == 0) {
			return err
		}
		_, werr := w.Write(out)
		return werr
	}
}

// lz4LegacyMagic opens an LZ4 "legacy" frame, the format of `lz4 -l` that the
// kernel uses for CONFIG_KERNEL_LZ4: then blocks, each a 4-byte LE compressed
// size and an independent LZ4 block of at most 8 MiB decompressed.
const (
	lz4LegacyMagic    = 0x184c2102
	lz4LegacyBlockMax = 8 << 20
)

// decodeLZ4Legacy decodes an LZ4 legacy stream. The stream has no end marker:
// it ends where the input does, or (tail) where what follows cannot be a block.
func decodeLZ4Legacy(_ context.Context, _ Runner, src []byte, w io.Writer, tail bool) error {
	if len(src) < 4 || binary.LittleEndian.Uint32(src) != lz4LegacyMagic {
		return errors.New("lz4: no legacy frame magic")
	}
	buf := make([]byte, 0, lz4LegacyBlockMax)
	blocks := 0
	for p := 4; p < len(src); {
		if len(src)-p < 4 {
			if tail {
				break
			}
			return fmt.Errorf("lz4: %d stray bytes at end of stream", len(src)-p)
		}
		n := int(binary.LittleEndian.Uint32(src[p:]))
		if n == lz4LegacyMagic { // concatenated legacy frames
			p += 4
			continue
		}
		if n == 0 || n > len(src)-p-4 {
			if tail && blocks > 0 {
				break
			}
			return fmt.Errorf("lz4: block at %d claims %d bytes, %d left", p, n, len(src)-p-4)
		}
		var err error
		buf, err = lz4DecodeBlock(buf[:0], src[p+4:p+4+n], lz4LegacyBlockMax)
		if err != nil {
			if tail && blocks > 0 {
				break
			}
			return fmt.Errorf("lz4: block at %d: %w", p, err)
		}
		if _, err := w.Write(buf); err != nil {
			return err
		}
		blocks++
		p += 4 + n
	}
	if blocks == 0 {
		return errors.New("lz4: empty stream")
	}
	return nil
}

// lz4DecodeBlock appends the decoding of one LZ4 block (sequences of a token,
// literals, a 2-byte offset and a match; the last sequence has literals only)
// to dst, refusing to produce more than limit bytes.
func lz4DecodeBlock(dst, src []byte, limit int) ([]byte, error) {
	errCorrupt := errors.New("corrupt block")
	readLen := func(p *int, n int) (int, error) {
		if n != 15 {
			return n, nil
		}
		for {
			if *p >= len(src) {
				return 0, errCorrupt
			}
			b := src[*p]
			*p++
			n += int(b)
			if n > limit {
				return 0, errCorrupt
			}
			if b != 255 {
				return n, nil
			}
		}
	}
	for p := 0; p < len(src); {
		token := src[p]
		p++
		lit, err := readLen(&p, int(token>>4))
		if err != nil {
			return nil, err
		}
		if lit > len(src)-p || len(dst)+lit > limit {
			return nil, errCorrupt
		}
		dst = append(dst, src[p:p+lit]...)
		p += lit
		if p == len(src) {
			return dst, nil // last sequence: literals only
		}
		if len(src)-p < 2 {
			return nil, errCorrupt
		}
		off := int(src[p]) | int(src[p+1])<<8
		p += 2
		if off == 0 || off > len(dst) {
			return nil, errCorrupt
		}
		mlen, err := readLen(&p, int(token&15))
		if err != nil {
			return nil, err
		}
		mlen += 4
		if len(dst)+mlen > limit {
			return nil, errCorrupt
		}
		start := len(dst) - off
		if off >= mlen {
			dst = append(dst, dst[start:start+mlen]...)
			continue
		}
		// Byte by byte: an overlapping match repeats the bytes it produces.
		for i := 0; i < mlen; i++ {
			dst = append(dst, dst[start+i])
		}
	}
	return nil, errCorrupt // a block never ends on a match
}
