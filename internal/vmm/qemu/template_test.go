package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// streamWriter builds QEMU 7.2 migration streams for the tests.
type streamWriter struct{ bytes.Buffer }

func (w *streamWriter) u8(v byte)     { w.WriteByte(v) }
func (w *streamWriter) be32(v uint32) { w.Write(binary.BigEndian.AppendUint32(nil, v)) }
func (w *streamWriter) be64(v uint64) { w.Write(binary.BigEndian.AppendUint64(nil, v)) }
func (w *streamWriter) str(s string)  { w.u8(byte(len(s))); w.WriteString(s) }

func (w *streamWriter) header() {
	w.be32(streamMagic)
	w.be32(streamVersion)
	w.u8(secConfiguration)
	w.be32(7)
	w.WriteString("microvm")
}

// page writes one page record: block "" means RAM_SAVE_FLAG_CONTINUE.
func (w *streamWriter) page(block string, addr uint64, data []byte) {
	flags := uint64(ramFlagPage)
	if len(data) == 1 {
		flags = ramFlagZero
	}
	if block == "" {
		w.be64(addr | flags | ramFlagContinue)
	} else {
		w.be64(addr | flags)
		w.str(block)
	}
	w.Write(data)
}

func (w *streamWriter) footer(id uint32) { w.u8(secFooter); w.be32(id) }

// ramStart opens the ram section (id 2, instance 0, version 4).
func (w *streamWriter) ramStart() {
	w.u8(secStart)
	w.be32(2)
	w.str("ram")
	w.be32(0)
	w.be32(4)
}

// oneBlockSetup is a stream's header and the start of its ram section,
// listing one block of one page, before the setup's end marker.
func oneBlockSetup() *streamWriter {
	var w streamWriter
	w.header()
	w.ramStart()
	w.be64(ramPage | ramFlagMemSize)
	w.str(mainRAMBlock)
	w.be64(ramPage)
	return &w
}

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, ramPage) }

// loadModel applies a stream's RAM pages the way QEMU's loader does
// (ram_load_precopy: a CONTINUE page is in the block of the page before it,
// in whatever section that was) and returns each block's contents and the
// bytes after the RAM sections.
func loadModel(t *testing.T, b []byte) (map[string][]byte, []byte) {
	t.Helper()
	r := bytes.NewReader(b)
	get := func(n int) []byte {
		p := make([]byte, n)
		if _, err := io.ReadFull(r, p); err != nil {
			t.Fatalf("model: %v", err)
		}
		return p
	}
	u8 := func() byte { return get(1)[0] }
	be32 := func() uint32 { return binary.BigEndian.Uint32(get(4)) }
	be64 := func() uint64 { return binary.BigEndian.Uint64(get(8)) }
	str := func() string { return string(get(int(u8()))) }
	if be32() != streamMagic || be32() != streamVersion {
		t.Fatal("model: bad header")
	}
	mem := map[string][]byte{}
	last := ""
	for {
		switch kind := u8(); kind {
		case secConfiguration:
			get(int(be32()))
		case secStart, secPart, secEnd:
			id := be32()
			if kind == secStart {
				str()
				be32()
				be32()
			}
			for {
				v := be64()
				flags, addr := v&ramFlagMask, v&^ramFlagMask
				if flags == ramFlagEOS {
					break
				}
				if flags == ramFlagMemSize {
					for sum := uint64(0); sum < addr; {
						name, n := str(), be64()
						mem[name] = make([]byte, n)
						sum += n
					}
					continue
				}
				if flags&ramFlagContinue == 0 {
					last = str()
				}
				if flags&^ramFlagContinue == ramFlagZero {
					copy(mem[last][addr:], bytes.Repeat([]byte{u8()}, ramPage))
				} else {
					copy(mem[last][addr:], get(ramPage))
				}
			}
			if u8() != secFooter || be32() != id {
				t.Fatal("model: bad footer")
			}
		default:
			rest, _ := io.ReadAll(r)
			return mem, append([]byte{kind}, rest...)
		}
	}
}

// sampleStream has the shapes a real stream has: a setup listing the
// blocks, pages of the guest RAM and of another block interleaved across
// two sections (with CONTINUE records whose block is the one before), a
// page sent twice, a zero page over a page written before, and the device
// sections after RAM.
func sampleStream() []byte {
	var w streamWriter
	w.header()
	w.ramStart()
	w.be64((16+2)*ramPage | ramFlagMemSize)
	w.str(mainRAMBlock)
	w.be64(16 * ramPage)
	w.str("/rom@etc/bios")
	w.be64(2 * ramPage)
	w.be64(ramFlagEOS)
	w.footer(2)

	w.u8(secPart)
	w.be32(2)
	w.page(mainRAMBlock, 0, fill('a'))
	w.page("", 1*ramPage, fill('b'))
	w.page("/rom@etc/bios", 0, fill('x'))
	w.page(mainRAMBlock, 2*ramPage, []byte{0})
	w.page("", 5*ramPage, fill('c'))
	w.page("/rom@etc/bios", 1*ramPage, fill('y'))
	w.page(mainRAMBlock, 6*ramPage, []byte{'z'})
	w.be64(ramFlagEOS)
	w.footer(2)

	w.u8(secEnd)
	w.be32(2)
	w.page("", 0, []byte{0})              // page 0 again, now zero: still microvm.ram
	w.page("", 1*ramPage, fill('B'))      // page 1 again, new data
	w.page("/rom@etc/bios", 0, fill('X')) // the other block, again
	w.page(mainRAMBlock, 15*ramPage, fill('d'))
	w.be64(ramFlagEOS)
	w.footer(2)

	w.u8(secFull)
	w.WriteString("device state, kept byte for byte")
	w.u8(secEOF)
	return w.Bytes()
}

func newMemfd(t *testing.T) *os.File {
	t.Helper()
	f, err := newSealableMemfd("test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestSplitRAM(t *testing.T) {
	in := sampleStream()
	mem := newMemfd(t)
	var rest bytes.Buffer
	info, err := splitRAM(bytes.NewReader(in), mainRAMBlock, mem, &rest)
	if err != nil {
		t.Fatal(err)
	}
	if info.Length != 16*ramPage || info.Rest != int64(rest.Len()) {
		t.Errorf("split %+v, rest %d bytes", info, rest.Len())
	}
	// 1 ('B'), 5, 6, 15 hold data; 0 was zeroed again, 2 was only ever zero.
	if info.Pages != 4 {
		t.Errorf("%d pages of data in mem, want 4", info.Pages)
	}
	want, wantTail := loadModel(t, in)
	got, err := io.ReadAll(io.NewSectionReader(mem, 0, 1<<30))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[mainRAMBlock]) {
		t.Errorf("mem differs from the guest RAM the whole stream loads")
	}
	loaded, tail := loadModel(t, rest.Bytes())
	if !bytes.Equal(loaded["/rom@etc/bios"], want["/rom@etc/bios"]) {
		t.Errorf("the rest of the stream loads other contents into the other block")
	}
	if !bytes.Equal(loaded[mainRAMBlock], make([]byte, 16*ramPage)) {
		t.Errorf("the rest of the stream still carries guest RAM pages")
	}
	if !bytes.Equal(tail, wantTail) {
		t.Errorf("device sections changed: %q, want %q", tail, wantTail)
	}
	if int64(rest.Len()) > int64(len(in))-4*ramPage {
		t.Errorf("rest is %d bytes of %d: the guest RAM pages were not taken out", rest.Len(), len(in))
	}
	// Holes, not written zeros, where no data was ever sent.
	if off, err := unix.Seek(int(mem.Fd()), 0, unix.SEEK_DATA); err != nil || off != ramPage {
		t.Errorf("first data of mem at %d (%v), want page 1: page 0 is a hole", off, err)
	}
}

func TestSplitRAMRefuses(t *testing.T) {
	good := sampleStream()
	cfgEnd := 8 + 1 + 4 + len("microvm")
	cases := map[string][]byte{
		"bad magic": append([]byte("QEVN"), good[4:]...),
		"version 2": append(append(append([]byte{}, good[:4]...), 0, 0, 0, 2), good[8:]...),
		"configuration subsection": append(append(append([]byte{}, good[:cfgEnd]...),
			secSubsection, 4, 'u', 'u', 'i', 'd'), good[cfgEnd:]...),
		"another iterative section": bytes.Replace(good, []byte("\x03ram"), []byte("\x03blk"), 1),
		"compressed page": func() []byte {
			w := oneBlockSetup()
			w.be64(0x100) // RAM_SAVE_FLAG_COMPRESS_PAGE
			return w.Bytes()
		}(),
		"page beyond its block": func() []byte {
			w := oneBlockSetup()
			w.page(mainRAMBlock, ramPage, fill(1))
			return w.Bytes()
		}(),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := splitRAM(bytes.NewReader(in), mainRAMBlock, newMemfd(t), io.Discard)
			if !errors.Is(err, errStreamUnsupported) {
				t.Errorf("err = %v, want errStreamUnsupported", err)
			}
		})
	}
	// Cut anywhere inside the RAM sections: an error, never a short split.
	for _, n := range []int{0, 3, 9, 40, 100, 5000, len(good) - 60} {
		if _, err := splitRAM(bytes.NewReader(good[:n]), mainRAMBlock, newMemfd(t), io.Discard); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("stream cut at %d of %d: err = %v, want unexpected EOF", n, len(good), err)
		}
	}
}

// TestSealedMemfd: once sealed, nobody can change what clones map, and a
// private writable mapping (what QEMU makes with share=off) still works,
// its writes staying its own.
func TestSealedMemfd(t *testing.T) {
	f := newMemfd(t)
	if _, err := f.Write(fill('s')); err != nil {
		t.Fatal(err)
	}
	if err := sealMemfd(f); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, unix.EPERM) {
		t.Errorf("write after sealing: %v, want EPERM", err)
	}
	if err := f.Truncate(0); err == nil {
		t.Error("truncate after sealing succeeded")
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, ramPage); !errors.Is(err, unix.EPERM) {
		t.Errorf("punching a hole after sealing: %v, want EPERM", err)
	}
	if _, err := unix.Mmap(int(f.Fd()), 0, ramPage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); !errors.Is(err, unix.EPERM) {
		t.Errorf("shared writable mapping: %v, want EPERM", err)
	}
	// Reopened read-write through /proc, as QEMU opens mem-path.
	re, err := os.OpenFile(filepath.Join("/proc/self/fd", strconv.Itoa(int(f.Fd()))), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer re.Close()
	p, err := unix.Mmap(int(re.Fd()), 0, ramPage, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(p)
	if p[0] != 's' {
		t.Errorf("private mapping reads %q", p[0])
	}
	p[0] = 'w'
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, 0); err != nil || b[0] != 's' {
		t.Errorf("memfd reads %q (%v) after a private write: want it unchanged", b, err)
	}
}

func writeState(t *testing.T, path string, stream []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := writeStateHeader(f, StateInfo{VMID: "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(stream); err != nil {
		t.Fatal(err)
	}
}

func openState(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if _, err := f.Seek(stateHeaderSize, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestTemplateCache: restores of one state file share one split while it
// is in use or recently used; a state file replaced at the same path is
// split again; an idle split is freed.
func TestTemplateCache(t *testing.T) {
	old := templateIdle
	templateIdle = 50 * time.Millisecond
	t.Cleanup(func() { templateIdle = old })
	path := filepath.Join(t.TempDir(), "qemu.state")
	writeState(t, path, sampleStream())

	var c templateCache
	a, err := c.acquire(path, openState(t, path))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.acquire(path, openState(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if a != b || a.mem == nil {
		t.Fatalf("two restores of one state got two splits")
	}
	s1, err := a.restStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := a.restStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s1.Fd() == s2.Fd() {
		t.Error("two restores share one stream descriptor")
	}
	got, _ := io.ReadAll(s1)
	if !bytes.Equal(got, a.rest) || len(got) == 0 {
		t.Errorf("rest stream holds %d bytes, want the split's %d", len(got), len(a.rest))
	}
	c.release(a)
	c.release(b)

	// Replaced (a new snapshot under the old name): split again.
	os.Remove(path)
	writeState(t, path, sampleStream())
	n, err := c.acquire(path, openState(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if n == a {
		t.Error("a replaced state file reused the old split")
	}
	if a.mem != nil {
		t.Error("the old split's memfd was not freed")
	}
	c.release(n)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		left, freed := len(c.m), n.mem == nil
		c.mu.Unlock()
		if left == 0 && freed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle split still cached after %s (entries %d, freed %v)", 5*time.Second, left, freed)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Forgotten (its snapshot deleted) while a restore uses it: freed when
	// that restore is done, and not found again.
	f, err := c.acquire(path, openState(t, path))
	if err != nil {
		t.Fatal(err)
	}
	c.forget(path)
	if f.mem == nil {
		t.Fatal("a split in use was freed")
	}
	c.release(f)
	if f.mem != nil {
		t.Error("a forgotten split was not freed at its last release")
	}
	c.mu.Lock()
	left := len(c.m)
	c.mu.Unlock()
	if left != 0 {
		t.Errorf("%d splits cached after forget", left)
	}

	// A stream that cannot be split: an error, nothing kept open.
	bad := filepath.Join(t.TempDir(), "bad.state")
	writeState(t, bad, []byte("not a stream at all"))
	if _, err := c.acquire(bad, openState(t, bad)); !errors.Is(err, errStreamUnsupported) {
		t.Errorf("err = %v, want errStreamUnsupported", err)
	}
}

// TestTemplateCacheConcurrent: restores of one state file that start
// together, on a busy host, wait for one split and all get it.
func TestTemplateCacheConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qemu.state")
	writeState(t, path, sampleStream())
	stop := make(chan struct{})
	defer close(stop)
	for range 4 { // keep both cores busy
		go func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	var c templateCache
	const n = 8
	got := make([]*memTemplate, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		f := openState(t, path)
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = c.acquire(path, f)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("restore %d got another split", i)
		}
	}
	c.mu.Lock()
	splits, users := c.splits, got[0].users
	c.mu.Unlock()
	if splits != 1 || users != n {
		t.Errorf("%d splits, %d users; want 1 split used %d times", splits, users, n)
	}
	for i := range n {
		c.release(got[i])
	}
	if got[0].mem == nil {
		t.Error("the split was freed at once instead of staying cached")
	}
	c.forget(path)
	if got[0].mem != nil {
		t.Error("forget left the idle split open")
	}
}
