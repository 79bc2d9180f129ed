package storage

import (
	"bufio"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// requireRoot skips a test that changes host kernel state (loop devices,
// mounts, dm) unless it runs as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: sets up loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop device support: %v", err)
	}
}

// mountedAt reports whether dir is a mount point in this mount namespace.
func mountedAt(t *testing.T, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Field 5 is the mount point (octal-escaped; temp dirs need none).
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	return false
}

// loopsBacking lists loop devices whose backing file is p.
func loopsBacking(t *testing.T, m *Manager, p string) []string {
	t.Helper()
	devs, err := m.ListLoopDevices(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for dev, back := range devs {
		if strings.TrimSuffix(back, " (deleted)") == p {
			out = append(out, dev)
		}
	}
	return out
}

func TestRealLoopDevice(t *testing.T) {
	requireRoot(t)
	m := realManager(MethodCopy)
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "disk.img")
	if err := createSparse(file, 8<<20); err != nil {
		t.Fatal(err)
	}
	dev, err := m.attachLoop(ctx, file, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.detachLoop(context.Background(), dev) })
	if got := loopsBacking(t, m, file); len(got) != 1 || got[0] != dev {
		t.Errorf("loops backing %s: %v, want [%s]", file, got, dev)
	}
	ro, err := os.ReadFile("/sys/block/" + filepath.Base(dev) + "/ro")
	if err != nil || strings.TrimSpace(string(ro)) != "1" {
		t.Errorf("%s read-only flag: %q %v", dev, ro, err)
	}
	if err := m.detachLoop(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if got := loopsBacking(t, m, file); len(got) != 0 {
		t.Errorf("still attached: %v", got)
	}
	// Detaching again is "already gone", which is success.
	if err := m.detachLoop(ctx, dev); err != nil {
		t.Errorf("second detach: %v", err)
	}
}

func TestRealWithImageMounted(t *testing.T) {
	requireRoot(t)
	requireTools(t, "mkfs.ext4", "debugfs")
	m := realManager(MethodCopy)
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "root.ext4")
	if err := m.CreateWorkDisk(ctx, img, 64<<20, ""); err != nil {
		t.Fatal(err)
	}
	if err := m.InjectFiles(ctx, img, []File{{Path: "/etc/os-release", Mode: 0o644, Data: []byte("ID=real\n")}}); err != nil {
		t.Fatal(err)
	}
	var mnt string
	err := m.WithImageMounted(ctx, img, func(dir string) error {
		mnt = dir
		if !mountedAt(t, dir) {
			t.Errorf("%s not in mountinfo", dir)
		}
		if got := loopsBacking(t, m, img); len(got) != 1 {
			t.Errorf("loops during mount: %v", got)
		}
		b, err := os.ReadFile(filepath.Join(dir, "etc", "os-release"))
		if err != nil || string(b) != "ID=real\n" {
			t.Errorf("os-release: %q %v", b, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err == nil {
			t.Error("read-only mount is writable")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if mnt == "" || mountedAt(t, mnt) {
		t.Errorf("mount %q left behind", mnt)
	}
	if _, err := os.Stat(mnt); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("mount dir left: %v", err)
	}
	if got := loopsBacking(t, m, img); len(got) != 0 {
		t.Errorf("loop devices left: %v", got)
	}

	// fn's error comes back, and the cleanup still happens.
	boom := errors.New("boom")
	if err := m.WithImageMounted(ctx, img, func(dir string) error { mnt = dir; return boom }); !errors.Is(err, boom) {
		t.Errorf("WithImageMounted = %v, want boom", err)
	}
	if mountedAt(t, mnt) || len(loopsBacking(t, m, img)) != 0 {
		t.Error("left mounted after fn failed")
	}
	// A non-ext4 file fails to mount and leaves nothing.
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, make([]byte, 1<<20), 0o644)
	if err := m.WithImageMounted(ctx, junk, func(string) error { return nil }); err == nil {
		t.Error("mounting junk succeeded")
	}
	if got := loopsBacking(t, m, junk); len(got) != 0 {
		t.Errorf("loop devices left after failed mount: %v", got)
	}
}

// TestRealDM runs the dm method against the kernel where it has
// device-mapper; this host's CI has none, so the fake covers it there.
func TestRealDM(t *testing.T) {
	requireRoot(t)
	m := realManager(MethodDM)
	m.LockDir = t.TempDir()
	ctx := context.Background()
	if DetectMethod(ctx, m.Runner) != MethodDM {
		t.Skip("host has no working device-mapper")
	}
	requireTools(t, "mkfs.ext4", "debugfs")
	base := makeBaseImage(t, m)
	vmDir := t.TempDir()
	cow, err := m.CreateRootDisk(ctx, "bangertest", base, vmDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	dev, h, err := m.ActivateRootDisk(ctx, "bangertest", base, cow)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.DeactivateRootDisk(context.Background(), h) })
	if err := m.InjectFiles(ctx, dev, []File{{Path: "/etc/hostname", Mode: 0o644, Data: []byte("dm\n")}}); err != nil {
		t.Fatal(err)
	}
	if b, err := m.ReadFileFromImage(ctx, base, "/etc/hostname"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("write reached the base: %q %v", b, err)
	}
	if err := m.DeactivateRootDisk(ctx, h); err != nil {
		t.Fatal(err)
	}
	if names, _ := m.ListDMDevices(ctx); len(names) != 0 {
		for _, n := range names {
			if n == h.DMName {
				t.Errorf("%s left", n)
			}
		}
	}
	if got := loopsBacking(t, m, base); len(got) != 0 {
		t.Errorf("loops left: %v", got)
	}
}
