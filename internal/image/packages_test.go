package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// aptDependsRecurse answers `apt-cache depends --recurse ...` from the fake
// archive and h.depends the way apt does: every package reached through any
// alternative or provider, once, <name> for those with no version of their
// own, and a failure only when it knows none of the names asked for.
func (h *fakeHost) aptDependsRecurse(names []string, fail func(string, error) ([]byte, error)) ([]byte, error) {
	if !h.listsOK {
		return fail("E: No packages found", nil)
	}
	var out strings.Builder
	queue := slices.Clone(names)
	seen := map[string]bool{}
	known := 0
	for len(queue) > 0 {
		n, virtual := unbracket(queue[0])
		queue = queue[1:]
		if seen[n] {
			continue
		}
		seen[n] = true
		if _, ok := h.archive[n]; !ok {
			if virtual {
				fmt.Fprintf(&out, "<%s>\n", n)
			}
			continue
		}
		if slices.Contains(names, n) {
			known++
		}
		fmt.Fprintln(&out, n)
		for _, line := range h.depends[n] {
			fmt.Fprintln(&out, line)
			if _, target, ok := strings.Cut(line, ": "); ok {
				queue = append(queue, target)
			} else {
				queue = append(queue, strings.TrimSpace(line))
			}
		}
	}
	if known == 0 {
		return fail("E: No packages found", nil)
	}
	return []byte(out.String()), nil
}

// dpkgContents answers `dpkg-deb -c FILE` for a fake package file.
func (h *fakeHost) dpkgContents(debPath string, fail func(string, error) ([]byte, error)) ([]byte, error) {
	for n, p := range h.archive {
		if filepath.Base(debPath) != debFile(n, p) {
			continue
		}
		paths := make([]string, 0, len(p.files))
		for path := range p.files {
			paths = append(paths, path)
		}
		slices.Sort(paths)
		var out strings.Builder
		for _, path := range paths {
			fmt.Fprintf(&out, "-rwxr-xr-x root/root %9d 2023-04-09 10:22 ./%s\n", len(p.files[path]), path)
		}
		return []byte(out.String()), nil
	}
	return fail("dpkg-deb: error: unknown package file", nil)
}

func TestParseAptDepends(t *testing.T) {
	out := []byte(`tzdata
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
  Recommends: ignored
python3
  PreDepends: python3-minimal
  Depends: python3.11
<awk>
`)
	db, err := parseAptDepends(out)
	if err != nil {
		t.Fatal(err)
	}
	tz := db["tzdata"]
	if tz == nil || tz.virtual || len(tz.deps) != 1 || len(tz.deps[0]) != 2 {
		t.Fatalf("tzdata = %+v, want one entry with two alternatives", tz)
	}
	if d := tz.deps[0][1]; d.name != "debconf-2.0" || !d.virtual || !slices.Equal(d.providers, []string{"cdebconf", "debconf"}) {
		t.Errorf("tzdata's second alternative = %+v", d)
	}
	if d := tz.deps[0][0]; d.name != "debconf" || d.virtual || d.providers != nil {
		t.Errorf("tzdata's first alternative = %+v", d)
	}
	if p := db["python3"]; p == nil || len(p.deps) != 2 || p.deps[0][0].name != "python3-minimal" || p.deps[1][0].name != "python3.11" {
		t.Errorf("python3 = %+v, want Pre-Depends and Depends as two entries", p)
	}
	if p := db["awk"]; p == nil || !p.virtual {
		t.Errorf("awk = %+v, want a virtual package", p)
	}
	if _, err := parseAptDepends([]byte("  Depends: orphan\n")); err == nil {
		t.Error("a relation before any package was accepted")
	}
}

// testAptDB is a small archive in apt-cache's format: alternatives, a
// virtual package with one provider, one with two, a dependency only
// reachable through a base package.
const testAptDB = `app
  Depends: libc6
 |Depends: media-types
  Depends: mime-support
  Depends: <python3:any>
    python3
python3
  Depends: libc6
media-types
mime-support
  Depends: perl
perl
libc6
  Depends: libgcc-s1
libgcc-s1
mailer
  Depends: <mail-transport-agent>
    exim4
    postfix
exim4
postfix
both
  Depends: postfix
  Depends: mailer
broken
  Depends: <nothing>
<nothing>
<awk>
`

func TestDependencyClosure(t *testing.T) {
	db, err := parseAptDepends([]byte(testAptDB))
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"libc6", "busybox-static"}
	got, err := dependencyClosure(db, []string{"app"}, base, nil)
	if err != nil {
		t.Fatal(err)
	}
	// media-types is the first alternative; python3 the only provider of
	// python3:any; libgcc-s1 comes through libc6, which the base has.
	if want := []string{"media-types", "python3", "libgcc-s1"}; !slices.Equal(got, want) {
		t.Errorf("closure of app = %q, want %q", got, want)
	}

	// A virtual package with two providers of the same priority is
	// refused, naming them...
	for _, prio := range []map[string]int{nil, {"exim4": 2, "postfix": 2}} {
		_, err = dependencyClosure(db, []string{"mailer"}, base, prio)
		var ce *closureError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "mailer needs mail-transport-agent") ||
			!strings.Contains(err.Error(), "exim4, postfix") || !slices.Equal(ce.ambiguous, []string{"exim4", "postfix"}) {
			t.Errorf("mailer with priorities %v: err = %v, want a refusal naming both providers", prio, err)
		}
	}
	// ...resolved to the one of highest priority...
	got, err = dependencyClosure(db, []string{"mailer"}, base, map[string]int{"exim4": 2, "postfix": 3})
	if err != nil || !slices.Equal(got, []string{"postfix"}) {
		t.Errorf("mailer with postfix preferred: closure %q, err %v", got, err)
	}
	// ...unless one of them is asked for too.
	got, err = dependencyClosure(db, []string{"both"}, base, nil)
	if err != nil || !slices.Equal(got, []string{"postfix", "mailer"}) {
		t.Errorf("both: closure %q, err %v; want postfix, mailer (mailer's virtual resolves to postfix, already chosen)", got, err)
	}
	_, err = dependencyClosure(db, []string{"broken"}, base, nil)
	if err == nil || !strings.Contains(err.Error(), "package broken needs nothing, which no installable package provides") {
		t.Errorf("broken: err = %v", err)
	}

	_, err = dependencyClosure(db, []string{"app", "foo", "bar"}, base, nil)
	if err == nil || err.Error() != "packages foo, bar: not in the Debian archive known to apt (apt-get update?)" {
		t.Errorf("unknown packages: err = %v", err)
	}
	_, err = dependencyClosure(db, []string{"awk"}, base, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "package awk: virtual or without an installable version") {
		t.Errorf("virtual root: err = %v", err)
	}
}

func TestParsePriorities(t *testing.T) {
	out := []byte("Package: gawk\nVersion: 1:5.2.1-2\nPriority: optional\n\nPackage: mawk\nPriority: required\n\nPackage: odd\nPriority: weird\n")
	got := parsePriorities(out)
	if got["gawk"] != 2 || got["mawk"] != 5 || got["odd"] != 0 || len(got) != 3 {
		t.Errorf("priorities %v", got)
	}
	if b := bestProvider([]string{"gawk", "mawk", "original-awk"}, got); b != "mawk" {
		t.Errorf("best awk = %q, want mawk", b)
	}
	if b := bestProvider([]string{"gawk", "odd"}, map[string]int{"gawk": 2, "odd": 2}); b != "" {
		t.Errorf("a tie chose %q", b)
	}
}

// aptCanResolve skips unless this host's apt knows python3 (the closure
// tests read the host's apt lists; no network).
func aptCanResolve(t *testing.T) {
	t.Helper()
	out, err := system.ExecRunner{}.Run(context.Background(), "apt-cache", "show", "--no-all-versions", "python3.11-minimal")
	if err != nil || !strings.Contains(string(out), "Package: python3.11-minimal") {
		t.Skipf("apt here does not know python3.11-minimal (not Debian bookworm, or no apt lists): %v", err)
	}
}

func TestResolveClosurePython3(t *testing.T) {
	aptCanResolve(t)
	got, err := resolveClosure(context.Background(), system.ExecRunner{}, []string{"python3"}, minimalPackages)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("python3 needs %d more packages: %s", len(got), strings.Join(got, " "))
	for _, want := range []string{"python3-minimal", "python3.11", "python3.11-minimal", "libpython3.11-minimal",
		"libpython3.11-stdlib", "libpython3-stdlib", "libexpat1", "libssl3", "media-types", "libgcc-s1"} {
		if !slices.Contains(got, want) {
			t.Errorf("closure lacks %s", want)
		}
	}
	// Already unpacked by the base, or only reachable through a second
	// alternative (mime-support | media-types pulls perl through mailcap)
	// or a Recommends.
	for _, unwanted := range []string{"python3", "libc6", "zlib1g", "libcrypt1", "mime-support", "mailcap", "perl", "ca-certificates"} {
		if slices.Contains(got, unwanted) {
			t.Errorf("closure has %s", unwanted)
		}
	}
	if len(got) != len(dedupe(got)) {
		t.Errorf("closure lists a package twice: %q", got)
	}
}

// TestResolveClosureVirtualByPriority: bash needs base-files, which
// pre-depends on awk, a virtual package gawk, mawk and original-awk
// provide; apt takes mawk (Priority: required) and so must the builder.
func TestResolveClosureVirtualByPriority(t *testing.T) {
	aptCanResolve(t)
	got, err := resolveClosure(context.Background(), system.ExecRunner{}, []string{"bash"}, minimalPackages)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, "base-files") || !slices.Contains(got, "mawk") || slices.Contains(got, "gawk") || slices.Contains(got, "original-awk") {
		t.Errorf("closure of bash %q, want base-files and mawk, not gawk or original-awk", got)
	}
}

func TestResolveClosureUnknownPackage(t *testing.T) {
	aptCanResolve(t)
	r := system.ExecRunner{}
	// Alone apt-cache fails; beside a known package it leaves it out.
	for _, names := range [][]string{{"no-such-package-banger"}, {"python3", "no-such-package-banger"}} {
		_, err := resolveClosure(context.Background(), r, names, minimalPackages)
		if err == nil || err.Error() != "package no-such-package-banger: not in the Debian archive known to apt (apt-get update?)" {
			t.Errorf("%q: err = %v", names, err)
		}
	}
}

func TestBuildExtraPackageWithDependenciesFakeHost(t *testing.T) {
	asRoot(t)
	h := newFakeHost(t)
	h.archive["libncursesw6"] = fakePkg{"6.4-4", map[string]string{"lib/x86_64-linux-gnu/libncursesw.so.6": "l"}}
	h.archive["libtinfo6"] = fakePkg{"6.4-4", map[string]string{"lib/x86_64-linux-gnu/libtinfo.so.6": "l"}}
	h.archive["ncurses-base"] = fakePkg{"6.4-4", map[string]string{"usr/share/terminfo/x/xterm": "t"}}
	h.depends = map[string][]string{
		"htop":         {"  Depends: libc6", "  Depends: libncursesw6", "  Recommends: lsof"},
		"libncursesw6": {"  Depends: libtinfo6", "  Depends: libc6"},
		"libtinfo6":    {"  Depends: libc6"},
	}
	dir := filepath.Join(t.TempDir(), "img")
	var steps []string
	res, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: h, Packages: []string{"htop"},
		Progress: func(s string) { steps = append(steps, s) }})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if !slices.Contains(steps, "extra packages htop need 2 more: libncursesw6, libtinfo6") {
		t.Errorf("no progress line for the resolution in %q", steps)
	}
	if !slices.Contains(steps, "downloading 13 packages, 0.0 MiB (0 of 13 cached)") {
		t.Errorf("no progress line for the download in %q", steps)
	}
	for _, p := range []string{"usr/bin/htop", "lib/x86_64-linux-gnu/libncursesw.so.6", "lib/x86_64-linux-gnu/libtinfo.so.6"} {
		if _, ok := h.rootfs[p]; !ok {
			t.Errorf("rootfs lacks %s", p)
		}
	}
	if _, ok := h.rootfs["usr/share/terminfo/x/xterm"]; ok {
		t.Error("rootfs has ncurses-base, which nothing depends on")
	}
	if !slices.ContainsFunc(res.Notes, func(n string) bool {
		return strings.Contains(n, "htop and 2 dependencies were unpacked without running maintainer scripts")
	}) {
		t.Errorf("notes %q", res.Notes)
	}
	if slices.Contains(h.downloads, "lsof") {
		t.Error("a Recommends was downloaded")
	}
}

// TestBuildRefusesProgramMissingLibraryFakeHost gives a fake package the
// host's real /bin/ls, whose libraries the fake archive does not have: the
// build must fail naming one and leave nothing.
func TestBuildRefusesProgramMissingLibraryFakeHost(t *testing.T) {
	asRoot(t)
	ls, err := os.ReadFile("/bin/ls")
	if err != nil {
		t.Skipf("no /bin/ls to use as a dynamically linked program: %v", err)
	}
	h := newFakeHost(t)
	h.archive["lsx"] = fakePkg{"1.0", map[string]string{"usr/bin/lsx": string(ls)}}
	dir := filepath.Join(t.TempDir(), "img")
	res, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: h, Packages: []string{"lsx"}})
	if err == nil {
		t.Fatalf("Build succeeded: %+v", res)
	}
	var pe *programError
	if !errors.As(err, &pe) || pe.pkg != "lsx" || pe.program != "/usr/bin/lsx" {
		t.Fatalf("err = %v, want a programError for lsx's /usr/bin/lsx", err)
	}
	// The fake libc6 ships no loader (and a text file as libc.so.6).
	if want := "/usr/bin/lsx needs the loader /lib64/ld-linux-x86-64.so.2, which is not in the image"; pe.reason != want {
		t.Errorf("reason %q, want %q", pe.reason, want)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("refused build left %s", dir)
	}
}

func TestBuildUnknownPackageClearError(t *testing.T) {
	asRoot(t)
	h := newFakeHost(t)
	dir := filepath.Join(t.TempDir(), "img")
	_, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, Runner: h, Packages: []string{"htop", "no-such-package"}})
	if err == nil || !strings.Contains(err.Error(), "package no-such-package: not in the Debian archive known to apt (apt-get update?)") {
		t.Fatalf("err = %v", err)
	}
	if len(h.downloads) != 0 {
		t.Errorf("downloaded %q before refusing", h.downloads)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("refused build left %s", dir)
	}
}

// python3Build is the real minimal image with python3, extracted from the
// built image's ext4 with debugfs rdump. Built once, root and mirror only.
var python3Build struct {
	done     bool
	base     string // removed by TestMain
	dir      string // the image
	tree     string // rdump of its rootfs
	res      Result
	steps    []string
	duration time.Duration
	err      error
}

func python3Image(t *testing.T) (tree string, res Result) {
	t.Helper()
	requireRoot(t)
	if s := os.Getenv(prefetchPython3Env); s != "ok" {
		t.Skipf("needs python3's packages from the Debian mirror: %s", s)
	}
	b := &python3Build
	if !b.done {
		b.done = true
		b.err = func() error {
			base, err := os.MkdirTemp("", "banger-python3-image-")
			if err != nil {
				return err
			}
			b.base = base
			b.dir = filepath.Join(base, "py")
			start := time.Now()
			b.res, err = Build(context.Background(), BuildOptions{Agent: testAgentBin(),
				Dir: b.dir, CacheDir: testCacheDir, Runner: system.ExecRunner{}, Packages: []string{"python3"},
				Progress: func(s string) {
					b.steps = append(b.steps, fmt.Sprintf("%6.2fs %s", time.Since(start).Seconds(), s))
				},
			})
			b.duration = time.Since(start)
			if err != nil {
				return err
			}
			b.tree = filepath.Join(base, "tree")
			if err := os.Mkdir(b.tree, 0o755); err != nil {
				return err
			}
			if out, err := (system.ExecRunner{}).Run(context.Background(), "debugfs", "-R", "rdump / "+b.tree, b.res.Rootfs); err != nil {
				return fmt.Errorf("debugfs rdump: %w\n%s", err, out)
			}
			return nil
		}()
	}
	if b.err != nil {
		t.Fatalf("building the python3 image: %v", b.err)
	}
	return b.tree, b.res
}

// TestIntegrationBuildPython3 is the end-to-end proof without a VM: the
// image's own root filesystem runs python3 in a chroot.
func TestIntegrationBuildPython3(t *testing.T) {
	tree, res := python3Image(t)
	t.Logf("python3 image built in %v (packages cached):\n%s", python3Build.duration.Round(time.Millisecond), strings.Join(python3Build.steps, "\n"))
	st, _ := os.Stat(res.Rootfs)
	t.Logf("rootfs.ext4 %.1f MiB; notes %q", float64(st.Size())/(1<<20), res.Notes)
	if target, err := os.Readlink(filepath.Join(tree, "usr/bin/python3")); err != nil || target != "python3.11" {
		t.Errorf("/usr/bin/python3 -> %q (%v), want python3.11", target, err)
	}
	r := system.ExecRunner{}
	ctx := context.Background()
	out, err := r.Run(ctx, "chroot", tree, "/usr/bin/python3", "-c", "print(6*7)")
	if err != nil || string(out) != "42\n" {
		t.Fatalf("chroot python3 -c 'print(6*7)': %q, %v", out, err)
	}
	// The standard library beyond the minimal one (json, sqlite3 through
	// libsqlite3, ssl through libssl3) imports too.
	out, err = r.Run(ctx, "chroot", tree, "/usr/bin/python3", "-c",
		"import json, sqlite3, ssl, hashlib; print(json.dumps(sqlite3.connect(':memory:').execute('select 6*7').fetchone()))")
	if err != nil || string(out) != "[42]\n" {
		t.Errorf("chroot python3 with json and sqlite3: %q, %v", out, err)
	}
	if out, err := r.Run(ctx, "e2fsck", "-fn", res.Rootfs); err != nil {
		t.Errorf("e2fsck -fn rootfs: %v\n%s", err, out)
	}
}

// TestIntegrationPython3MissingLibrary removes a library python3.11 needs
// from the built tree: the check the build runs must refuse, naming it.
func TestIntegrationPython3MissingLibrary(t *testing.T) {
	tree, _ := python3Image(t)
	ctx := context.Background()
	r := system.ExecRunner{}
	debs, err := fetchDebs(ctx, r, t.TempDir(), testCacheDir, []string{"python3"}, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	progs, err := packagePrograms(ctx, r, debs[0].path)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(progs, "/usr/bin/pydoc3") {
		t.Errorf("python3's programs %q lack /usr/bin/pydoc3", progs)
	}
	programs := map[string][]string{"python3": progs}
	if err := checkPackagePrograms(tree, programs); err != nil {
		t.Fatalf("the built tree fails its own check: %v", err)
	}
	// A copy, so that the image tree stays intact for other tests.
	broken := filepath.Join(t.TempDir(), "tree")
	if out, err := r.Run(ctx, "cp", "-a", tree, broken); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	libs, _ := filepath.Glob(filepath.Join(broken, "*", "*", "x86_64-linux-gnu", "libexpat.so.1*"))
	libs2, _ := filepath.Glob(filepath.Join(broken, "*", "x86_64-linux-gnu", "libexpat.so.1*"))
	libs = append(libs, libs2...)
	if len(libs) == 0 {
		t.Fatal("no libexpat.so.1 in the tree")
	}
	for _, l := range libs {
		if err := os.Remove(l); err != nil {
			t.Fatal(err)
		}
	}
	err = checkPackagePrograms(broken, programs)
	var pe *programError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "needs libexpat.so.1, which is in none of /lib/x86_64-linux-gnu") {
		t.Fatalf("err = %v, want a refusal naming libexpat.so.1", err)
	}
	t.Logf("refusal: %v", err)
}

func TestIntegrationBuildUnknownPackage(t *testing.T) {
	requireRoot(t)
	aptCanResolve(t)
	dir := filepath.Join(t.TempDir(), "img")
	start := time.Now()
	_, err := Build(context.Background(), BuildOptions{Agent: testAgentBin(), Dir: dir, CacheDir: testCacheDir, Runner: system.ExecRunner{},
		Packages: []string{"python3", "no-such-package-banger"}})
	if err == nil || !strings.Contains(err.Error(), "package no-such-package-banger: not in the Debian archive known to apt (apt-get update?)") {
		t.Fatalf("err = %v", err)
	}
	t.Logf("refused in %v: %v", time.Since(start).Round(time.Millisecond), err)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("refused build left %s", dir)
	}
}
