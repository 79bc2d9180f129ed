package image

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

func TestParseMountsUnder(t *testing.T) {
	mountinfo := []byte(`22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
60 22 0:5 / /img/.build/rootfs/proc rw - proc proc rw
61 22 0:6 / /img/.build/rootfs/sys rw - sysfs sysfs rw
62 22 0:7 / /img/.build/rootfs/dev rw - devtmpfs udev rw
63 62 0:8 / /img/.build/rootfs/dev/pts rw - devpts devpts rw
64 22 0:9 / /img/.build/rootfs/with\040space rw - tmpfs tmpfs rw
65 22 0:10 / /img/.buildx rw - tmpfs tmpfs rw
66 22 0:11 / /img/.build rw - tmpfs tmpfs rw
`)
	got := parseMountsUnder(mountinfo, "/img/.build/")
	want := []string{"/img/.build/rootfs/proc", "/img/.build/rootfs/sys", "/img/.build/rootfs/dev",
		"/img/.build/rootfs/dev/pts", "/img/.build/rootfs/with space"}
	if len(got) != len(want) {
		t.Fatalf("mounts %q, want %q", got, want)
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("missing %s in %q", w, got)
		}
	}
	// A mount below another must be unmounted first.
	if slices.Index(got, "/img/.build/rootfs/dev/pts") > slices.Index(got, "/img/.build/rootfs/dev") {
		t.Errorf("dev/pts after dev in %q", got)
	}
}

// A bind mount left below a build tree (as a killed debootstrap leaves /dev)
// is unmounted before removal, so the bound directory's files survive.
func TestRemoveTreeUnmountsFirst(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	r := system.ExecRunner{}
	precious := t.TempDir()
	keep := filepath.Join(precious, "keep")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(t.TempDir(), "build")
	mp := filepath.Join(tree, "rootfs", "dev")
	if err := os.MkdirAll(mp, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Run(ctx, "mount", "--bind", precious, mp); err != nil {
		t.Skipf("cannot bind mount here: %v", err)
	}
	t.Cleanup(func() { r.Run(ctx, "umount", "-l", mp) })
	if err := removeTree(ctx, r, tree); err != nil {
		t.Fatalf("removeTree: %v", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("file in the bind-mounted directory was deleted: %v", err)
	}
	if _, err := os.Stat(tree); !os.IsNotExist(err) {
		t.Errorf("tree not removed: %v", err)
	}
}
