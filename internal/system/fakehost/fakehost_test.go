package fakehost_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/system/fakehost"
)

type env struct {
	t   *testing.T
	h   *fakehost.Host
	dir string
}

func newEnv(t *testing.T) *env {
	return &env{t: t, h: fakehost.New(), dir: t.TempDir()}
}

// file makes a sparse file of size bytes in the temp dir.
func (e *env) file(name string, size int64) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	f, err := os.Create(p)
	if err != nil {
		e.t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return p
}

func (e *env) run(args ...string) (string, error) {
	out, err := e.h.Run(context.Background(), args[0], args[1:]...)
	return string(out), err
}

func (e *env) must(args ...string) string {
	e.t.Helper()
	out, err := e.run(args...)
	if err != nil {
		e.t.Fatalf("%v: %v", args, err)
	}
	return out
}

func (e *env) state() string { return strings.ReplaceAll(e.h.State(), e.dir, "$D") }

// wantErr checks that err is a CommandError of the given kind (nil: no kind).
func wantErr(t *testing.T, what string, err, kind error) {
	t.Helper()
	var ce *system.CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("%s: error %v is not a CommandError", what, err)
	}
	if kind == nil && ce.Kind != nil || kind != nil && !errors.Is(err, kind) {
		t.Errorf("%s: error %v (kind %v), want kind %v", what, err, ce.Kind, kind)
	}
}

func TestLoopAttachDetach(t *testing.T) {
	e := newEnv(t)
	a := e.file("a.img", 1<<20)
	b := e.file("b.img", 1<<20+100)
	if got := e.must("losetup", "--find", "--show", "--read-only", a); got != "/dev/loop0\n" {
		t.Errorf("first loop %q", got)
	}
	if got := e.must("losetup", "--find", "--show", b); got != "/dev/loop1\n" {
		t.Errorf("second loop %q", got)
	}
	want := "loop /dev/loop0 ro file=$D/a.img\nloop /dev/loop1 rw file=$D/b.img\n"
	if s := e.state(); s != want {
		t.Errorf("state:\n%s", s)
	}
	_, err := e.run("losetup", "--find", "--show", filepath.Join(e.dir, "missing"))
	wantErr(t, "missing backing file", err, system.ErrNotFound)

	var doc struct {
		LoopDevices []map[string]any `json:"loopdevices"`
	}
	if err := json.Unmarshal([]byte(e.must("losetup", "--list", "--json", "-O", "NAME,BACK-FILE,RO")), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.LoopDevices) != 2 || doc.LoopDevices[0]["back-file"] != a || doc.LoopDevices[0]["ro"] != true {
		t.Errorf("json list %v", doc)
	}
	if got := e.must("losetup", "--list", "-O", "NAME,BACK-FILE", "--noheadings", "--raw"); got != "/dev/loop0 "+a+"\n/dev/loop1 "+b+"\n" {
		t.Errorf("raw list %q", got)
	}

	e.must("losetup", "-d", "/dev/loop0")
	_, err = e.run("losetup", "-d", "/dev/loop0")
	wantErr(t, "detach twice", err, system.ErrNotFound)
	// The freed index is reused first, as the kernel does.
	if got := e.must("losetup", "--find", "--show", a); got != "/dev/loop0\n" {
		t.Errorf("reused loop %q", got)
	}
	os.Remove(a)
	if got := e.must("losetup", "--list", "--raw", "-n", "-O", "BACK-FILE"); !strings.Contains(got, a+" (deleted)") {
		t.Errorf("deleted backing file not marked: %q", got)
	}
}

func TestDMRefusals(t *testing.T) {
	e := newEnv(t)
	base := e.file("base.img", 1<<20) // 2048 sectors
	cow := e.file("root.cow", 1<<20)
	e.must("losetup", "--find", "--show", "--read-only", base)
	e.must("losetup", "--find", "--show", cow)
	e.must("losetup", "--find", "--show", "--read-only", cow) // loop2: a read-only view

	before := e.state()
	refusals := []struct {
		what, table string
		kind        error
	}{
		{"missing loop", "0 2048 snapshot /dev/loop0 /dev/loop9 P 8", system.ErrNotFound},
		{"read-only cow", "0 2048 snapshot /dev/loop0 /dev/loop2 P 8", system.ErrPerm},
		{"longer than origin", "0 4096 snapshot /dev/loop0 /dev/loop1 P 8", nil},
		{"bad chunk", "0 2048 snapshot /dev/loop0 /dev/loop1 P 3", nil},
		{"bad persistence", "0 2048 snapshot /dev/loop0 /dev/loop1 X 8", nil},
		{"same device twice", "0 2048 snapshot /dev/loop1 /dev/loop1 P 8", nil},
		{"short table", "0 2048", nil},
	}
	for _, r := range refusals {
		_, err := e.run("dmsetup", "create", "banger-x", "--table", r.table)
		if err == nil {
			t.Errorf("%s: accepted", r.what)
			continue
		}
		wantErr(t, r.what, err, r.kind)
		if s := e.state(); s != before {
			t.Errorf("%s: state changed:\n%s", r.what, s)
		}
	}

	e.must("dmsetup", "create", "banger-x", "--table", "0 2048 snapshot /dev/loop0 /dev/loop1 P 8")
	_, err := e.run("dmsetup", "create", "banger-x", "--table", "0 2048 snapshot /dev/loop0 /dev/loop1 P 8")
	wantErr(t, "name in use", err, system.ErrBusy)
	if got := e.must("dmsetup", "table", "banger-x"); got != "0 2048 snapshot 7:0 7:1 P 8\n" {
		t.Errorf("table %q", got)
	}
	if got := e.must("dmsetup", "ls"); got != "banger-x\t(253:0)\n" {
		t.Errorf("ls %q", got)
	}
	if got := e.must("dmsetup", "info", "banger-x"); !strings.Contains(got, "Open count:        0") {
		t.Errorf("info %q", got)
	}
	_, err = e.run("losetup", "-d", "/dev/loop1")
	wantErr(t, "detach a loop under a dm table", err, system.ErrBusy)

	e.h.Hold("/dev/mapper/banger-x")
	_, err = e.run("dmsetup", "remove", "banger-x")
	wantErr(t, "remove while open", err, system.ErrBusy)
	e.h.Release("/dev/mapper/banger-x")
	e.must("dmsetup", "remove", "banger-x")
	_, err = e.run("dmsetup", "remove", "banger-x")
	wantErr(t, "remove absent", err, system.ErrNotFound)
	_, err = e.run("dmsetup", "info", "banger-x")
	wantErr(t, "info absent", err, system.ErrNotFound)
	if got := e.must("dmsetup", "ls"); got != "No devices found\n" {
		t.Errorf("ls %q", got)
	}
	e.must("losetup", "-d", "/dev/loop1")

	e.h.SetDMAvailable(false)
	for _, args := range [][]string{{"dmsetup", "version"}, {"dmsetup", "ls"}, {"dmsetup", "remove", "x"}} {
		_, err := e.run(args...)
		wantErr(t, "no dm driver", err, system.ErrNotFound)
	}
}

func TestUnknownCommandsFail(t *testing.T) {
	e := newEnv(t)
	for _, args := range [][]string{
		{"ip", "link", "show"},
		{"losetup", "--all"},
		{"dmsetup", "suspend", "x"},
		{"dmsetup", "create", "x", "--table", "0 8 thin-pool a b c d"},
		{"mkfs.ext4", "-j", "/x"},
	} {
		_, err := e.run(args...)
		if err == nil {
			t.Errorf("%v accepted", args)
			continue
		}
		if !strings.Contains(err.Error(), "fakehost: unsupported") {
			t.Errorf("%v: %v", args, err)
		}
		wantErr(t, strings.Join(args, " "), err, nil)
	}
}

func TestFaults(t *testing.T) {
	e := newEnv(t)
	a := e.file("a.img", 1<<20)
	e.h.FailNext("losetup --find", "losetup: boom: Device or resource busy")
	_, err := e.run("losetup", "--find", "--show", a)
	wantErr(t, "injected", err, system.ErrBusy)
	if s := e.state(); s != "" {
		t.Errorf("failed command changed state:\n%s", s)
	}
	e.must("losetup", "--find", "--show", a)
	// Prefixes match whole words.
	e.h.FailNext("losetup --fin", "never")
	e.must("losetup", "--find", "--show", a)
	e.h.ClearFaults()
	e.h.BusyTimes("losetup -d", 2)
	for i := 0; i < 2; i++ {
		_, err := e.run("losetup", "-d", "/dev/loop0")
		wantErr(t, "busy", err, system.ErrBusy)
	}
	e.must("losetup", "-d", "/dev/loop0")
	if n := e.h.Count("losetup -d"); n != 3 {
		t.Errorf("Count = %d", n)
	}
}

func TestExt4Images(t *testing.T) {
	e := newEnv(t)
	seed := filepath.Join(e.dir, "seed")
	os.MkdirAll(filepath.Join(seed, "etc"), 0o755)
	os.WriteFile(filepath.Join(seed, "etc", "os-release"), []byte("ID=fake\n"), 0o640)
	img := filepath.Join(e.dir, "base.ext4")
	e.must("mkfs.ext4", "-q", "-F", "-L", "root", "-d", seed, "-E", "root_owner=0:0", img, "64M")
	if st, err := os.Stat(img); err != nil || st.Size() != 64<<20 {
		t.Fatalf("image: %v %v", st, err)
	}
	if got := e.must("debugfs", "-R", "cat /etc/os-release", img); got != "ID=fake\n" {
		t.Errorf("cat %q", got)
	}
	if got := e.must("debugfs", "-R", "stat /etc/os-release", img); !strings.Contains(got, "Type: regular    Mode:  0640") {
		t.Errorf("stat %q", got)
	}
	// Commands that fail exit 0 and print nothing to stdout, like debugfs.
	if got := e.must("debugfs", "-R", "cat /nope", img); got != "" {
		t.Errorf("cat missing %q", got)
	}
	// Writes need -w.
	script := filepath.Join(e.dir, "script")
	os.WriteFile(script, []byte("mkdir /srv\n"), 0o644)
	e.must("debugfs", "-f", script, img)
	if got := e.must("debugfs", "-R", "stat /srv", img); got != "" {
		t.Errorf("read-only debugfs wrote: %q", got)
	}
	out := e.must("debugfs", "-w", "-f", script, img)
	if out != "debugfs: mkdir /srv\n" {
		t.Errorf("script output %q", out)
	}
	os.WriteFile(script, []byte("frobnicate /srv\n"), 0o644)
	_, err := e.run("debugfs", "-w", "-f", script, img)
	wantErr(t, "unknown debugfs command", err, system.ErrNotFound)

	// A copy of the image file carries its files; changing the copy leaves
	// the original alone.
	data, _ := os.ReadFile(img)
	cp := filepath.Join(e.dir, "copy.ext4")
	os.WriteFile(cp, data, 0o644)
	if got := e.must("debugfs", "-R", "cat /etc/os-release", cp); got != "ID=fake\n" {
		t.Errorf("copy lost contents: %q", got)
	}
	if err := e.h.WriteImageFile(cp, "/etc/hostname", []byte("c\n"), 0o644, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := e.h.ReadImageFile(img, "/etc/hostname"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("write to copy reached original: %v", err)
	}
	e.must("resize2fs", cp)
	e.must("e2fsck", "-fn", cp)

	junk := e.file("junk", 1<<20)
	_, err = e.run("resize2fs", junk)
	wantErr(t, "resize2fs on junk", err, nil)
	_, err = e.run("e2fsck", "-f", "-p", junk)
	if err == nil {
		t.Error("e2fsck on junk passed")
	}
	_, err = e.run("mkfs.ext4", "-q", filepath.Join(e.dir, "nosize"))
	wantErr(t, "mkfs without size of a missing file", err, system.ErrNotFound)
}

func TestSnapshotView(t *testing.T) {
	e := newEnv(t)
	base := filepath.Join(e.dir, "base.ext4")
	e.must("mkfs.ext4", "-q", "-F", base, "8M")
	e.h.WriteImageFile(base, "/etc/os-release", []byte("ID=base\n"), 0o644, 0, 0)
	cow := e.file("root.cow", 8<<20)
	bl := strings.TrimSpace(e.must("losetup", "--find", "--show", "--read-only", base))
	cl := strings.TrimSpace(e.must("losetup", "--find", "--show", cow))
	e.must("dmsetup", "create", "snap", "--table", "0 16384 snapshot "+bl+" "+cl+" P 8")
	dev := "/dev/mapper/snap"
	if got, err := e.h.ReadImageFile(dev, "/etc/os-release"); err != nil || string(got) != "ID=base\n" {
		t.Errorf("snapshot shows %q %v", got, err)
	}
	e.h.WriteImageFile(dev, "/etc/hostname", []byte("vm\n"), 0o644, 0, 0)
	if _, err := e.h.ReadImageFile(base, "/etc/hostname"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot write reached base: %v", err)
	}
	// The change lives with the COW file: it survives a teardown.
	e.must("dmsetup", "remove", "snap")
	e.must("dmsetup", "create", "snap2", "--table", "0 16384 snapshot "+bl+" "+cl+" P 8")
	if got, err := e.h.ReadImageFile("/dev/mapper/snap2", "/etc/hostname"); err != nil || string(got) != "vm\n" {
		t.Errorf("after re-create %q %v", got, err)
	}
	// debugfs -w on a read-only loop cannot open it.
	script := filepath.Join(e.dir, "s")
	os.WriteFile(script, []byte("stat /\n"), 0o644)
	if got := e.must("debugfs", "-w", "-f", script, bl); strings.Contains(got, "Inode: 2") {
		t.Errorf("debugfs -w opened a read-only loop: %q", got)
	}
}

func TestMount(t *testing.T) {
	e := newEnv(t)
	img := filepath.Join(e.dir, "img.ext4")
	e.must("mkfs.ext4", "-q", "-F", img, "8M")
	e.h.WriteImageFile(img, "/a/b/c", []byte("deep\n"), 0o600, 0, 0)
	mnt := filepath.Join(e.dir, "mnt")
	os.Mkdir(mnt, 0o755)
	e.must("mount", "-o", "ro,loop,noload", img, mnt)
	if b, err := os.ReadFile(filepath.Join(mnt, "a", "b", "c")); err != nil || string(b) != "deep\n" {
		t.Errorf("mounted file %q %v", b, err)
	}
	if s := e.state(); !strings.Contains(s, "loop /dev/loop0 ro file=$D/img.ext4 autoclear") ||
		!strings.Contains(s, "mount $D/mnt source=$D/img.ext4 loop=/dev/loop0") {
		t.Errorf("state:\n%s", s)
	}
	_, err := e.run("losetup", "-d", "/dev/loop0")
	wantErr(t, "detach a mounted loop", err, system.ErrBusy)
	_, err = e.run("mount", "-o", "ro,loop", img, mnt)
	wantErr(t, "mount twice", err, system.ErrBusy)
	e.h.Hold(mnt)
	_, err = e.run("umount", mnt)
	wantErr(t, "umount busy", err, system.ErrBusy)
	e.h.Release(mnt)
	e.must("umount", mnt)
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Errorf("files left in mount dir: %v", ents)
	}
	if s := e.state(); strings.Contains(s, "loop ") || strings.Contains(s, "mount ") {
		t.Errorf("state after umount:\n%s", s)
	}
	_, err = e.run("umount", mnt)
	if err == nil {
		t.Error("umount of a non-mount succeeded")
	}
	junk := e.file("junk", 1<<20)
	_, err = e.run("mount", "-o", "ro,loop", junk, mnt)
	if err == nil {
		t.Error("mounted junk")
	}
}
