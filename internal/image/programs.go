package image

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// Extra packages are unpacked without their maintainer scripts, so nothing
// runs ldconfig, update-alternatives or the package's own set-up. The
// builder therefore checks that the programs a requested package installs
// can at least start in the finished tree: their interpreter (ELF or #!)
// exists and every shared library they load, transitively, is found where
// the guest's dynamic loader looks for it.

// programDirs are where a package's programs are looked for.
var programDirs = []string{"/usr/bin", "/bin", "/usr/sbin", "/sbin"}

// loaderDirs are the directories glibc's loader searches on Debian amd64
// when there is no /etc/ld.so.cache, as in a tree where ldconfig never ran
// (directories added by /etc/ld.so.conf.d only count through that cache).
var loaderDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"}

// searchPath is where `#!/usr/bin/env prog` finds prog (busybox env's PATH
// under banger's init and SSH sessions).
var searchPath = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// debListingLine matches a `dpkg-deb -c` line: mode, owner, size, date,
// time, ./path and, for links, " -> target".
var debListingLine = regexp.MustCompile(`^(\S)\S*\s+\S+\s+\d+\s+\S+\s+\S+\s+\./(.*)$`)

// packagePrograms lists the programs (files and links in programDirs) of a
// .deb, as guest paths.
func packagePrograms(ctx context.Context, r Runner, debPath string) ([]string, error) {
	out, err := r.Run(ctx, "dpkg-deb", "-c", debPath)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", filepath.Base(debPath), err)
	}
	var progs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := debListingLine.FindStringSubmatch(sc.Text())
		if m == nil || m[1] == "d" {
			continue
		}
		p, _, _ := strings.Cut(m[2], " -> ")
		p = "/" + p
		if slices.Contains(programDirs, path.Dir(p)) {
			progs = append(progs, p)
		}
	}
	return progs, sc.Err()
}

// programError says why a requested package's program cannot start.
type programError struct {
	pkg, program string
	reason       string
}

func (e *programError) Error() string {
	return fmt.Sprintf("package %s: %s cannot start: %s", e.pkg, e.program, e.reason)
}

// programChecker checks programs inside one tree, remembering the
// libraries already found.
type programChecker struct {
	tree string
	libs map[string]string // class, machine, library and search dirs -> "" when found, else why not
}

func newProgramChecker(tree string) *programChecker {
	return &programChecker{tree: tree, libs: map[string]string{}}
}

// check reports why the guest could not execute prog (a guest path), or "".
// Files that are neither ELF nor #! scripts are left alone: the kernel
// would refuse them and a shell would run them with /bin/sh.
func (c *programChecker) check(prog string) (string, error) {
	return c.checkDepth(prog, 0)
}

func (c *programChecker) checkDepth(prog string, depth int) (string, error) {
	if depth > 4 {
		return prog + " is a script for a script for ... (more than 4 levels)", nil
	}
	host, guest, err := resolveInTree(c.tree, prog)
	if err != nil {
		return fmt.Sprintf("%s does not resolve inside the image (%v)", prog, err), nil
	}
	st, err := os.Stat(host)
	if err != nil {
		return "", err
	}
	if !st.Mode().IsRegular() {
		return "", nil // a directory or device named like a program: not ours to judge
	}
	if st.Mode()&0o111 == 0 {
		return fmt.Sprintf("%s is not executable", guest), nil
	}
	head, err := readHead(host, 256)
	if err != nil {
		return "", err
	}
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return c.checkELF(host, guest)
	case bytes.HasPrefix(head, []byte("#!")):
		line, _, _ := bytes.Cut(head[2:], []byte("\n"))
		f := strings.Fields(string(line))
		if len(f) == 0 {
			return fmt.Sprintf("%s has an empty #! line", guest), nil
		}
		interp := f[0]
		if why, err := c.checkDepth(interp, depth+1); why != "" || err != nil {
			return scriptNeeds(guest, interp, why), err
		}
		if path.Base(interp) == "env" && len(f) > 1 && !strings.HasPrefix(f[1], "-") {
			found := ""
			for _, dir := range searchPath {
				if _, _, err := resolveInTree(c.tree, path.Join(dir, f[1])); err == nil {
					found = path.Join(dir, f[1])
					break
				}
			}
			if found == "" {
				return fmt.Sprintf("%s is a script for %s, which is not in the image", guest, f[1]), nil
			}
			if why, err := c.checkDepth(found, depth+1); why != "" || err != nil {
				return scriptNeeds(guest, found, why), err
			}
		}
	}
	return "", nil
}

func scriptNeeds(script, interp, why string) string {
	if strings.HasPrefix(why, interp+" does not resolve") {
		return fmt.Sprintf("%s is a script for %s, which is not in the image", script, interp)
	}
	return fmt.Sprintf("%s is a script for %s: %s", script, interp, why)
}

// checkELF checks an executable's loader and, transitively, its libraries.
func (c *programChecker) checkELF(host, guest string) (string, error) {
	f, err := elf.Open(host)
	if err != nil {
		return fmt.Sprintf("%s is not a readable ELF file (%v)", guest, err), nil
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Sprintf("%s: reading its loader name: %v", guest, err), nil
		}
		interp := strings.TrimRight(string(b), "\x00")
		if _, _, err := resolveInTree(c.tree, interp); err != nil {
			return fmt.Sprintf("%s needs the loader %s, which is not in the image", guest, interp), nil
		}
	}
	return c.checkLibraries(f, guest)
}

// checkLibraries looks up obj's DT_NEEDED libraries as the loader would
// (its DT_RPATH unless it has a DT_RUNPATH, then loaderDirs) and checks
// theirs in turn.
func (c *programChecker) checkLibraries(obj *elf.File, guest string) (string, error) {
	needed, err := obj.ImportedLibraries()
	if err != nil {
		return fmt.Sprintf("%s: reading its libraries: %v", guest, err), nil
	}
	var dirs []string
	runpath, _ := obj.DynString(elf.DT_RUNPATH)
	if len(runpath) == 0 {
		runpath, _ = obj.DynString(elf.DT_RPATH)
	}
	for _, rp := range runpath {
		for _, d := range strings.Split(rp, ":") {
			d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", "$ORIGIN"), "$ORIGIN", path.Dir(guest))
			if path.IsAbs(d) {
				dirs = append(dirs, d)
			}
		}
	}
	dirs = append(dirs, loaderDirs...)
	for _, lib := range needed {
		key := fmt.Sprintf("%v %v %s %s", obj.Class, obj.Machine, lib, strings.Join(dirs, ":"))
		why, done := c.libs[key]
		if !done {
			c.libs[key] = "" // a library cycle ends here
			why, err = c.findLibrary(obj, lib, dirs)
			if err != nil {
				return "", err
			}
			c.libs[key] = why
		}
		if why != "" {
			return fmt.Sprintf("%s needs %s", guest, why), nil
		}
	}
	return "", nil
}

// findLibrary finds lib for obj and checks its own libraries; it returns
// why the loader would fail, or "".
func (c *programChecker) findLibrary(obj *elf.File, lib string, dirs []string) (string, error) {
	candidates := dirs
	name := lib
	if strings.Contains(lib, "/") {
		candidates, name = []string{path.Dir(lib)}, path.Base(lib)
	}
	for _, dir := range candidates {
		host, guest, err := resolveInTree(c.tree, path.Join(dir, name))
		if err != nil {
			continue
		}
		f, err := elf.Open(host)
		if err != nil {
			continue // not an ELF file: the loader skips it too
		}
		if f.Class != obj.Class || f.Machine != obj.Machine {
			f.Close()
			continue
		}
		why, err := c.checkLibraries(f, guest)
		f.Close()
		if why != "" || err != nil {
			return fmt.Sprintf("%s (%s)", lib, why), err
		}
		return "", nil
	}
	return fmt.Sprintf("%s, which is in none of %s", lib, strings.Join(candidates, ", ")), nil
}

// resolveInTree follows guest path p through symlinks as the guest would,
// with tree as its root: absolute link targets and ".." stay inside tree.
// It returns the host path and the guest path of what p names.
func resolveInTree(tree, p string) (host, guest string, err error) {
	const maxLinks = 40 // the kernel's limit
	links := 0
	resolved := "/"
	rest := strings.Split(p, "/")
	for len(rest) > 0 {
		part := rest[0]
		rest = rest[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			resolved = path.Dir(resolved)
			continue
		}
		next := path.Join(resolved, part)
		st, err := os.Lstat(filepath.Join(tree, filepath.FromSlash(next)))
		if err != nil {
			return "", "", fmt.Errorf("%s: %w", next, errors.Unwrap(err))
		}
		if st.Mode()&fs.ModeSymlink == 0 {
			if len(rest) > 0 && !st.IsDir() {
				return "", "", fmt.Errorf("%s: not a directory", next)
			}
			resolved = next
			continue
		}
		if links++; links > maxLinks {
			return "", "", fmt.Errorf("%s: too many levels of symbolic links", p)
		}
		target, err := os.Readlink(filepath.Join(tree, filepath.FromSlash(next)))
		if err != nil {
			return "", "", err
		}
		if path.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return filepath.Join(tree, filepath.FromSlash(resolved)), resolved, nil
}

// checkPackagePrograms checks the programs of each requested package (and
// the program named like the package, which may come from a dependency:
// /usr/bin/python3 is python3-minimal's) and returns every failure.
func checkPackagePrograms(tree string, programs map[string][]string) error {
	c := newProgramChecker(tree)
	var errs []error
	pkgs := make([]string, 0, len(programs))
	for p := range programs {
		pkgs = append(pkgs, p)
	}
	slices.Sort(pkgs)
	for _, pkg := range pkgs {
		progs := slices.Clone(programs[pkg])
		for _, dir := range programDirs {
			p := path.Join(dir, pkg)
			if _, err := os.Lstat(filepath.Join(tree, filepath.FromSlash(p))); err == nil && !slices.Contains(progs, p) {
				progs = append(progs, p)
			}
		}
		for _, prog := range progs {
			why, err := c.check(prog)
			if err != nil {
				return fmt.Errorf("checking %s of package %s: %w", prog, pkg, err)
			}
			if why != "" {
				errs = append(errs, &programError{pkg: pkg, program: prog, reason: why})
			}
		}
	}
	return errors.Join(errs...)
}
