package image

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/system"
)

// fakeHost simulates the host tools Build uses: apt (a small archive of
// packages), dpkg -x, busybox --list-full and mkfs.ext4, whose tree it
// records. Any other command fails the test.
type fakeHost struct {
	mu        sync.Mutex // Build runs the kernel's dpkg -x concurrently
	t         *testing.T
	archive   map[string]fakePkg
	listsOK   bool   // apt knows packages (false until apt-get update)
	failOn    string // a command ("dpkg", "apt-get download", ...) that fails
	downloads []string
	commands  []string
	rootfs    map[string]fakeFile // what mkfs.ext4 -d was given

	// depends holds each package's apt-cache depends lines
	// ("  Depends: x", " |Depends: y", "    provider"); none when absent.
	depends map[string][]string
}

type fakePkg struct {
	version string
	files   map[string]string // path -> content
}

type fakeFile struct {
	mode fs.FileMode
	link string
}

const fakeKernelVersion = "9.9.9-1-cloud-amd64"

func newFakeHost(t *testing.T) *fakeHost {
	elf := fakeELF(70000)
	mods := "lib/modules/" + fakeKernelVersion + "/kernel/"
	h := &fakeHost{t: t, listsOK: true, archive: map[string]fakePkg{
		"linux-image-" + fakeKernelVersion: {"9.9.9-1", map[string]string{
			"boot/vmlinuz-" + fakeKernelVersion:      string(fakeBzImage(lz4LegacyLiteral(elf), len(elf))),
			mods + "drivers/virtio/virtio_ring.ko":   "ko",
			mods + "drivers/virtio/virtio.ko":        "ko",
			mods + "drivers/virtio/virtio_mmio.ko":   "ko",
			mods + "drivers/block/virtio_blk.ko":     "ko",
			mods + "drivers/net/virtio_net.ko":       "ko",
			mods + "drivers/char/virtio_console.ko":  "ko",
			mods + "drivers/acpi/button.ko":          "ko",
			mods + "drivers/input/evdev.ko":          "ko",
			mods + "drivers/net/ethernet/unused.ko":  "ko",
			"usr/share/doc/linux-image/changelog.gz": "doc",
		}},
		"busybox-static":      {"1:1.35.0-4", map[string]string{"bin/busybox": "busybox binary"}},
		"dropbear-bin":        {"2022.83-1", map[string]string{"usr/sbin/dropbear": "dropbear", "usr/bin/dropbearkey": "k", "usr/share/doc/dropbear-bin/copyright": "c"}},
		"libc6":               {"2.36-9", map[string]string{"lib/x86_64-linux-gnu/libc.so.6": "libc", "usr/lib/x86_64-linux-gnu/gconv/UTF-16.so": "g"}},
		"libcrypt1":           {"1:4.4.33-2", map[string]string{"lib/x86_64-linux-gnu/libcrypt.so.1": "l"}},
		"libtomcrypt1":        {"1.18.2-6", map[string]string{"usr/lib/x86_64-linux-gnu/libtomcrypt.so.1": "l"}},
		"libtommath1":         {"1.2.0-6", map[string]string{"usr/lib/x86_64-linux-gnu/libtommath.so.1": "l"}},
		"libgmp10":            {"2:6.2.1", map[string]string{"usr/lib/x86_64-linux-gnu/libgmp.so.10": "l"}},
		"zlib1g":              {"1:1.2.13", map[string]string{"lib/x86_64-linux-gnu/libz.so.1": "l"}},
		"openssh-sftp-server": {"1:9.2p1-2", map[string]string{"usr/lib/openssh/sftp-server": "sftp"}},
		"htop":                {"3.2.2-2", map[string]string{"usr/bin/htop": "htop", "usr/share/man/man1/htop.1.gz": "m"}},
	}}
	return h
}

// debFile is the file name apt gives a package: version colons escaped.
func debFile(name string, p fakePkg) string {
	return name + "_" + strings.ReplaceAll(p.version, ":", "%3a") + "_amd64.deb"
}

func (p fakePkg) debContent(name string) []byte { return []byte("deb " + name + " " + p.version) }

func (h *fakeHost) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	argv := append([]string{name}, args...)
	cmd := strings.Join(argv, " ")
	h.commands = append(h.commands, cmd)
	fail := func(stderr string, kind error) ([]byte, error) {
		return nil, &system.CommandError{Argv: argv, ExitCode: 100, Stderr: stderr, Kind: kind}
	}
	dir := ""
	if name == "env" && len(args) > 2 && args[0] == "-C" {
		dir, argv = args[1], args[2:]
		name, args, cmd = argv[0], argv[1:], strings.Join(argv, " ")
	}
	if h.failOn != "" && strings.HasPrefix(cmd, h.failOn) && !strings.Contains(cmd, "--print-uris") {
		return fail("injected failure", nil)
	}
	switch {
	case cmd == "apt-get update":
		h.listsOK = true
		return nil, nil
	case cmd == "apt-cache depends "+kernelMetaPackage:
		if !h.listsOK {
			return fail("E: No packages found", nil)
		}
		return []byte(kernelMetaPackage + "\n  Depends: linux-image-" + fakeKernelVersion + "\n"), nil
	case name == "apt-cache" && slices.Equal(args[:min(len(args), len(aptDependsArgs))], aptDependsArgs):
		return h.aptDependsRecurse(args[len(aptDependsArgs):], fail)
	case name == "dpkg-deb" && len(args) == 2 && args[0] == "-c":
		return h.dpkgContents(args[1], fail)
	case name == "apt-get" && len(args) > 0 && args[0] == "download":
		var out strings.Builder
		pkgs := args[1:]
		printOnly := len(pkgs) > 0 && pkgs[0] == "--print-uris"
		if printOnly {
			pkgs = pkgs[1:]
		}
		for _, n := range pkgs {
			p, ok := h.archive[n]
			if !ok || !h.listsOK {
				return fail("E: Unable to locate package "+n, nil)
			}
			c := p.debContent(n)
			if printOnly {
				fmt.Fprintf(&out, "'http://mirror/pool/%s' %s %d SHA256:%x\n", n, debFile(n, p), len(c), sha256.Sum256(c))
				continue
			}
			h.downloads = append(h.downloads, n)
			if err := os.WriteFile(filepath.Join(dir, debFile(n, p)), c, 0o644); err != nil {
				return nil, err
			}
		}
		return []byte(out.String()), nil
	case name == "dpkg" && len(args) == 3 && args[0] == "-x":
		for n, p := range h.archive {
			if filepath.Base(args[1]) != debFile(n, p) {
				continue
			}
			for path, content := range p.files {
				dst := filepath.Join(args[2], path)
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return nil, err
				}
				if err := os.WriteFile(dst, []byte(content), 0o755); err != nil {
					return nil, err
				}
			}
			return nil, nil
		}
		return fail("dpkg-deb: error: unknown package file", nil)
	case strings.HasSuffix(name, "/bin/busybox") && cmd == name+" --list-full":
		return []byte("bin/sh\nsbin/init\nsbin/acpid\nusr/bin/[\nusr/sbin/dropbear\n"), nil
	case name == "mkfs.ext4":
		return h.mkfs(args)
	case name == "debootstrap":
		return fail("exec: \"debootstrap\": executable file not found in $PATH", system.ErrNoTool)
	}
	h.t.Errorf("fake host: unexpected command %q", cmd)
	return fail("unknown command", nil)
}

// mkfs records the -d tree and writes a file with an ext4 superblock magic.
func (h *fakeHost) mkfs(args []string) ([]byte, error) {
	i := slices.Index(args, "-d")
	if i < 0 || len(args) < i+4 {
		h.t.Errorf("mkfs.ext4 %q: want -d TREE OUT SIZE", args)
		return nil, errors.New("bad mkfs")
	}
	tree, out := args[i+1], args[i+2]
	h.rootfs = map[string]fakeFile{}
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		info, err := d.Info()
		if err != nil {
			return err
		}
		f := fakeFile{mode: info.Mode()}
		if d.Type() == fs.ModeSymlink {
			f.link, _ = os.Readlink(p)
		}
		h.rootfs[filepath.ToSlash(rel)] = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	sb := make([]byte, 4096)
	binary.LittleEndian.PutUint16(sb[1080:], 0xEF53)
	return nil, os.WriteFile(out, sb, 0o644)
}

// asRoot lets Build pass its root check in unprivileged tests.
func asRoot(t *testing.T) {
	old := euid
	euid = func() int { return 0 }
	t.Cleanup(func() { euid = old })
}

func TestBuildMinimalFakeHost(t *testing.T) {
	asRoot(t)
	h := newFakeHost(t)
	cache := t.TempDir()
	dir := filepath.Join(t.TempDir(), "img")
	var steps []string
	res, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(),
		Dir: dir, CacheDir: cache, Runner: h, Packages: []string{"htop"},
		Progress: func(s string) { steps = append(steps, s) },
	})
	if err != nil {
		t.Fatalf("Build: %v\ncommands:\n%s", err, strings.Join(h.commands, "\n"))
	}
	wantSteps := []string{"resolving packages", "extra packages htop need nothing more", "downloading packages",
		"downloading 11 packages, 0.0 MiB (0 of 11 cached)", "unpacking packages", "building rootfs",
		"checking extra packages' programs", "building initramfs", "extracting vmlinux", "checking image"}
	if !slices.Equal(steps, wantSteps) {
		t.Errorf("steps %q, want %q", steps, wantSteps)
	}
	want := Result{
		Kernel: filepath.Join(dir, "vmlinuz"), VMLinux: filepath.Join(dir, "vmlinux"),
		Initrd: filepath.Join(dir, "initrd.img"), Rootfs: filepath.Join(dir, "rootfs.ext4"),
		BootArgs: "quiet root=/dev/vda", KernelVersion: fakeKernelVersion, FirecrackerBootable: true,
	}
	got := res
	got.Notes = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Result = %+v\nwant     %+v", got, want)
	}
	notes := strings.Join(res.Notes, "\n")
	for _, n := range []string{"htop", "untested", "virtio_pci"} {
		if !strings.Contains(notes, n) {
			t.Errorf("notes lack %q: %q", n, res.Notes)
		}
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"initrd.img", "rootfs.ext4", "vmlinux", "vmlinuz"}) {
		t.Errorf("output dir holds %q, want only the image files", names)
	}

	// The rootfs tree given to mkfs.ext4.
	fsWant := map[string]fakeFile{
		"etc/inittab":                 {mode: 0o644},
		"etc/init.d/rcS":              {mode: 0o755},
		"etc/init.d/halt":             {mode: 0o755},
		"etc/acpi/PWRF/00000080":      {mode: 0o755},
		"usr/lib/banger/guest-setup":  {mode: 0o755},
		"usr/lib/banger/agent":        {mode: 0o755},
		"etc/shadow":                  {mode: 0o600},
		"root":                        {mode: fs.ModeDir | 0o700},
		"root/.ssh":                   {mode: fs.ModeDir | 0o700},
		"etc/dropbear":                {mode: fs.ModeDir | 0o700},
		"tmp":                         {mode: fs.ModeDir | fs.ModeSticky | 0o777},
		"work":                        {mode: fs.ModeDir | 0o755},
		"bin/sh":                      {mode: fs.ModeSymlink | 0o777, link: "/bin/busybox"},
		"sbin/init":                   {mode: fs.ModeSymlink | 0o777, link: "/bin/busybox"},
		"usr/lib/sftp-server":         {mode: fs.ModeSymlink | 0o777, link: "openssh/sftp-server"},
		"etc/hosts":                   {mode: fs.ModeSymlink | 0o777, link: "../run/banger/hosts"},
		"usr/sbin/dropbear":           {mode: 0o755}, // the package's file, not a busybox link
		"usr/bin/htop":                {mode: 0o755},
		"usr/lib/openssh/sftp-server": {mode: 0o755},
	}
	for p, w := range fsWant {
		g, ok := h.rootfs[p]
		if !ok {
			t.Errorf("rootfs lacks %s", p)
			continue
		}
		if g != w {
			t.Errorf("rootfs %s = %v %q, want %v %q", p, g.mode, g.link, w.mode, w.link)
		}
	}
	for _, p := range []string{"usr/share/doc", "usr/share/man", "usr/lib/x86_64-linux-gnu/gconv",
		"root/.ssh/authorized_keys", "etc/resolv.conf", "etc/dropbear/dropbear_ed25519_host_key", "boot", "lib/modules"} {
		if _, ok := h.rootfs[p]; ok {
			t.Errorf("rootfs has %s", p)
		}
	}

	// The initramfs: init, busybox and the modules that exist, in order.
	entries := readCPIOFile(t, res.Initrd)
	if string(entries["lib/modules/order"].data) != "virtio_ring\nvirtio\nvirtio_mmio\nvirtio_blk\nvirtio_net\nvirtio_console\nbutton\nevdev\n" {
		t.Errorf("module order %q", entries["lib/modules/order"].data)
	}
	if string(entries["bin/busybox"].data) != "busybox binary" || entries["bin/switch_root"].mode != sIFLNK|0o777 {
		t.Errorf("initramfs busybox wrong: %+v", entries["bin/busybox"])
	}
	if !strings.Contains(string(entries["init"].data), "switch_root /newroot /sbin/init") {
		t.Errorf("initramfs init:\n%s", entries["init"].data)
	}

	// A second build with the same cache downloads nothing.
	first := len(h.downloads)
	if _, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: filepath.Join(t.TempDir(), "img2"), CacheDir: cache, Runner: h}); err != nil {
		t.Fatalf("second Build: %v", err)
	}
	if len(h.downloads) != first {
		t.Errorf("second build downloaded %q again", h.downloads[first:])
	}
	// A corrupted cache entry is downloaded again.
	p := h.archive["zlib1g"]
	if err := os.WriteFile(filepath.Join(cache, debFile("zlib1g", p)), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: filepath.Join(t.TempDir(), "img3"), CacheDir: cache, Runner: h}); err != nil {
		t.Fatalf("third Build: %v", err)
	}
	if got := h.downloads[first:]; !slices.Equal(got, []string{"zlib1g"}) {
		t.Errorf("after corrupting zlib1g the build downloaded %q", got)
	}
}

func TestBuildFailureRemovesDir(t *testing.T) {
	asRoot(t)
	for _, failOn := range []string{"apt-cache", "apt-get download", "dpkg", "mkfs.ext4"} {
		t.Run(failOn, func(t *testing.T) {
			h := newFakeHost(t)
			h.failOn = failOn
			cache := t.TempDir()
			dir := filepath.Join(t.TempDir(), "img")
			res, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, CacheDir: cache, Runner: h})
			if err == nil {
				t.Fatal("Build succeeded")
			}
			if !strings.Contains(err.Error(), "injected failure") || !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q should carry the cause and name the directory", err)
			}
			if !reflect.DeepEqual(res, Result{}) {
				t.Errorf("failed Build returned %+v", res)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("failed build left %s: %v", dir, err)
			}
			if _, err := os.Stat(cache); err != nil {
				t.Errorf("failed build removed the cache: %v", err)
			}
		})
	}
}

func TestBuildCancelled(t *testing.T) {
	asRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	dir := filepath.Join(t.TempDir(), "img")
	_, err := Build(ctx, BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: newFakeHost(t), Progress: func(s string) {
		if s == "building rootfs" {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("cancelled build left %s", dir)
	}
}

func TestBuildRefusesNonEmptyDir(t *testing.T) {
	asRoot(t)
	dir := t.TempDir()
	keep := filepath.Join(dir, "precious")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := newFakeHost(t)
	_, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: h})
	if !errors.Is(err, os.ErrExist) {
		t.Fatalf("err = %v, want os.ErrExist", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("Build removed a file it did not make: %v", err)
	}
	if len(h.commands) != 0 {
		t.Errorf("ran %q before checking the directory", h.commands)
	}
}

func TestBuildNeedsRoot(t *testing.T) {
	old := euid
	euid = func() int { return 1000 }
	t.Cleanup(func() { euid = old })
	dir := filepath.Join(t.TempDir(), "img")
	_, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: newFakeHost(t)})
	if err == nil || !strings.Contains(err.Error(), "root") {
		t.Fatalf("err = %v, want a needs-root error", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("refused build created %s", dir)
	}
}

func TestBuildBadOptions(t *testing.T) {
	asRoot(t)
	h := newFakeHost(t)
	for name, o := range map[string]BuildOptions{
		"no runner": {Dir: t.TempDir()},
		"no dir":    {Runner: h},
		"bad base":  {Dir: t.TempDir(), Runner: h, Base: "alpine"},
	} {
		if _, err := Build(context.Background(), o); err == nil {
			t.Errorf("%s: Build succeeded", name)
		}
	}
}

func TestBuildDebianWithoutDebootstrap(t *testing.T) {
	asRoot(t)
	h := newFakeHost(t)
	dir := filepath.Join(t.TempDir(), "img")
	_, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Base: BaseDebian, Runner: h})
	if !errors.Is(err, system.ErrNoTool) || !strings.Contains(err.Error(), "debootstrap") {
		t.Fatalf("err = %v, want a missing-debootstrap error (system.ErrNoTool)", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("failed build left %s", dir)
	}
	if len(h.downloads) != 0 {
		t.Errorf("downloaded %q before finding debootstrap missing", h.downloads)
	}
}

func TestBuildUpdatesEmptyAptLists(t *testing.T) {
	asRoot(t)
	aptUpdated.Store(false)
	t.Cleanup(func() { aptUpdated.Store(false) })
	h := newFakeHost(t)
	h.listsOK = false
	if _, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: filepath.Join(t.TempDir(), "img"), Runner: h}); err != nil {
		t.Fatalf("Build: %v", err)
	}
	updates := 0
	for _, c := range h.commands {
		if c == "apt-get update" {
			updates++
		}
	}
	if updates != 1 {
		t.Errorf("apt-get update ran %d times, want once", updates)
	}
}

func TestParsePrintURIs(t *testing.T) {
	out := []byte("'http://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4%2bdeb12u1%2bb1_amd64.deb' busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb 928188 SHA256:3D3FDBE91D4660C873E14B092C213FE81C1DA6362DAA236EB25D0171EB108744\n" +
		"W: some warning\n")
	debs, err := parsePrintURIs(out)
	if err != nil {
		t.Fatal(err)
	}
	want := deb{name: "busybox-static", file: "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb", size: 928188,
		sha256: "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744"}
	if len(debs) != 1 || debs[0] != want {
		t.Fatalf("parsed %+v, want %+v", debs, want)
	}
	for _, bad := range []string{"'u' ../evil.deb 10 SHA256:00", "'u' x_1_amd64.deb notanumber", "'u' nounderscore.deb 10"} {
		if _, err := parsePrintURIs([]byte(bad)); err == nil {
			t.Errorf("parsePrintURIs(%q) accepted it", bad)
		}
	}
}

func TestRootfsSize(t *testing.T) {
	if got := rootfsSize(9<<20, 600); got != 64<<20 {
		t.Errorf("small tree: %d, want the 64 MiB minimum", got)
	}
	big := rootfsSize(300<<20, 20000)
	if big < 300<<20+32<<20 || big%(1<<20) != 0 {
		t.Errorf("300 MiB tree: %d, want room to spare, whole MiB", big)
	}
}

func TestPackageNameAndDedupe(t *testing.T) {
	got := dedupe([]string{"libc6", "htop=3.2", "libc6:amd64", "vim/bookworm", "htop"})
	if !slices.Equal(got, []string{"libc6", "htop=3.2", "vim/bookworm"}) {
		t.Errorf("dedupe = %q", got)
	}
}

func TestBuildUnknownPackage(t *testing.T) {
	asRoot(t)
	aptUpdated.Store(false)
	t.Cleanup(func() { aptUpdated.Store(false) })
	h := newFakeHost(t)
	dir := filepath.Join(t.TempDir(), "img")
	_, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: h, Packages: []string{"no-such-package"}})
	if err == nil || !strings.Contains(err.Error(), "no-such-package") {
		t.Fatalf("err = %v, want one naming the unknown package", err)
	}
	if slices.Contains(h.commands, "apt-get update") {
		t.Error("an unknown extra package triggered apt-get update")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("failed build left %s", dir)
	}
}
