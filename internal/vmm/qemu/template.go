package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/vmm"
)

// Clones share their source's memory (docs/snapshots.md, "Clones share
// the snapshot's memory"). A state file holds the guest's RAM as pages in
// QEMU's migration stream, and a plain restore reads every page into fresh
// memory of its own QEMU: a fork of four pays for four copies, and on a host
// whose first touch of fresh memory is slow, that is where a fork's time
// goes. splitRAM takes the guest RAM's pages out of the stream once and puts
// them into a sealed memfd at their offsets; each clone's QEMU maps that
// memfd privately as its RAM (memory-backend-file, share=off) and loads only
// the rest of the stream. Pages a clone never writes stay shared with every
// other clone, in the page cache of the memfd; a page it writes becomes its
// own (copy on write). The seals forbid any write to the memfd, so no clone
// can change what another one reads.

// mainRAMBlock is the RAM block that holds -M microvm's guest memory, both
// for plain -m and for a memory backend with this id.
const mainRAMBlock = "microvm.ram"

// QEMU 7.2's migration stream: section types (migration/savevm.c) and the
// RAM section's page flags (migration/ram.c).
const (
	streamMagic   = 0x5145564d // "QEVM"
	streamVersion = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secFull          = 0x04
	secSubsection    = 0x05
	secConfiguration = 0x07
	secFooter        = 0x7e

	ramFlagZero     = 0x02
	ramFlagMemSize  = 0x04
	ramFlagPage     = 0x08
	ramFlagEOS      = 0x10
	ramFlagContinue = 0x20
	ramFlagMask     = 0xfff // below TARGET_PAGE_BITS (12 on x86)

	ramPage = 4096
)

// errStreamUnsupported marks a stream splitRAM does not know how to split
// (another QEMU's format, compression, a capability banger never sets). The
// caller restores from the whole stream instead.
var errStreamUnsupported = errors.New("migration stream not splittable")

func unsupported(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errStreamUnsupported, fmt.Sprintf(format, a...))
}

// ramSplit is what splitRAM found.
type ramSplit struct {
	Length int64 // used length of the block, the size mem was given
	Pages  int64 // pages of the block written into mem (last copy of each)
	Rest   int64 // bytes written to rest
}

// splitRAM reads a QEMU 7.2 migration stream from r. The pages of RAM block
// block go into mem, each at its offset in the block (mem is truncated to
// the block's length first, so pages never sent, or sent as zero, are
// holes); everything else goes to rest, a stream QEMU loads like the
// original one into a VM whose RAM already holds mem's contents. Pages of
// other blocks are kept, with their block names written out again where a
// dropped page had been the previous one.
func splitRAM(r io.Reader, block string, mem *os.File, rest io.Writer) (ramSplit, error) {
	s := splitter{
		r:      bufio.NewReaderSize(r, 1<<20),
		w:      bufio.NewWriterSize(rest, 256<<10),
		mem:    mem,
		target: block,
		blocks: map[string]int64{},
		ramID:  -1,
	}
	if err := s.run(); err != nil {
		return ramSplit{}, err
	}
	if err := s.flushRun(); err != nil {
		return ramSplit{}, err
	}
	if err := s.w.Flush(); err != nil {
		return ramSplit{}, err
	}
	if s.length < 0 {
		return ramSplit{}, unsupported("no RAM block %q in the stream", block)
	}
	return ramSplit{Length: s.length, Pages: int64(len(s.written)), Rest: s.out}, nil
}

type splitter struct {
	r      *bufio.Reader
	w      *bufio.Writer
	out    int64
	mem    *os.File
	target string

	blocks  map[string]int64 // RAM blocks and their used lengths, from the setup
	length  int64            // the target block's length, -1 until known
	ramID   int64            // section id of "ram"
	lastIn  string           // block of the last page read (RAM_SAVE_FLAG_CONTINUE)
	lastOut string           // block of the last page written to rest
	written map[int64]bool   // target pages holding data in mem
	buf     [ramPage]byte

	// A run of consecutive target pages, written to mem in one pwrite.
	pending []byte
	pendOff int64
}

func (s *splitter) read(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.r, b); err != nil {
		return nil, fmt.Errorf("migration stream: %w", noEOF(err))
	}
	return b, nil
}

// noEOF: a stream that ends anywhere but after its last section is cut.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (s *splitter) u8() (byte, error) {
	b, err := s.read(1)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (s *splitter) be32() (uint32, error) {
	b, err := s.read(4)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

func (s *splitter) be64() (uint64, error) {
	b, err := s.read(8)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// str reads a string with a one-byte length, as idstrs are sent.
func (s *splitter) str() (string, error) {
	n, err := s.u8()
	if err != nil {
		return "", err
	}
	b, err := s.read(int(n))
	return string(b), err
}

func (s *splitter) put(b ...byte) { s.w.Write(b); s.out += int64(len(b)) }

func (s *splitter) put32(v uint32) { s.put(binary.BigEndian.AppendUint32(nil, v)...) }

func (s *splitter) put64(v uint64) { s.put(binary.BigEndian.AppendUint64(nil, v)...) }

func (s *splitter) putStr(v string) { s.put(byte(len(v))); s.put([]byte(v)...) }

func (s *splitter) run() error {
	s.length = -1
	s.written = map[int64]bool{}
	magic, err := s.be32()
	if err != nil {
		return err
	}
	version, err := s.be32()
	if err != nil {
		return err
	}
	if magic != streamMagic || version != streamVersion {
		return unsupported("magic %#x version %d", magic, version)
	}
	s.put32(magic)
	s.put32(version)
	for {
		kind, err := s.u8()
		if err != nil {
			return err
		}
		switch kind {
		case secConfiguration:
			// vmstate "configuration": be32 length, the machine type.
			n, err := s.be32()
			if err != nil {
				return err
			}
			if n > 256 {
				return unsupported("configuration name of %d bytes", n)
			}
			name, err := s.read(int(n))
			if err != nil {
				return err
			}
			s.put(kind)
			s.put32(n)
			s.put(name...)
			// Subsections carry capabilities to check (x-ignore-shared)
			// or a UUID: banger sets neither.
			if next, err := s.r.Peek(1); err == nil && next[0] == secSubsection {
				return unsupported("configuration has subsections")
			}
		case secStart, secPart, secEnd:
			id, err := s.be32()
			if err != nil {
				return err
			}
			s.put(kind)
			s.put32(id)
			if kind == secStart {
				idstr, err := s.str()
				if err != nil {
					return err
				}
				instance, err := s.be32()
				if err != nil {
					return err
				}
				version, err := s.be32()
				if err != nil {
					return err
				}
				if idstr != "ram" || s.ramID >= 0 {
					return unsupported("iterative section %q", idstr)
				}
				if version != 4 {
					return unsupported("ram section version %d", version)
				}
				s.ramID = int64(id)
				s.putStr(idstr)
				s.put32(instance)
				s.put32(version)
			} else if int64(id) != s.ramID {
				return unsupported("section %d is not ram's", id)
			}
			if err := s.ramSection(); err != nil {
				return err
			}
			if err := s.footer(id); err != nil {
				return err
			}
		case secFull, secEOF:
			// The non-iterative devices and the end, which follow all of
			// RAM: kept as they are.
			s.put(kind)
			n, err := io.Copy(s.w, s.r)
			s.out += n
			if err != nil {
				return fmt.Errorf("migration stream: %w", err)
			}
			return nil
		default:
			return unsupported("section type %#x", kind)
		}
	}
}

func (s *splitter) footer(id uint32) error {
	kind, err := s.u8()
	if err != nil {
		return err
	}
	got, err := s.be32()
	if err != nil {
		return err
	}
	if kind != secFooter || got != id {
		return unsupported("section %d: footer %#x for section %d", id, kind, got)
	}
	s.put(kind)
	s.put32(got)
	return nil
}

// ramSection handles one part of the RAM section, up to its end marker.
func (s *splitter) ramSection() error {
	for {
		v, err := s.be64()
		if err != nil {
			return err
		}
		flags, addr := v&ramFlagMask, int64(v&^ramFlagMask)
		switch {
		case flags == ramFlagEOS:
			s.put64(v)
			return nil
		case flags == ramFlagMemSize:
			if err := s.memSize(v, addr); err != nil {
				return err
			}
		case flags&^ramFlagContinue == ramFlagPage, flags&^ramFlagContinue == ramFlagZero:
			if err := s.page(flags, addr); err != nil {
				return err
			}
		default:
			return unsupported("ram flags %#x", flags)
		}
	}
}

// memSize reads the setup's list of RAM blocks: name and used length of
// each, until their lengths add up to the total.
func (s *splitter) memSize(v uint64, total int64) error {
	s.put64(v)
	var sum int64
	for sum < total {
		name, err := s.str()
		if err != nil {
			return err
		}
		n, err := s.be64()
		if err != nil {
			return err
		}
		s.putStr(name)
		s.put64(n)
		s.blocks[name] = int64(n)
		sum += int64(n)
		if name == s.target {
			s.length = int64(n)
			if err := s.mem.Truncate(s.length); err != nil {
				return err
			}
		}
	}
	if sum != total {
		return unsupported("ram blocks add up to %d, the stream says %d", sum, total)
	}
	return nil
}

func (s *splitter) page(flags uint64, addr int64) error {
	block := s.lastIn
	if flags&ramFlagContinue == 0 {
		var err error
		if block, err = s.str(); err != nil {
			return err
		}
	}
	length, ok := s.blocks[block]
	if !ok {
		return unsupported("page of unknown ram block %q", block)
	}
	if addr+ramPage > length {
		return unsupported("page at %#x beyond ram block %q (%d bytes)", addr, block, length)
	}
	s.lastIn = block
	data := s.buf[:ramPage]
	if flags&^ramFlagContinue == ramFlagZero {
		data = s.buf[:1] // the byte the whole page is filled with
	}
	if _, err := io.ReadFull(s.r, data); err != nil {
		return fmt.Errorf("migration stream: %w", noEOF(err))
	}
	if block == s.target {
		return s.memPage(addr, data)
	}
	head := uint64(addr) | flags&^ramFlagContinue
	if block == s.lastOut {
		s.put64(head | ramFlagContinue)
	} else {
		s.put64(head)
		s.putStr(block)
		s.lastOut = block
	}
	s.put(data...)
	return nil
}

// memPage puts one page of the target block into mem. A zero page is a
// hole unless an earlier copy of the page was written.
func (s *splitter) memPage(addr int64, data []byte) error {
	if len(data) == 1 {
		if data[0] != 0 {
			data = bytes.Repeat(data, ramPage)
		} else {
			if !s.written[addr] {
				return nil
			}
			// Sent again as zero: back to a hole.
			if err := s.flushRun(); err != nil {
				return err
			}
			delete(s.written, addr)
			return unix.Fallocate(int(s.mem.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, addr, ramPage)
		}
	}
	s.written[addr] = true
	return s.writeMem(addr, data)
}

// writeMem adds a page to the pending run, writing the run out first when
// the page does not follow it.
func (s *splitter) writeMem(addr int64, data []byte) error {
	if len(s.pending) > 0 && (addr != s.pendOff+int64(len(s.pending)) || len(s.pending) >= 1<<20) {
		if err := s.flushRun(); err != nil {
			return err
		}
	}
	if len(s.pending) == 0 {
		s.pendOff = addr
	}
	s.pending = append(s.pending, data...)
	return nil
}

func (s *splitter) flushRun() error {
	if len(s.pending) == 0 {
		return nil
	}
	_, err := s.mem.WriteAt(s.pending, s.pendOff)
	s.pending = s.pending[:0]
	return err
}

// newSealableMemfd makes an empty memfd that can be sealed.
func newSealableMemfd(name string) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	return os.NewFile(uintptr(fd), "memfd:"+name), nil
}

// sealMemfd forbids any further change to f's contents and size. A write
// or a shared writable mapping fails from now on; a private mapping stays
// writable, its writes going to the mapper's own copies of the pages.
func sealMemfd(f *os.File) error {
	_, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_SEAL|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_WRITE)
	if err != nil {
		return fmt.Errorf("sealing %s: %w", f.Name(), err)
	}
	return nil
}

// templateIdle is how long a split state stays cached after its last
// restore: long enough for a pool's refills and the clones of one fork,
// short enough that an unused snapshot's memory is not held for long.
var templateIdle = time.Minute

// memTemplate is one state file split by splitRAM: the guest's RAM in a
// sealed memfd, and the rest of the stream.
type memTemplate struct {
	key    stateKey
	ready  chan struct{} // closed when the split is done (or failed)
	err    error
	mem    *os.File
	rest   []byte
	length int64 // bytes of guest RAM
	users  int   // restores using it now
	idle   *time.Timer
}

// stateKey tells a state file's versions apart: a file replaced at the
// same path (a snapshot deleted and taken again) is split again.
type stateKey struct {
	path     string
	dev, ino uint64
	size     int64
	mtime    int64
}

func keyOf(path string, f *os.File) (stateKey, error) {
	fi, err := f.Stat()
	if err != nil {
		return stateKey{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return stateKey{}, errors.New("no inode for the state file")
	}
	return stateKey{path: path, dev: uint64(st.Dev), ino: st.Ino, size: fi.Size(), mtime: fi.ModTime().UnixNano()}, nil
}

// templateCache holds the split states of recent clone restores, so the
// clones of one fork or one pool are restored from one split. The zero
// value is ready to use.
type templateCache struct {
	mu     sync.Mutex
	m      map[string]*memTemplate
	splits int // state files split so far, guarded by mu
}

// acquire returns the split of the state file f (open at path, positioned
// at QEMU's stream), splitting it if no current split is cached. The caller
// must release it once QEMU has its descriptors.
func (c *templateCache) acquire(path string, f *os.File) (*memTemplate, error) {
	key, err := keyOf(path, f)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]*memTemplate{}
	}
	t := c.m[path]
	if t != nil && t.key != key {
		delete(c.m, path) // stale: closed by its last release, or now
		if t.users == 0 {
			t.close()
		}
		t = nil
	}
	if t != nil {
		t.users++
		if t.idle != nil {
			t.idle.Stop()
		}
		c.mu.Unlock()
		<-t.ready
		if t.err != nil {
			c.release(t)
			return nil, t.err
		}
		return t, nil
	}
	t = &memTemplate{key: key, ready: make(chan struct{}), users: 1}
	c.m[path] = t
	c.splits++
	c.mu.Unlock()
	t.err = t.split(f)
	close(t.ready)
	if t.err != nil {
		c.release(t)
		return nil, t.err
	}
	return t, nil
}

// release ends one use of t. The last one leaves it cached for
// templateIdle, or closes it if a newer split replaced it.
func (c *templateCache) release(t *memTemplate) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t.users--
	if t.users > 0 {
		return
	}
	if c.m[t.key.path] != t {
		t.close()
		return
	}
	t.idle = time.AfterFunc(templateIdle, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.users == 0 && c.m[t.key.path] == t {
			delete(c.m, t.key.path)
			t.close()
		}
	})
}

// close frees the memfd. Clones already restored keep their own mappings,
// and the memory they share lives on with them.
func (t *memTemplate) close() {
	if t.mem != nil {
		t.mem.Close()
		t.mem = nil
	}
}

func (t *memTemplate) split(f *os.File) error {
	mem, err := newSealableMemfd("banger-guest-ram")
	if err != nil {
		return err
	}
	var rest bytes.Buffer
	info, err := splitRAM(f, mainRAMBlock, mem, &rest)
	if err == nil {
		err = sealMemfd(mem)
	}
	if err != nil {
		mem.Close()
		return err
	}
	t.mem, t.rest, t.length = mem, rest.Bytes(), info.Length
	return nil
}

// restStream returns the rest of t's stream in a file of its own for one
// restore: QEMU reads it from the descriptor's offset, which restores
// running side by side must not share.
func (t *memTemplate) restStream() (*os.File, error) {
	f, err := newSealableMemfd("banger-state")
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(t.rest); err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// sharedMemory splits (or finds split) the state file f for a clone
// restore of m and returns the split and this restore's rest of the
// stream. f is left positioned at QEMU's stream either way, for a plain
// restore if this fails.
func (d *Driver) sharedMemory(m vmm.Machine, f *os.File) (*memTemplate, *os.File, error) {
	defer f.Seek(stateHeaderSize, io.SeekStart)
	t, err := d.templates.acquire(m.Incoming.File, f)
	if err != nil {
		return nil, nil, err
	}
	if want := int64(m.MemoryMiB) << 20; t.length != want {
		d.templates.release(t)
		return nil, nil, fmt.Errorf("the state's guest RAM is %d bytes, the machine has %d", t.length, want)
	}
	stream, err := t.restStream()
	if err != nil {
		d.templates.release(t)
		return nil, nil, err
	}
	return t, stream, nil
}

// ForgetState frees the cached split of state file path, now or, if a
// restore is using it, when that restore is done. The engine calls it when
// a snapshot is deleted.
func (d *Driver) ForgetState(path string) { d.templates.forget(path) }

func (c *templateCache) forget(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.m[path]
	if t == nil {
		return
	}
	delete(c.m, path) // its last release closes it
	if t.users == 0 {
		if t.idle != nil {
			t.idle.Stop()
		}
		t.close()
	}
}
