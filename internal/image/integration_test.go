package image

// Integration tests: they build a real minimal image from Debian packages.
// They run only as root and only when the Debian mirror was reachable when
// TestMain prefetched the packages into /var/cache/banger/debs; otherwise
// they skip and say why.

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

func TestIntegrationBuildMinimal(t *testing.T) {
	res := minimalImage(t)
	s := &sharedImage
	t.Logf("minimal image built in %v (packages cached)", s.duration.Round(1e6))
	for i, step := range s.steps {
		t.Logf("  step %-20q started at %v", step, s.stepTimes[i].Round(1e6))
	}
	for _, want := range []string{"resolving packages", "downloading packages", "unpacking packages",
		"building rootfs", "building initramfs", "extracting vmlinux", "checking image"} {
		if !slices.Contains(s.steps, want) {
			t.Errorf("progress never reported step %q (got %q)", want, s.steps)
		}
	}
	dir := filepath.Join(s.dir, "minimal")
	for _, f := range []string{res.Kernel, res.VMLinux, res.Initrd, res.Rootfs} {
		if filepath.Dir(f) != dir {
			t.Errorf("image file %q is outside the output dir %s", f, dir)
		}
		st, err := os.Stat(f)
		if err != nil {
			t.Fatalf("image file: %v", err)
		}
		t.Logf("%-12s %6.1f MiB (%s)", filepath.Base(f), float64(st.Size())/(1<<20), f)
	}
	if _, err := os.Stat(filepath.Join(dir, workDirName)); !os.IsNotExist(err) {
		t.Errorf("scratch directory left behind: %v", err)
	}
	if !strings.HasSuffix(res.KernelVersion, "-cloud-amd64") {
		t.Errorf("KernelVersion = %q, want a Debian cloud kernel", res.KernelVersion)
	}
	for _, bad := range []string{"console=", "reboot=", "panic="} {
		if strings.Contains(res.BootArgs, bad) {
			t.Errorf("BootArgs %q contains %s, which belongs to the VMM driver", res.BootArgs, bad)
		}
	}
	if !res.FirecrackerBootable || res.VMLinux == "" {
		t.Errorf("vmlinux not extracted: FirecrackerBootable=%v notes %q", res.FirecrackerBootable, res.Notes)
	}
	if bt := Inspect(res.Kernel, res.VMLinux, res.Initrd, res.Rootfs); !bt.QEMU || !bt.Firecracker {
		t.Errorf("Inspect(built image) = %+v", bt)
	}

	ctx := context.Background()
	r := system.ExecRunner{}
	if out, err := r.Run(ctx, "e2fsck", "-fn", res.Rootfs); err != nil {
		t.Errorf("e2fsck -fn rootfs: %v\n%s", err, out)
	}
	debugfsLs := func(dir string) string {
		t.Helper()
		out, err := r.Run(ctx, "debugfs", "-R", "ls -l "+dir, res.Rootfs)
		if err != nil {
			t.Fatalf("debugfs ls %s: %v", dir, err)
		}
		return string(out)
	}
	if ls := debugfsLs("/usr/sbin"); !strings.Contains(ls, "dropbear") {
		t.Errorf("rootfs /usr/sbin has no dropbear:\n%s", ls)
	}
	if ls := debugfsLs("/usr/lib"); !strings.Contains(ls, "sftp-server") {
		t.Errorf("rootfs /usr/lib has no sftp-server link:\n%s", ls)
	}
	if ls := debugfsLs("/sbin"); !strings.Contains(ls, "init") {
		t.Errorf("rootfs /sbin has no init:\n%s", ls)
	}
	// No host key baked in: each VM makes its own on first boot.
	if ls := debugfsLs("/etc/dropbear"); strings.Contains(ls, "host_key") {
		t.Errorf("rootfs has a baked-in host key:\n%s", ls)
	}
	// /root/.ssh exists, mode 700, and has no authorized_keys (written per VM).
	stat, err := r.Run(ctx, "debugfs", "-R", "stat /root/.ssh", res.Rootfs)
	if err != nil || !strings.Contains(string(stat), "Mode:  0700") || !strings.Contains(string(stat), "User:     0") {
		t.Errorf("rootfs /root/.ssh is not a root-owned 0700 directory: %v\n%s", err, stat)
	}
	if ls := debugfsLs("/root/.ssh"); strings.Contains(ls, "authorized_keys") {
		t.Errorf("rootfs has an authorized_keys baked in:\n%s", ls)
	}
	rcs, err := r.Run(ctx, "debugfs", "-R", "cat /etc/init.d/rcS", res.Rootfs)
	if err != nil || !strings.Contains(string(rcs), "rcS done") {
		t.Errorf("rootfs rcS lacks the readiness marker: %v\n%s", err, rcs)
	}

	// The initramfs holds init, busybox, the virtio modules and /dev/console.
	entries := readCPIOFile(t, res.Initrd)
	for _, name := range []string{"init", "bin/busybox", "bin/switch_root", "lib/modules/virtio_mmio.ko",
		"lib/modules/virtio_blk.ko", "lib/modules/order", "dev/console"} {
		if _, ok := entries[name]; !ok {
			t.Errorf("initramfs lacks %s", name)
		}
	}
	if e := entries["init"]; e.mode&0o111 == 0 {
		t.Errorf("initramfs init is not executable: mode %o", e.mode)
	}
}

// BenchmarkBuildMinimal measures a full minimal build with warm package cache.
func BenchmarkBuildMinimal(b *testing.B) {
	requireRoot(b)
	if s := os.Getenv(prefetchEnv); s != "ok" {
		b.Skipf("needs the Debian mirror: %s", s)
	}
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(b.TempDir(), "img")
		if _, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, CacheDir: testCacheDir, Runner: system.ExecRunner{}}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIntegrationBuildDebian runs debootstrap, which needs the Debian mirror
// during the build: it cannot run inside the private network namespace and
// takes minutes, so it is opt-in: BANGER_TEST_DEBIAN=1 BANGER_TEST_NETNS=1
// (the latter keeps the test binary in the host's namespace).
func TestIntegrationBuildDebian(t *testing.T) {
	requireRoot(t)
	if os.Getenv("BANGER_TEST_DEBIAN") != "1" {
		t.Skip("opt-in: set BANGER_TEST_DEBIAN=1 (needs network and debootstrap; minutes)")
	}
	if system.InPrivateNetNS() {
		t.Skip("debootstrap needs the mirror: run with BANGER_TEST_NETNS=1 to stay in the host namespace")
	}
	dir := filepath.Join(t.TempDir(), "debian")
	if os.Getenv("BANGER_TEST_KEEP_IMAGE") != "" {
		d, err := os.MkdirTemp("", "banger-debian-image-")
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(d, "debian")
		t.Logf("image kept in %s", dir)
	}
	start := time.Now()
	res, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(),
		Dir: dir, Base: BaseDebian, CacheDir: testCacheDir, Runner: system.ExecRunner{},
		Packages: []string{"less"},
		Progress: func(s string) { t.Logf("%6.1fs %s", time.Since(start).Seconds(), s) },
	})
	if err != nil {
		t.Fatalf("Build debian: %v", err)
	}
	t.Logf("debian image built in %v; notes %q", time.Since(start).Round(time.Millisecond), res.Notes)
	for _, f := range []string{res.Kernel, res.VMLinux, res.Initrd, res.Rootfs} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%-12s %6.1f MiB", filepath.Base(f), float64(st.Size())/(1<<20))
	}
	ctx := context.Background()
	r := system.ExecRunner{}
	if out, err := r.Run(ctx, "e2fsck", "-fn", res.Rootfs); err != nil {
		t.Errorf("e2fsck -fn rootfs: %v\n%s", err, out)
	}
	ls := func(dir string) string {
		out, err := r.Run(ctx, "debugfs", "-R", "ls -l "+dir, res.Rootfs)
		if err != nil {
			t.Fatalf("debugfs ls %s: %v", dir, err)
		}
		return string(out)
	}
	if l := ls("/usr/sbin"); !strings.Contains(l, "sshd") {
		t.Errorf("no sshd in /usr/sbin:\n%s", l)
	}
	if l := ls("/usr/bin"); !strings.Contains(l, "less") {
		t.Errorf("extra package less not installed:\n%s", l)
	}
	if l := ls("/etc/ssh"); strings.Contains(l, "ssh_host_") {
		t.Errorf("SSH host keys baked into the image:\n%s", l)
	}
	if l := ls("/etc/systemd/system/multi-user.target.wants"); !strings.Contains(l, "banger-setup.service") || !strings.Contains(l, "banger-agent.service") {
		t.Errorf("banger-setup.service and banger-agent.service not both enabled:\n%s", l)
	}
	if l := ls("/usr/lib/banger"); !strings.Contains(l, "agent") {
		t.Errorf("no guest agent in /usr/lib/banger:\n%s", l)
	}
	if l := ls("/etc"); strings.Contains(l, "resolv.conf") {
		t.Errorf("host resolv.conf left in the image:\n%s", l)
	}
}
