package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// hostTree makes a tree holding the host's /bin/ls with its loader and
// libraries copied from the host (Debian amd64 paths), the loader reached
// through an absolute symlink as Debian's libc6 ships it.
func hostTree(t *testing.T) string {
	t.Helper()
	tree := t.TempDir()
	copyIn := func(src, guest string, mode os.FileMode) {
		t.Helper()
		dst := filepath.Join(tree, guest)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := copyFile(src, dst, mode); err != nil {
			t.Skipf("host lacks what the test copies (%v)", err)
		}
	}
	const lib = "/lib/x86_64-linux-gnu/"
	copyIn("/bin/ls", "usr/bin/ls", 0o755)
	for _, l := range []string{"ld-linux-x86-64.so.2", "libc.so.6", "libselinux.so.1", "libpcre2-8.so.0"} {
		copyIn(lib+l, lib+l, 0o755)
	}
	if err := os.MkdirAll(filepath.Join(tree, "lib64"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(lib+"ld-linux-x86-64.so.2", filepath.Join(tree, "lib64/ld-linux-x86-64.so.2")); err != nil {
		t.Fatal(err)
	}
	return tree
}

func writeProgram(t *testing.T, tree, guest, content string) {
	t.Helper()
	p := filepath.Join(tree, guest)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

func link(t *testing.T, tree, guest, target string) {
	t.Helper()
	if err := os.Symlink(target, filepath.Join(tree, guest)); err != nil {
		t.Fatal(err)
	}
}

func TestCheckPackagePrograms(t *testing.T) {
	tree := hostTree(t)
	writeProgram(t, tree, "usr/bin/ls-script", "#!/usr/bin/ls -l\n")
	writeProgram(t, tree, "usr/bin/env", "#!/usr/bin/ls\n") // stands in for busybox's env
	writeProgram(t, tree, "usr/bin/env-script", "#!/usr/bin/env lsx\n")
	link(t, tree, "usr/bin/lsx", "ls")
	writeProgram(t, tree, "usr/share/data.txt", "not a program\n")
	ok := map[string][]string{"coreutils": {"/usr/bin/ls", "/usr/bin/ls-script", "/usr/bin/env-script", "/usr/bin/lsx"}}
	if err := checkPackagePrograms(tree, ok); err != nil {
		t.Fatalf("a complete tree is refused: %v", err)
	}

	writeProgram(t, tree, "usr/bin/py", "#!/usr/bin/python9\nprint(1)\n")
	writeProgram(t, tree, "usr/bin/env-py", "#!/usr/bin/env python9\n")
	link(t, tree, "usr/bin/dangling", "/opt/nothing")
	// ".." cannot leave the tree: this names the tree's /bin/ls, absent,
	// not the host's.
	link(t, tree, "usr/bin/escape", "../../../../../../bin/ls")
	cases := map[string]string{
		"/usr/bin/py":       "/usr/bin/py cannot start: /usr/bin/py is a script for /usr/bin/python9, which is not in the image",
		"/usr/bin/env-py":   "/usr/bin/env-py cannot start: /usr/bin/env-py is a script for python9, which is not in the image",
		"/usr/bin/dangling": "/usr/bin/dangling cannot start: /usr/bin/dangling does not resolve inside the image (/opt: no such file or directory)",
		"/usr/bin/escape":   "/usr/bin/escape cannot start: /usr/bin/escape does not resolve inside the image (/bin: no such file or directory)",
	}
	for prog, want := range cases {
		err := checkPackagePrograms(tree, map[string][]string{"pkg": {prog}})
		if err == nil || err.Error() != "package pkg: "+want {
			t.Errorf("%s: err = %v\nwant package pkg: %s", prog, err, want)
		}
	}

	// A library's own library missing: named, with the library that needs it.
	if err := os.Remove(filepath.Join(tree, "lib/x86_64-linux-gnu/libpcre2-8.so.0")); err != nil {
		t.Fatal(err)
	}
	err := checkPackagePrograms(tree, map[string][]string{"coreutils": {"/usr/bin/lsx"}})
	var pe *programError
	if !errors.As(err, &pe) || pe.pkg != "coreutils" || pe.program != "/usr/bin/lsx" {
		t.Fatalf("err = %v, want a programError for /usr/bin/lsx", err)
	}
	if want := "/usr/bin/ls needs libselinux.so.1 (/lib/x86_64-linux-gnu/libselinux.so.1 needs libpcre2-8.so.0, which is in none of /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib, /usr/lib)"; pe.reason != want {
		t.Errorf("reason %q\nwant   %q", pe.reason, want)
	}
	// The loader missing.
	if err := os.Remove(filepath.Join(tree, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")); err != nil {
		t.Fatal(err)
	}
	err = checkPackagePrograms(tree, map[string][]string{"coreutils": {"/usr/bin/ls"}})
	if err == nil || !strings.Contains(err.Error(), "/usr/bin/ls needs the loader /lib64/ld-linux-x86-64.so.2, which is not in the image") {
		t.Errorf("without the loader: err = %v", err)
	}
}

// TestCheckPackageProgramsNamedProgram: the program named like the package
// is checked even when a dependency ships it (python3's /usr/bin/python3
// comes from python3-minimal).
func TestCheckPackageProgramsNamedProgram(t *testing.T) {
	tree := hostTree(t)
	writeProgram(t, tree, "usr/bin/tool", "#!/usr/bin/missing\n")
	err := checkPackagePrograms(tree, map[string][]string{"tool": nil})
	if err == nil || !strings.Contains(err.Error(), "package tool: /usr/bin/tool cannot start") {
		t.Errorf("err = %v, want /usr/bin/tool checked", err)
	}
}

func TestResolveInTree(t *testing.T) {
	tree := t.TempDir()
	writeProgram(t, tree, "usr/lib/x/real", "x")
	link(t, tree, "usr/lib/x/rel", "real")
	if err := os.MkdirAll(filepath.Join(tree, "lib64"), 0o755); err != nil {
		t.Fatal(err)
	}
	link(t, tree, "lib64/abs", "/usr/lib/x/rel")
	link(t, tree, "lib", "usr/lib") // a merged /usr
	link(t, tree, "loop", "loop")
	for p, want := range map[string]string{
		"/lib64/abs":             "/usr/lib/x/real",
		"/lib/x/rel":             "/usr/lib/x/real",
		"/lib/../lib/./x//real":  "/usr/lib/x/real",
		"/../../usr/lib/x/real":  "/usr/lib/x/real",
		"/usr/lib/x/../x/rel":    "/usr/lib/x/real",
		"/usr/lib/x/real/../rel": "",
		"/loop":                  "",
		"/nothing":               "",
	} {
		host, guest, err := resolveInTree(tree, p)
		if want == "" {
			if err == nil {
				t.Errorf("resolveInTree(%q) = %q, want an error", p, guest)
			}
			continue
		}
		if err != nil || guest != want || host != filepath.Join(tree, want) {
			t.Errorf("resolveInTree(%q) = %q %q %v, want %q", p, host, guest, err, want)
		}
	}
}

func TestPackagePrograms(t *testing.T) {
	listing := "drwxr-xr-x root/root         0 2023-04-09 10:22 ./usr/bin/\n" +
		"-rwxr-xr-x root/root      7810 2023-04-09 10:22 ./usr/bin/py3clean\n" +
		"lrwxrwxrwx root/root         0 2023-04-09 10:22 ./usr/bin/python3 -> python3.11\n" +
		"-rwxr-xr-x root/root      7810 2023-04-09 10:22 ./usr/bin/with space\n" +
		"-rwxr-xr-x root/root      7810 2023-04-09 10:22 ./usr/lib/python3/x.py\n" +
		"-rwxr-xr-x root/root      7810 2023-04-09 10:22 ./usr/sbin/tool\n" +
		"-rwxr-xr-x root/root      7810 2023-04-09 10:22 ./usr/bin/sub/deeper\n"
	got, err := packagePrograms(context.Background(), listingRunner(listing), "x.deb")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr/bin/py3clean", "/usr/bin/python3", "/usr/bin/with space", "/usr/sbin/tool"}; !slices.Equal(got, want) {
		t.Errorf("programs %q, want %q", got, want)
	}
}

type listingRunner string

func (l listingRunner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	if name != "dpkg-deb" || !slices.Equal(args, []string{"-c", "x.deb"}) {
		return nil, errors.New("unexpected command")
	}
	return []byte(l), nil
}
