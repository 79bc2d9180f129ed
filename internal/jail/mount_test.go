package jail

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/mnt/a\040b`); got != "/mnt/a b" {
		t.Fatalf("unescapeMount = %q", got)
	}
}

// TestCheckMountRefusesNosuidNoexec mounts a tmpfs nosuid,noexec,nodev on
// a temporary directory (unmounted at the end) and checks that a jail dir
// below it, existing or not, is refused naming the mount and the flags.
func TestCheckMountRefusesNosuidNoexec(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC|unix.MS_NODEV, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	jailDir := filepath.Join(dir, "run", "jail")
	err := CheckMount(jailDir, NoSuid|NoExec)
	if err == nil {
		t.Fatal("a jail dir on a nosuid,noexec mount was accepted")
	}
	for _, want := range []string{"jail dir " + jailDir, "on mount " + dir, "mounted nosuid,noexec", "mount -o remount,suid,exec " + dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "nodev") {
		t.Errorf("nodev reported though not asked: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); err == nil {
		t.Error("CheckMount made something")
	}
	if err := CheckMount(dir, NoDev); err == nil || !strings.Contains(err.Error(), "nodev") {
		t.Errorf("nodev mount for device nodes = %v", err)
	}
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := CheckMount(jailDir, NoSuid|NoExec); err != nil && strings.Contains(err.Error(), dir) {
		t.Fatalf("after unmounting: %v", err)
	}
}
