package storage

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

// requireTools skips the test when an e2fsprogs tool it runs is missing.
func requireTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH: %v", tool, err)
		}
	}
}

// allocated is how many bytes of p's blocks are on disk.
func allocated(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func realManager(method Method) *Manager {
	return &Manager{Runner: system.ExecRunner{}, Method: method}
}

// makeBaseImage builds a sparse 64 MiB ext4 image holding /etc/os-release.
func makeBaseImage(t testing.TB, m *Manager) string {
	t.Helper()
	seed := t.TempDir()
	os.MkdirAll(filepath.Join(seed, "etc"), 0o755)
	os.WriteFile(filepath.Join(seed, "etc", "os-release"), []byte("ID=banger-test\n"), 0o644)
	base := filepath.Join(t.TempDir(), "rootfs.ext4")
	if err := m.CreateWorkDisk(context.Background(), base, 64<<20, seed); err != nil {
		t.Fatal(err)
	}
	return base
}

// fsSize reads an ext4 filesystem's size in bytes with debugfs stats.
func fsSize(t *testing.T, image string) int64 {
	t.Helper()
	out, err := system.ExecRunner{}.Run(context.Background(), "debugfs", "-R", "stats", image)
	if err != nil {
		t.Fatal(err)
	}
	bc := regexp.MustCompile(`(?m)^Block count:\s+(\d+)`).FindSubmatch(out)
	bs := regexp.MustCompile(`(?m)^Block size:\s+(\d+)`).FindSubmatch(out)
	if bc == nil || bs == nil {
		t.Fatalf("debugfs stats output:\n%s", out)
	}
	c, _ := strconv.ParseInt(string(bc[1]), 10, 64)
	s, _ := strconv.ParseInt(string(bs[1]), 10, 64)
	return c * s
}

func TestCopyRootDiskSameSize(t *testing.T) {
	requireTools(t, "mkfs.ext4", "debugfs")
	m := realManager(MethodCopy)
	base := makeBaseImage(t, m)
	vmDir := t.TempDir()
	p, err := m.CreateRootDisk(context.Background(), "vm1", base, vmDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p != filepath.Join(vmDir, "root.img") {
		t.Errorf("path %s", p)
	}
	want, _ := os.ReadFile(base)
	got, _ := os.ReadFile(p)
	if !bytes.Equal(got, want) {
		t.Error("copy differs from base")
	}
	// Sparse: no more blocks than the base uses (the base is 64 MiB
	// with a few MiB of metadata).
	if a, b := allocated(t, p), allocated(t, base); a > b || a > 16<<20 {
		t.Errorf("copy allocates %d bytes, base %d", a, b)
	}
	if _, err := m.CreateRootDisk(context.Background(), "vm1", base, vmDir, 0); !errors.Is(err, os.ErrExist) {
		t.Errorf("second create = %v, want ErrExist", err)
	}
}

func TestCopyRootDiskGrown(t *testing.T) {
	requireTools(t, "mkfs.ext4", "debugfs", "e2fsck", "resize2fs")
	m := realManager(MethodCopy)
	base := makeBaseImage(t, m)
	vmDir := t.TempDir()
	const size = 256 << 20
	p, err := m.CreateRootDisk(context.Background(), "vm1", base, vmDir, size)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Size() != size {
		t.Fatalf("stat %s: %v %v", p, st, err)
	}
	if a := allocated(t, p); a > 32<<20 {
		t.Errorf("grown copy allocates %d bytes of %d", a, size)
	}
	if got := fsSize(t, p); got != size {
		t.Errorf("filesystem is %d bytes, want %d", got, size)
	}
	if out, err := m.Runner.Run(context.Background(), "e2fsck", "-fn", p); err != nil {
		t.Errorf("e2fsck -fn: %v\n%s", err, out)
	}
	data, err := m.ReadFileFromImage(context.Background(), p, "/etc/os-release")
	if err != nil || string(data) != "ID=banger-test\n" {
		t.Errorf("os-release in copy: %q %v", data, err)
	}
	if _, err := os.Stat(p + ".partial"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partial file left: %v", err)
	}
}

// A base whose superblock says it was mounted after its last check makes
// resize2fs ask for e2fsck first: the grow checks, then resizes.
func TestCopyRootDiskGrownNeedsCheck(t *testing.T) {
	requireTools(t, "mkfs.ext4", "debugfs", "e2fsck", "resize2fs")
	m := realManager(MethodCopy)
	base := makeBaseImage(t, m)
	if _, err := m.Runner.Run(context.Background(), "debugfs", "-w", "-R", "ssv mtime 2000000000", base); err != nil {
		t.Fatal(err)
	}
	counting := &countingRunner{Runner: m.Runner}
	m.Runner = counting
	p, err := m.CreateRootDisk(context.Background(), "vm1", base, t.TempDir(), 128<<20)
	if err != nil {
		t.Fatal(err)
	}
	if counting.calls["e2fsck"] != 1 || counting.calls["resize2fs"] != 2 {
		t.Errorf("calls %v, want resize2fs refused, e2fsck, resize2fs", counting.calls)
	}
	if got := fsSize(t, p); got != 128<<20 {
		t.Errorf("filesystem is %d bytes", got)
	}
}

type countingRunner struct {
	Runner
	calls map[string]int
}

func (c *countingRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[name]++
	return c.Runner.Run(ctx, name, args...)
}

func TestCopyRootDiskFailureRemovesFile(t *testing.T) {
	requireTools(t, "e2fsck")
	m := realManager(MethodCopy)
	dir := t.TempDir()
	base := filepath.Join(dir, "notext4.img")
	os.WriteFile(base, bytes.Repeat([]byte("banger"), 100000), 0o644)
	vmDir := t.TempDir()
	if _, err := m.CreateRootDisk(context.Background(), "vm1", base, vmDir, 8<<20); err == nil {
		t.Fatal("growing a non-ext4 image succeeded")
	}
	if ents, _ := os.ReadDir(vmDir); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
	if _, err := m.CreateRootDisk(context.Background(), "vm1", base, vmDir, 1000); err == nil {
		t.Error("size below the base accepted")
	}
	if _, err := m.CreateRootDisk(context.Background(), "vm1", filepath.Join(dir, "nope"), vmDir, 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing base: %v", err)
	}
}

func TestSparseCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, _ := os.Create(src)
	f.Truncate(64 << 20)
	data := bytes.Repeat([]byte{0xab}, 1<<20)
	f.WriteAt(data, 10<<20)
	f.WriteAt(make([]byte, 4<<20), 20<<20) // written zeros: allocated in src
	f.WriteAt([]byte("tail"), 64<<20-4)
	f.Close()

	in, _ := os.Open(src)
	defer in.Close()
	dst := filepath.Join(dir, "dst")
	out, _ := os.Create(dst)
	if err := sparseCopy(context.Background(), out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("copy differs")
	}
	if got := allocated(t, dst); got > 2<<20 {
		t.Errorf("copy allocates %d bytes, want about 1 MiB", got)
	}
}

// BenchmarkCreateRootDiskCopy measures the copy method's per-VM cost for a
// 64 MiB image grown to 256 MiB (copy, e2fsck, resize2fs).
func BenchmarkCreateRootDiskCopy(b *testing.B) {
	requireTools(b, "mkfs.ext4", "e2fsck", "resize2fs")
	m := realManager(MethodCopy)
	base := makeBaseImage(b, m)
	dir := b.TempDir()
	for i := 0; b.Loop(); i++ {
		vmDir := filepath.Join(dir, strconv.Itoa(i))
		os.Mkdir(vmDir, 0o755)
		if _, err := m.CreateRootDisk(context.Background(), "vm", base, vmDir, 256<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInjectFiles measures putting an SSH key and a hostname into a
// root disk, done before each first boot.
func BenchmarkInjectFiles(b *testing.B) {
	requireTools(b, "mkfs.ext4", "debugfs")
	m := realManager(MethodCopy)
	img := makeBaseImage(b, m)
	files := []File{
		{Path: "/etc/hostname", Mode: 0o644, Data: []byte("web\n")},
		{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: []byte("ssh-ed25519 AAAA banger\n")},
	}
	for b.Loop() {
		if err := m.InjectFiles(context.Background(), img, files); err != nil {
			b.Fatal(err)
		}
	}
}
