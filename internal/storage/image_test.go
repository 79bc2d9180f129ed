package storage

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/system/fakehost"
)

// eachRunner runs f with a copy-method manager on the real host (when
// e2fsprogs is installed) and on the fake host, so the fake's debugfs and
// mkfs are held to what the real ones do.
func eachRunner(t *testing.T, f func(t *testing.T, m *Manager)) {
	t.Run("real", func(t *testing.T) {
		requireTools(t, "mkfs.ext4", "debugfs")
		f(t, realManager(MethodCopy))
	})
	t.Run("fake", func(t *testing.T) {
		f(t, &Manager{Runner: fakehost.New(), Method: MethodCopy})
	})
}

func TestCreateWorkDisk(t *testing.T) {
	eachRunner(t, func(t *testing.T, m *Manager) {
		ctx := context.Background()
		seed := t.TempDir()
		os.MkdirAll(filepath.Join(seed, "sessions"), 0o755)
		os.WriteFile(filepath.Join(seed, "sessions", "README"), []byte("guest sessions log here\n"), 0o644)
		p := filepath.Join(t.TempDir(), "work.ext4")
		if err := m.CreateWorkDisk(ctx, p, 128<<20, seed); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if err != nil || st.Size() != 128<<20 {
			t.Fatalf("stat: %v %v", st, err)
		}
		if a := allocated(t, p); a > 16<<20 {
			t.Errorf("work disk allocates %d bytes", a)
		}
		data, err := m.ReadFileFromImage(ctx, p, "/sessions/README")
		if err != nil || string(data) != "guest sessions log here\n" {
			t.Errorf("seeded file: %q %v", data, err)
		}
		if _, ok := m.Runner.(system.ExecRunner); ok {
			out, err := m.Runner.Run(ctx, "debugfs", "-R", "stats", p)
			if err != nil || !strings.Contains(string(out), "Filesystem magic number:  0xEF53") ||
				!strings.Contains(string(out), "Filesystem volume name:   work") {
				t.Errorf("debugfs stats: %v\n%s", err, out)
			}
			if out, err := m.Runner.Run(ctx, "e2fsck", "-fn", p); err != nil {
				t.Errorf("e2fsck: %v\n%s", err, out)
			}
		}
		// Never replaces a disk that is there.
		if err := m.CreateWorkDisk(ctx, p, 128<<20, ""); !errors.Is(err, fs.ErrExist) {
			t.Errorf("second create = %v, want ErrExist", err)
		}
		if data, _ := m.ReadFileFromImage(ctx, p, "/sessions/README"); len(data) == 0 {
			t.Error("existing disk was overwritten")
		}
	})
}

func TestCreateWorkDiskFailureRemovesFile(t *testing.T) {
	h := fakehost.New()
	m := &Manager{Runner: h, Method: MethodCopy}
	p := filepath.Join(t.TempDir(), "work.ext4")
	h.FailNext("mkfs.ext4", "mkfs.ext4: No space left on device while writing out and closing file system")
	if err := m.CreateWorkDisk(context.Background(), p, 0, ""); err == nil {
		t.Fatal("CreateWorkDisk succeeded")
	}
	if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("file left behind: %v", err)
	}
	if err := m.CreateWorkDisk(context.Background(), p, 0, "/nonexistent-seed"); err == nil {
		t.Error("missing seed dir accepted")
	}
	// Default size is 4 GiB, sparse.
	if err := m.CreateWorkDisk(context.Background(), p, 0, ""); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Size() != DefaultWorkDiskSize {
		t.Errorf("default size %d", st.Size())
	}
}

func TestInjectFiles(t *testing.T) {
	eachRunner(t, func(t *testing.T, m *Manager) {
		ctx := context.Background()
		img := filepath.Join(t.TempDir(), "root.ext4")
		if err := m.CreateWorkDisk(ctx, img, 64<<20, ""); err != nil {
			t.Fatal(err)
		}
		files := []File{
			{Path: "/etc/hostname", Mode: 0o644, Data: []byte("web\n")},
			{Path: "/root/.ssh/authorized_keys", Mode: 0o600, Data: []byte("ssh-ed25519 AAAA banger\n")},
			{Path: "/home/dev/.config/banger/key", Mode: 0o640 | os.ModeSetgid, Data: []byte("k"), UID: 1000, GID: 1001},
			{Path: "/empty", Mode: 0o600},
		}
		if err := m.InjectFiles(ctx, img, files); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			got, err := m.ReadFileFromImage(ctx, img, f.Path)
			if err != nil || string(got) != string(f.Data) {
				t.Errorf("%s: %q %v", f.Path, got, err)
			}
		}
		// Replace one file; the others stay.
		if err := m.InjectFiles(ctx, img, []File{{Path: "/etc/hostname", Mode: 0o600, Data: []byte("db\n"), UID: 7}}); err != nil {
			t.Fatal(err)
		}
		if got, err := m.ReadFileFromImage(ctx, img, "/etc/hostname"); err != nil || string(got) != "db\n" {
			t.Errorf("replaced hostname: %q %v", got, err)
		}
		if got, _ := m.ReadFileFromImage(ctx, img, "/root/.ssh/authorized_keys"); string(got) != "ssh-ed25519 AAAA banger\n" {
			t.Errorf("authorized_keys after second inject: %q", got)
		}
		// Mode and owner, read back independently of InjectFiles' own check.
		out, err := m.Runner.Run(ctx, "debugfs", "-R", "stat /home/dev/.config/banger/key", img)
		st, ok := parseStat(string(out))
		if err != nil || !ok || st != (inodeStat{Type: "regular", Mode: 0o2640, UID: 1000, GID: 1001, Size: 1}) {
			t.Errorf("stat key: %+v %v %v\n%s", st, ok, err, out)
		}
		if _, ok := m.Runner.(system.ExecRunner); ok {
			if out, err := m.Runner.Run(ctx, "e2fsck", "-fn", img); err != nil {
				t.Errorf("e2fsck after inject: %v\n%s", err, out)
			}
		}

		// Refusals.
		if err := m.InjectFiles(ctx, img, []File{{Path: "/etc/hostname/x", Mode: 0o644}}); err == nil {
			t.Error("writing under a regular file succeeded")
		}
		if err := m.InjectFiles(ctx, img, []File{{Path: "/root/.ssh", Mode: 0o644}}); err == nil {
			t.Error("replacing a directory succeeded")
		}
		for _, bad := range []string{"etc/x", "/a/../b", "/a b", "/"} {
			if err := m.InjectFiles(ctx, img, []File{{Path: bad}}); err == nil {
				t.Errorf("path %q accepted", bad)
			}
		}
		if err := m.InjectFiles(ctx, img, []File{{Path: "/x", Mode: os.ModeDir | 0o755}}); err == nil {
			t.Error("directory mode accepted")
		}
	})
}

func TestReadFileFromImage(t *testing.T) {
	eachRunner(t, func(t *testing.T, m *Manager) {
		ctx := context.Background()
		dir := t.TempDir()
		img := filepath.Join(dir, "root.ext4")
		if err := m.CreateWorkDisk(ctx, img, 64<<20, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := m.ReadFileFromImage(ctx, img, "/etc/hostname"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("absent file: %v", err)
		}
		if _, err := m.ReadFileFromImage(ctx, img, "/lost+found"); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("directory: %v", err)
		}
		junk := filepath.Join(dir, "junk.img")
		os.WriteFile(junk, []byte(strings.Repeat("x", 8192)), 0o644)
		if _, err := m.ReadFileFromImage(ctx, junk, "/etc/hostname"); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("non-ext4 image: %v", err)
		}
		if err := m.InjectFiles(ctx, junk, []File{{Path: "/x", Data: []byte("x")}}); err == nil {
			t.Error("inject into non-ext4 image succeeded")
		}
		if _, err := m.ReadFileFromImage(ctx, filepath.Join(dir, "missing.img"), "/x"); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("missing image: %v", err)
		}
	})
}

func TestWithImageMountedFake(t *testing.T) {
	h := fakehost.New()
	m := &Manager{Runner: h, Method: MethodCopy}
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := m.CreateWorkDisk(ctx, img, 64<<20, ""); err != nil {
		t.Fatal(err)
	}
	if err := m.InjectFiles(ctx, img, []File{{Path: "/etc/os-release", Mode: 0o644, Data: []byte("ID=x\n")}}); err != nil {
		t.Fatal(err)
	}
	var mnt string
	err := m.WithImageMounted(ctx, img, func(dir string) error {
		mnt = dir
		b, err := os.ReadFile(filepath.Join(dir, "etc", "os-release"))
		if err != nil || string(b) != "ID=x\n" {
			t.Errorf("os-release: %q %v", b, err)
		}
		if !strings.Contains(h.State(), "mount "+dir) {
			t.Errorf("not mounted:\n%s", h.State())
		}
		return errors.New("fn failed")
	})
	if err == nil || err.Error() != "fn failed" {
		t.Errorf("WithImageMounted = %v, want fn's error", err)
	}
	if _, err := os.Stat(mnt); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mount dir left: %v", err)
	}
	if s := h.State(); strings.Contains(s, "mount ") || strings.Contains(s, "loop ") {
		t.Errorf("state after:\n%s", s)
	}
}
