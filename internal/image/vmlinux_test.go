package image

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

// fakeELF is an ELF-looking payload long enough to span several LZ4 legacy
// blocks (8 MiB each) and compressible enough to exercise matches.
func fakeELF(size int) []byte {
	b := make([]byte, size)
	copy(b, elfHeader(62)) // x86-64
	for i := 64; i < size; i++ {
		b[i] = byte(i/3) ^ byte(i>>13)
	}
	return b
}

// lz4LiteralBlock encodes data as one LZ4 block of literals only: a valid
// block any LZ4 decoder must accept, written without an LZ4 library.
func lz4LiteralBlock(data []byte) []byte {
	var out []byte
	n := len(data)
	if n < 15 {
		out = append(out, byte(n<<4))
	} else {
		out = append(out, 0xf0)
		rest := n - 15
		for ; rest >= 255; rest -= 255 {
			out = append(out, 255)
		}
		out = append(out, byte(rest))
	}
	return append(out, data...)
}

// lz4LegacyLiteral builds an LZ4 legacy stream (what `lz4 -l` writes).
func lz4LegacyLiteral(data []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for len(data) > 0 {
		n := min(len(data), lz4LegacyBlockMax)
		blk := lz4LiteralBlock(data[:n])
		out = binary.LittleEndian.AppendUint32(out, uint32(len(blk)))
		out = append(out, blk...)
		data = data[n:]
	}
	return out
}

// fakeBzImage wraps a compressed payload the way the kernel build does: a
// setup area with the boot protocol header (2.15) pointing at the payload,
// which is followed by the uncompressed size (size_append) and some tail.
func fakeBzImage(payload []byte, uncompressed int) []byte {
	const setupSects = 3
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x206:], 0x020f)
	payloadOff := 0x100 // within the protected-mode part, like the real decompressor stub
	img = append(img, make([]byte, payloadOff)...)
	full := binary.LittleEndian.AppendUint32(append([]byte{}, payload...), uint32(uncompressed))
	binary.LittleEndian.PutUint32(img[0x248:], uint32(payloadOff))
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(full)))
	img = append(img, full...)
	return append(img, bytes.Repeat([]byte{0xcc}, 100)...)
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExtractVMLinuxLZ4FromHeader(t *testing.T) {
	elf := fakeELF(lz4LegacyBlockMax + 12345) // two blocks
	vmlinuz := writeTemp(t, "vmlinuz", fakeBzImage(lz4LegacyLiteral(elf), len(elf)))
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVMLinux(context.Background(), nil, vmlinuz, out); err != nil {
		t.Fatalf("ExtractVMLinux: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, elf) {
		t.Fatalf("extracted %d bytes, want the %d-byte payload back", len(got), len(elf))
	}
}

func TestExtractVMLinuxGzipByScanning(t *testing.T) {
	elf := fakeELF(300000)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(elf)
	zw.Close()
	// No boot header: the magic must be found by scanning, past a decoy.
	data := append([]byte("some setup code \x1f\x8b\x08 decoy "), gz.Bytes()...)
	data = append(data, "trailing junk"...)
	vmlinuz := writeTemp(t, "vmlinuz", data)
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVMLinux(context.Background(), nil, vmlinuz, out); err != nil {
		t.Fatalf("ExtractVMLinux: %v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, elf) {
		t.Fatalf("extracted %d bytes, want the %d-byte payload back", len(got), len(elf))
	}
}

// The real lz4 tool's output (with matches, not just literals) must decode
// too; skipped where the lz4 package is not installed.
func TestExtractVMLinuxLZ4Tool(t *testing.T) {
	if _, err := system.LookPath("lz4"); err != nil {
		t.Skip("lz4 tool not installed (apt-get install lz4)")
	}
	elf := fakeELF(lz4LegacyBlockMax*2 + 777)
	dir := t.TempDir()
	raw := writeTemp(t, "raw", elf)
	comp := filepath.Join(dir, "raw.lz4")
	if _, err := (system.ExecRunner{}).Run(context.Background(), "lz4", "-l", "-9", "-q", raw, comp); err != nil {
		t.Fatalf("lz4: %v", err)
	}
	payload, err := os.ReadFile(comp)
	if err != nil {
		t.Fatal(err)
	}
	if len(payload) >= len(elf)/2 {
		t.Fatalf("lz4 output %d bytes for %d: matches expected", len(payload), len(elf))
	}
	vmlinuz := writeTemp(t, "vmlinuz", fakeBzImage(payload, len(elf)))
	out := filepath.Join(dir, "vmlinux")
	if err := ExtractVMLinux(context.Background(), nil, vmlinuz, out); err != nil {
		t.Fatalf("ExtractVMLinux: %v", err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, elf) {
		t.Fatal("lz4-tool payload decoded to different bytes")
	}
}

func TestExtractVMLinuxRejects(t *testing.T) {
	notELF := []byte("this decompresses fine but is not an ELF kernel")
	cases := map[string][]byte{
		"no payload":       bytes.Repeat([]byte("x"), 5000),
		"already ELF":      fakeELF(1000),
		"not ELF inside":   fakeBzImage(lz4LegacyLiteral(notELF), len(notELF)),
		"wrong size":       fakeBzImage(lz4LegacyLiteral(fakeELF(1000)), 999),
		"corrupt lz4":      fakeBzImage([]byte{0x02, 0x21, 0x4c, 0x18, 5, 0, 0, 0, 0x1f, 'a', 0xff, 0xff, 0}, 100),
		"truncated header": []byte("\x00\x00HdrS"),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			vmlinuz := writeTemp(t, "vmlinuz", data)
			out := filepath.Join(t.TempDir(), "vmlinux")
			if err := ExtractVMLinux(context.Background(), nil, vmlinuz, out); err == nil {
				t.Fatal("ExtractVMLinux succeeded")
			}
			for _, p := range []string{out, out + ".tmp"} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("failed extraction left %s", filepath.Base(p))
				}
			}
		})
	}
}

func TestExtractVMLinuxMissingFile(t *testing.T) {
	err := ExtractVMLinux(context.Background(), nil, filepath.Join(t.TempDir(), "nope"), filepath.Join(t.TempDir(), "out"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want os.ErrNotExist", err)
	}
}

// xz payloads go to the xz tool through the runner.
func TestExtractVMLinuxXZUsesRunner(t *testing.T) {
	elf := fakeELF(5000)
	payload := append([]byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, "pretend-xz-stream"...)
	vmlinuz := writeTemp(t, "vmlinuz", fakeBzImage(payload, len(elf)))
	var gotArgv []string
	r := runnerFunc(func(name string, args ...string) ([]byte, error) {
		gotArgv = append([]string{name}, args...)
		in, err := os.ReadFile(args[len(args)-1])
		if err != nil || !bytes.Equal(in, payload) {
			t.Errorf("xz got input %q (%v), want the payload without the size suffix", in, err)
		}
		return elf, nil
	})
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVMLinux(context.Background(), r, vmlinuz, out); err != nil {
		t.Fatalf("ExtractVMLinux: %v", err)
	}
	if len(gotArgv) == 0 || gotArgv[0] != "xz" || !strings.Contains(strings.Join(gotArgv, " "), "-dc") {
		t.Errorf("runner argv %q, want xz -dc ...", gotArgv)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, elf) {
		t.Error("xz output not written")
	}
}

func TestLZ4DecodeBlockOverlappingMatch(t *testing.T) {
	// "ab" as literals, then a match of offset 2, length 4+6=10 that copies
	// its own output: "ab" + "ababababab"; then a final literal "!".
	blk := []byte{0x26, 'a', 'b', 2, 0, 0x10, '!'}
	got, err := lz4DecodeBlock(nil, blk, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "abababababab!" {
		t.Fatalf("decoded %q", got)
	}
	if _, err := lz4DecodeBlock(nil, blk, 5); err == nil {
		t.Error("decoding past the output limit succeeded")
	}
	if _, err := lz4DecodeBlock(nil, []byte{0x20, 'a', 'b', 3, 0, 0x10, '!'}, 1<<20); err == nil {
		t.Error("offset before the start of output accepted")
	}
}

type runnerFunc func(name string, args ...string) ([]byte, error)

func (f runnerFunc) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	return f(name, args...)
}
