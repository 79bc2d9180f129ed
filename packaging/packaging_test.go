// Package packaging holds the tests of make install, make deb and the
// files in this directory (the systemd unit, the tmpfiles.d entry, the
// example config, the Debian maintainer scripts). It has no code of its own.
package packaging

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/system"
)

// root is the module root; the tests run in packaging/.
const root = ".."

// binDir is the BIN of every make run here: built once (go build reuses its
// cache after that), outside the checkout.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "banger-packaging-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = filepath.Join(dir, "bin")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs argv in dir with extra environment and returns its output and
// exit code; it fails the test only when argv cannot start.
func run(t *testing.T, dir string, env []string, argv ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	spec := system.CommandSpec{Argv: argv, Dir: dir, Stdout: &stdout, Stderr: &stderr}
	if env != nil {
		spec.Env = append(os.Environ(), env...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd, err := system.StartCommand(ctx, spec)
	if err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	st, err := cmd.Wait()
	if err != nil {
		t.Fatalf("%q: %v", argv, err)
	}
	return result{stdout.String(), stderr.String(), st.Code}
}

func mustRun(t *testing.T, dir string, env []string, argv ...string) string {
	t.Helper()
	r := run(t, dir, env, argv...)
	if r.code != 0 {
		t.Fatalf("%q: exit %d\nstdout: %s\nstderr: %s", argv, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("%s is not installed: %v", tool, err)
		}
	}
}

// make runs make in the module root with BIN set to binDir.
func makeIn(t *testing.T, args ...string) string {
	t.Helper()
	need(t, "make", "go")
	return mustRun(t, "", nil, append([]string{"make", "--no-print-directory", "-C", root, "BIN=" + binDir}, args...)...)
}

// programs are the executables make install puts in bin: banger, bangerd,
// the guest agent, and the VMM jail helper where the tree has it.
func programs(t *testing.T) []string {
	p := []string{"banger", "bangerd", "banger-agent"}
	if st, err := os.Stat(filepath.Join(root, "cmd", "banger-jail")); err == nil && st.IsDir() {
		p = append(p, "banger-jail")
	}
	sort.Strings(p)
	return p
}

// manPages lists the pages make man generated into BIN/man, after checking
// that they are plausible (the exact set is tested in internal/cli).
func manPages(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(binDir, "man"))
	if err != nil {
		t.Fatal(err)
	}
	var pages []string
	re := regexp.MustCompile(`^banger(-[a-z]+)*\.1$`)
	for _, e := range ents {
		if !re.MatchString(e.Name()) {
			t.Errorf("man page %s: not banger[-command...].1", e.Name())
		}
		pages = append(pages, e.Name())
	}
	for _, p := range []string{"banger.1", "banger-vm.1", "banger-vm-run.1", "banger-daemon-status.1", "banger-image-build.1"} {
		if !slices.Contains(pages, p) {
			t.Errorf("make man made no %s (made %q)", p, pages)
		}
	}
	return pages
}

// layout is what make install lays out for prefix (relative, without
// the leading slash).
func layout(t *testing.T, prefix string) []string {
	files := []string{
		"etc/banger/config.toml.example",
		prefix + "/lib/systemd/system/bangerd.service",
		prefix + "/lib/tmpfiles.d/banger.conf",
		prefix + "/share/bash-completion/completions/banger",
		prefix + "/share/zsh/vendor-completions/_banger",
		prefix + "/share/fish/vendor_completions.d/banger.fish",
	}
	for _, p := range programs(t) {
		files = append(files, prefix+"/bin/"+p)
	}
	for _, p := range manPages(t) {
		files = append(files, prefix+"/share/man/man1/"+p)
	}
	sort.Strings(files)
	return files
}

// tree lists the files (and links) below dir, and fails on anything else
// but directories.
func tree(t *testing.T, dir string) map[string]os.FileMode {
	t.Helper()
	out := map[string]os.FileMode{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = info.Mode()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys(m map[string]os.FileMode) []string {
	var k []string
	for p := range m {
		k = append(k, p)
	}
	sort.Strings(k)
	return k
}

func TestMakeInstallLayout(t *testing.T) {
	dest := t.TempDir()
	makeIn(t, "install", "DESTDIR="+dest)
	got := tree(t, dest)
	want := layout(t, "usr/local")
	if !slices.Equal(keys(got), want) {
		t.Fatalf("make install DESTDIR=... laid out\n%s\nwant\n%s", strings.Join(keys(got), "\n"), strings.Join(want, "\n"))
	}
	for p, mode := range got {
		wantMode := os.FileMode(0o644)
		if strings.HasPrefix(p, "usr/local/bin/") {
			wantMode = 0o755
		}
		if mode != wantMode {
			t.Errorf("%s: mode %v, want %v", p, mode, wantMode)
		}
	}

	unit := readFile(t, filepath.Join(dest, "usr/local/lib/systemd/system/bangerd.service"))
	for _, want := range []string{"\nExecStart=/usr/local/bin/bangerd\n", "\nExecStartPost=/usr/local/bin/banger daemon status --wait 60s\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("installed unit lacks %q", want)
		}
	}
	if strings.Contains(unit, "/usr/bin/") {
		t.Errorf("installed unit still names /usr/bin/:\n%s", unit)
	}
	comp := map[string]string{
		"usr/local/share/bash-completion/completions/banger":    "__start_banger",
		"usr/local/share/zsh/vendor-completions/_banger":        "#compdef banger",
		"usr/local/share/fish/vendor_completions.d/banger.fish": "complete -c banger",
	}
	for p, want := range comp {
		if !strings.Contains(readFile(t, filepath.Join(dest, p)), want) {
			t.Errorf("%s is not banger's completion (no %q)", p, want)
		}
	}
	if readFile(t, filepath.Join(dest, "etc/banger/config.toml.example")) != readFile(t, "config.toml.example") {
		t.Error("the installed example config differs from packaging/config.toml.example")
	}
	if out := mustRun(t, "", nil, filepath.Join(dest, "usr/local/bin/banger"), "completion", "bash"); !strings.Contains(out, "__start_banger") {
		t.Error("the installed banger does not run")
	}

	// A second install keeps an example that is already there.
	example := filepath.Join(dest, "etc/banger/config.toml.example")
	if err := os.WriteFile(example, []byte("# mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := makeIn(t, "install", "DESTDIR="+dest)
	if got := readFile(t, example); got != "# mine\n" {
		t.Errorf("a second make install replaced the existing example config with %q", got)
	}
	if !strings.Contains(out, "keeping "+example) {
		t.Errorf("make install did not say it kept %s:\n%s", example, out)
	}
}

// systemd-analyze accepts the unit as make install writes it, without a
// single warning (unknown keys are only warnings). The install goes to a
// real prefix so that the ExecStart programs exist, as verify checks them.
func TestSystemdAnalyzeVerify(t *testing.T) {
	need(t, "systemd-analyze")
	prefix := t.TempDir()
	makeIn(t, "install", "PREFIX="+prefix, "SYSCONFDIR="+filepath.Join(prefix, "etc"))
	unit := filepath.Join(prefix, "lib/systemd/system/bangerd.service")
	if !strings.Contains(readFile(t, unit), "ExecStart="+prefix+"/bin/bangerd\n") {
		t.Fatalf("%s does not start %s/bin/bangerd", unit, prefix)
	}
	// verify also looks up the Documentation= man pages: the installed ones.
	env := []string{"MANPATH=" + filepath.Join(prefix, "share/man")}
	r := run(t, "", env, "systemd-analyze", "verify", unit)
	if r.code != 0 || strings.TrimSpace(r.stdout+r.stderr) != "" {
		t.Errorf("systemd-analyze verify %s: exit %d\n%s%s", unit, r.code, r.stdout, r.stderr)
	}
	// The check can fail: a unit with a bad key and a relative command is
	// refused.
	bad := filepath.Join(t.TempDir(), "bangerd.service")
	if err := os.WriteFile(bad, []byte(readFile(t, unit)+"\n[Service]\nKilMode=process\nExecStartPre=bangerd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "", env, "systemd-analyze", "verify", bad); r.code == 0 && strings.TrimSpace(r.stdout+r.stderr) == "" {
		t.Error("systemd-analyze verify accepts a broken unit silently: the check above proves nothing")
	}
}

// unitSettings reads the [Service] settings of the source unit.
func unitSettings(t *testing.T) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(readFile(t, "bangerd.service")))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "["):
			section = l
		case section == "[Service]":
			k, v, _ := strings.Cut(l, "=")
			out[k] = append(out[k], v)
		}
	}
	return out
}

// The settings VMs depend on: only bangerd is killed on stop, no private
// mount namespace or device list, no RuntimeDirectory (removed on stop).
func TestUnitKeepsVMsRunning(t *testing.T) {
	s := unitSettings(t)
	for k, want := range map[string]string{"KillMode": "process", "Type": "simple", "Restart": "on-failure", "StateDirectory": "banger", "ExecStart": "/usr/bin/bangerd"} {
		if got := s[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"RuntimeDirectory", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "DevicePolicy",
		"DeviceAllow", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "ProtectClock", "NoNewPrivileges",
		"RestrictNamespaces", "MemoryDenyWriteExecute", "RestrictSUIDSGID", "SystemCallFilter", "ReadOnlyPaths", "InaccessiblePaths",
		"PrivateNetwork", "User", "DynamicUser"} {
		if v, ok := s[k]; ok {
			t.Errorf("%s=%q would break what bangerd or its VMMs do (see the unit's comments)", k, v)
		}
	}
}

func TestTmpfiles(t *testing.T) {
	def := config.Defaults()
	want := map[string]string{def.RunDir: "0755", filepath.Join(def.RunDir, "vm"): "0750"}
	got := map[string]string{}
	for _, l := range strings.Split(readFile(t, "tmpfiles.d/banger.conf"), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 6 || f[0] != "d" || f[3] != "root" || f[4] != "root" || f[5] != "-" {
			t.Errorf("tmpfiles line %q: want d PATH MODE root root -", l)
			continue
		}
		got[f[1]] = f[2]
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("tmpfiles.d/banger.conf makes %v, want %v", got, want)
	}

	need(t, "systemd-tmpfiles")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "etc/tmpfiles.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/tmpfiles.d/banger.conf"), []byte(readFile(t, "tmpfiles.d/banger.conf")), 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, "", nil, "systemd-tmpfiles", "--create", "--root="+dir, "banger.conf")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("systemd-tmpfiles --create --root: exit %d: %s", r.code, r.stderr)
	}
	for p, mode := range map[string]os.FileMode{"run/banger": 0o755, "run/banger/vm": 0o750} {
		st, err := os.Stat(filepath.Join(dir, p))
		if err != nil || !st.IsDir() || st.Mode().Perm() != mode {
			t.Errorf("systemd-tmpfiles made /%s: %v %v, want a directory %v", p, st, err, mode)
		}
	}
}

// Every key of the example is a real setting, shown with its default, and
// every setting is in the example.
func TestConfigExample(t *testing.T) {
	text := readFile(t, "config.toml.example")
	var uncommented []string
	seen := map[string]bool{}
	keyLine := regexp.MustCompile(`^#([a-z_]+) = (.*)$`)
	for _, l := range strings.Split(text, "\n") {
		if m := keyLine.FindStringSubmatch(l); m != nil {
			if seen[m[1]] {
				t.Errorf("key %s appears twice", m[1])
			}
			seen[m[1]] = true
			uncommented = append(uncommented, m[1]+" = "+m[2])
		}
	}
	file := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, []byte(strings.Join(uncommented, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := config.Load(func(k string) string {
		if k == "BANGER_CONFIG" {
			return file
		}
		return ""
	})
	if err != nil {
		t.Fatalf("the example, uncommented, does not load: %v", err)
	}
	got.File = ""
	want := config.Defaults()
	want.Finish()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the example's values are not the defaults:\n got %+v\nwant %+v", got, want)
	}
	ct := reflect.TypeOf(config.Config{})
	for i := range ct.NumField() {
		k := ct.Field(i).Tag.Get("toml")
		if k != "" && k != "-" && !seen[k] {
			t.Errorf("setting %s is not in packaging/config.toml.example", k)
		}
		delete(seen, k)
	}
	for k := range seen {
		t.Errorf("packaging/config.toml.example has %s, which is no setting", k)
	}
}

func TestDebVersion(t *testing.T) {
	env := []string{"DEB_VERSION_DATE=20260102150405"}
	for in, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"1.2.3":                   "1.2.3",
		"v1.2.3-4-gabc1234":       "1.2.3+git4.abc1234",
		"v1.2.3-4-gabc1234-dirty": "1.2.3+git4.abc1234+dirty",
		"v1.0-rc1":                "1.0~rc1",
		"v1.0-rc1-2-gdeadbee":     "1.0~rc1+git2.deadbee",
		"abc1234":                 "0~git20260102150405.abc1234",
		"845385b":                 "0~git20260102150405.845385b",
		"845385b-dirty":           "0~git20260102150405.845385b+dirty",
		"dev":                     "0~dev",
		"weird_tag":               "0~dev",
	} {
		got := strings.TrimSpace(mustRun(t, "", env, "./deb-version.sh", in))
		if got != want {
			t.Errorf("deb-version.sh %q = %q, want %q", in, got, want)
		}
	}
	// This checkout's own version, from git, is one dpkg accepts.
	need(t, "dpkg", "git")
	v := strings.TrimSpace(mustRun(t, "", nil, "./deb-version.sh"))
	if r := run(t, "", nil, "dpkg", "--validate-version", v); r.code != 0 {
		t.Errorf("deb-version.sh = %q, which dpkg refuses: %s", v, r.stderr)
	}
	if !regexp.MustCompile(`^[0-9]`).MatchString(v) {
		t.Errorf("deb-version.sh = %q", v)
	}
}

func TestMakeDeb(t *testing.T) {
	need(t, "dpkg-deb", "dpkg")
	deb := filepath.Join(t.TempDir(), "banger.deb")
	// gzip: xz takes most of a minute on a busy two-core machine.
	makeIn(t, "deb", "DEB="+deb, "DEB_COMPRESS=gzip")

	// The files: what make install lays out for /usr, owned by root.
	var files []string
	for _, l := range strings.Split(strings.TrimSpace(mustRun(t, "", nil, "dpkg-deb", "-c", deb)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			t.Fatalf("dpkg-deb -c line %q", l)
		}
		if f[1] != "root/root" {
			t.Errorf("%s is owned by %s", f[5], f[1])
		}
		if !strings.HasPrefix(f[0], "d") {
			files = append(files, strings.TrimPrefix(f[5], "./"))
		}
	}
	sort.Strings(files)
	if want := layout(t, "usr"); !slices.Equal(files, want) {
		t.Errorf("dpkg-deb -c lists\n%s\nwant\n%s", strings.Join(files, "\n"), strings.Join(want, "\n"))
	}

	// The control data.
	info := mustRun(t, "", nil, "dpkg-deb", "-I", deb)
	for _, want := range []string{" postinst", " prerm", " postrm", " conffiles", " md5sums", " control"} {
		if !strings.Contains(info, want) {
			t.Errorf("dpkg-deb -I lists no%s:\n%s", want, info)
		}
	}
	field := func(name string) string {
		return strings.TrimSpace(mustRun(t, "", nil, "dpkg-deb", "-f", deb, name))
	}
	arch := strings.TrimSpace(mustRun(t, "", nil, "dpkg", "--print-architecture"))
	for name, want := range map[string]string{"Package": "banger", "Architecture": arch, "Recommends": "nftables, debootstrap"} {
		if got := field(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	// The version comes from git describe (deb-version.sh, tested above).
	if v := field("Version"); !regexp.MustCompile(`^(0~git[0-9]{14}\.[0-9a-f]{7,}|[0-9][A-Za-z0-9.+~]*)$`).MatchString(v) ||
		run(t, "", nil, "dpkg", "--validate-version", v).code != 0 {
		t.Errorf("Version %q", v)
	}
	dep := field("Depends")
	for _, want := range []string{"qemu-system-x86", "e2fsprogs", "iproute2", "util-linux"} {
		if !slices.Contains(strings.Split(strings.ReplaceAll(dep, " ", ""), ","), want) {
			t.Errorf("Depends %q lacks %s", dep, want)
		}
	}
	if !regexp.MustCompile(`^libc6( \(>= [0-9.]+\))?, `).MatchString(dep) {
		t.Errorf("Depends %q: want libc6 first (the binaries use cgo)", dep)
	}
	if field("Maintainer") == "" || field("Installed-Size") == "" {
		t.Error("no Maintainer or Installed-Size")
	}
	ctl := t.TempDir()
	mustRun(t, "", nil, "dpkg-deb", "-e", deb, ctl)
	if got := readFile(t, filepath.Join(ctl, "conffiles")); got != "/etc/banger/config.toml.example\n" {
		t.Errorf("conffiles = %q", got)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		st, err := os.Stat(filepath.Join(ctl, s))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v %v, want mode 0755", s, st, err)
		}
	}
	// The md5sums match the files.
	x := t.TempDir()
	mustRun(t, "", nil, "dpkg-deb", "-x", deb, x)
	if r := run(t, x, nil, "md5sum", "--quiet", "-c", filepath.Join(ctl, "md5sums")); r.code != 0 {
		t.Errorf("md5sums do not match the files: %s%s", r.stdout, r.stderr)
	}
}

// The maintainer scripts run against stubs of every program they call
// (PATH holds only the stubs, so nothing real on this host is touched):
// they create the group, the run directory and enable the unit on a first
// install, start it only where systemd runs, keep the admin's choice on
// upgrade, and stop (never kill VMs) before removal.
func TestMaintainerScripts(t *testing.T) {
	stubs := t.TempDir()
	log := filepath.Join(stubs, "log")
	for _, name := range []string{"getent", "groupadd", "systemd-tmpfiles", "systemctl", "rmdir"} {
		// getent finds no group; systemctl is-enabled says enabled.
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >>%s\n", name, log)
		if name == "getent" {
			script += "exit 2\n"
		}
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	systemd := false
	if st, err := os.Stat("/run/systemd/system"); err == nil && st.IsDir() {
		systemd = true
	}
	env := []string{"PATH=" + stubs}
	script := func(name string, args ...string) (string, string) {
		t.Helper()
		os.Remove(log)
		r := run(t, "", env, append([]string{"/bin/sh", filepath.Join("debian", name)}, args...)...)
		if r.code != 0 {
			t.Fatalf("%s %q: exit %d: %s", name, args, r.code, r.stderr)
		}
		b, _ := os.ReadFile(log)
		return string(b), r.stderr
	}
	has := func(calls, call string) bool { return slices.Contains(strings.Split(calls, "\n"), call) }

	calls, _ := script("postinst", "configure", "")
	for _, want := range []string{"getent group banger", "groupadd --system banger", "systemd-tmpfiles --create banger.conf", "systemctl enable bangerd.service"} {
		if !has(calls, want) {
			t.Errorf("postinst configure (first install) did not run %q:\n%s", want, calls)
		}
	}
	if has(calls, "systemctl start bangerd.service") != systemd {
		t.Errorf("postinst configure: start called %v, systemd running %v:\n%s", has(calls, "systemctl start bangerd.service"), systemd, calls)
	}
	calls, _ = script("postinst", "configure", "0.9")
	if has(calls, "systemctl enable bangerd.service") {
		t.Errorf("postinst configure on upgrade enabled the unit again:\n%s", calls)
	}
	calls, _ = script("prerm", "upgrade", "1.0")
	if has(calls, "systemctl stop bangerd.service") != systemd || has(calls, "systemctl disable bangerd.service") {
		t.Errorf("prerm upgrade (systemd running %v):\n%s", systemd, calls)
	}
	calls, stderr := script("prerm", "remove")
	if !has(calls, "systemctl disable bangerd.service") || has(calls, "systemctl stop bangerd.service") != systemd {
		t.Errorf("prerm remove (systemd running %v):\n%s", systemd, calls)
	}
	if !strings.Contains(stderr, "VMs it started keep running") {
		t.Errorf("prerm remove does not say the VMs keep running: %q", stderr)
	}
	calls, _ = script("postrm", "purge")
	if strings.Contains(calls, "/var/lib/banger") {
		t.Errorf("postrm purge touched the state directory:\n%s", calls)
	}
	if !strings.Contains(readFile(t, "debian/postrm"), "kept /var/lib/banger") {
		t.Error("postrm does not say it keeps /var/lib/banger")
	}
	if strings.Contains(readFile(t, "debian/postrm"), "rm -") {
		t.Error("postrm removes files itself")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
