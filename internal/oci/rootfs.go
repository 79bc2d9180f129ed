package oci

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/image"
)

// Runner runs an external command to completion and returns its stdout.
// system.ExecRunner satisfies it.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// GuestDir is where the guest side lives in the root filesystem.
const GuestDir = "/.banger"

// InitPath is banger's init for container images.
const InitPath = GuestDir + "/init"

// RunHelper runs a command as the image's config says (ENV, WORKDIR, USER;
// ENTRYPOINT + CMD when given none): the engine prefixes guest commands
// with it, e.g. `/.banger/run -- python3 -V`.
const RunHelper = GuestDir + "/run"

// BootArgs are the kernel arguments an image made here needs, with the
// default kernel and initramfs (drivers add console=, reboot=, panic=, ip=).
const BootArgs = image.DefaultBootArgs + " " + image.InitArg + "=" + InitPath

// MetadataFile is the name of the metadata written next to the rootfs.
const MetadataFile = "oci-image.json"

// BuildOptions configure BuildRootfs.
type BuildOptions struct {
	Runner Runner // required
	// DebCache keeps the guest side's .debs between builds (required).
	DebCache string
	// Scratch is a directory for temporary files (default: the output's
	// directory); a private subdirectory is made and removed.
	Scratch  string
	Progress func(step string)
	// Agent is banger's guest agent (cmd/banger-agent, static), installed
	// as /.banger/agent and run by /.banger/init. "": none, and VMs of the
	// image cannot be snapshotted or forked (clones need it).
	Agent string
}

// Metadata describes a built image: where it came from, what it holds and
// how to run it. It is written as JSON next to the rootfs and is what the
// engine stores and `image show` prints.
type Metadata struct {
	Source       string    `json:"source"`
	Digest       string    `json:"digest"`
	ConfigDigest string    `json:"config_digest"`
	Platform     string    `json:"platform"`
	Layers       []Layer   `json:"layers"`
	Size         int64     `json:"size"`          // sum of the layer blobs
	UnpackedSize int64     `json:"unpacked_size"` // the image's files, before the guest side
	RootfsSize   int64     `json:"rootfs_size"`   // of the ext4 file
	Config       Config    `json:"config"`
	BootArgs     string    `json:"boot_args"`
	Rootfs       string    `json:"rootfs"`
	Created      time.Time `json:"created"`
	Notes        []string  `json:"notes,omitempty"`
}

// ReadMetadata reads the metadata BuildRootfs wrote into dir.
func ReadMetadata(dir string) (*Metadata, error) {
	data, err := os.ReadFile(filepath.Join(dir, MetadataFile))
	if err != nil {
		return nil, err
	}
	var m Metadata
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, MetadataFile), err)
	}
	return &m, nil
}

// BuildRootfs adds banger's guest side to unpackDir (an image Unpack
// made), then writes it as an ext4 filesystem to out, and the Metadata as
// JSON next to it. It needs root (the tree's owners are kept) and the
// Debian archive, or the guest packages in opts.DebCache. On failure out
// and the metadata are removed; unpackDir is the caller's.
func BuildRootfs(ctx context.Context, img *Image, unpackDir, out string, opts BuildOptions) (*Metadata, error) {
	return buildRootfsWith(ctx, img, unpackDir, out, opts, nil)
}

// buildRootfsWith is BuildRootfs with the guest side prepared already
// (nil: prepared here, after the checks).
func buildRootfsWith(ctx context.Context, img *Image, unpackDir, out string, opts BuildOptions, prepared *preparedGuest) (*Metadata, error) {
	m, err := buildRootfs(ctx, img, unpackDir, out, opts, prepared)
	if err != nil {
		os.Remove(out)
		os.Remove(filepath.Join(filepath.Dir(out), MetadataFile))
		return nil, fmt.Errorf("building rootfs of %s: %w", img.Source, err)
	}
	return m, nil
}

// preparedGuest is a /.banger tree built in a scratch directory, to be
// moved into an image's tree.
type preparedGuest struct {
	guest   *guestSide
	scratch string // removed by cleanup
	pkgs    string // the unpacked guest packages
	dir     string // what becomes /.banger
}

func (p *preparedGuest) cleanup() {
	if p != nil {
		os.RemoveAll(p.scratch)
	}
}

// scratchDir makes the private scratch directory of a build.
func scratchDir(opts BuildOptions, out string) (string, error) {
	parent := opts.Scratch
	if parent == "" {
		parent = filepath.Dir(out)
	}
	return os.MkdirTemp(parent, ".oci-build-")
}

// prepareGuest resolves the guest packages (unless guest is given),
// unpacks them and builds the image-independent part of /.banger in a new
// scratch directory. It does not depend on the image, so Convert runs it
// while the layers are unpacked.
func prepareGuest(ctx context.Context, opts BuildOptions, out string, guest *guestSide) (*preparedGuest, error) {
	if opts.Runner == nil || opts.DebCache == "" {
		return nil, errors.New("no runner or package cache")
	}
	scratch, err := scratchDir(opts, out)
	if err != nil {
		return nil, err
	}
	p := &preparedGuest{scratch: scratch, pkgs: filepath.Join(scratch, "pkgs"), dir: filepath.Join(scratch, "guest")}
	if guest == nil {
		if guest, err = resolveGuest(ctx, opts.Runner, scratch, opts.DebCache); err != nil {
			p.cleanup()
			return nil, err
		}
	}
	p.guest = guest
	for _, d := range guest.debs {
		if err := image.UnpackDeb(ctx, opts.Runner, d.Path, p.pkgs); err != nil {
			p.cleanup()
			return nil, err
		}
	}
	if err := installGuestSide(ctx, opts.Runner, p.pkgs, p.dir, opts.Agent); err != nil {
		p.cleanup()
		return nil, fmt.Errorf("adding guest side: %w", err)
	}
	return p, nil
}

func buildRootfs(ctx context.Context, img *Image, unpackDir, out string, opts BuildOptions, prepared *preparedGuest) (*Metadata, error) {
	if opts.Runner == nil || opts.DebCache == "" {
		return nil, errors.New("no runner or package cache")
	}
	if euid() != 0 {
		return nil, errors.New("needs root (the tree's owners are kept)")
	}
	step := func(s string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if opts.Progress != nil {
			opts.Progress(s)
		}
		return nil
	}
	if _, err := os.Lstat(filepath.Join(unpackDir, GuestDir)); err == nil {
		return nil, fmt.Errorf("the image has its own %s, which banger needs for its guest side", GuestDir)
	}
	imageBytes, _, err := treeUsage(unpackDir)
	if err != nil {
		return nil, fmt.Errorf("sizing image tree: %w", err)
	}
	if prepared == nil {
		if err := step("fetching guest packages"); err != nil {
			return nil, err
		}
		if prepared, err = prepareGuest(ctx, opts, out, nil); err != nil {
			return nil, err
		}
		defer prepared.cleanup()
	}

	if err := step("adding guest side"); err != nil {
		return nil, err
	}
	var notes []string
	gd := filepath.Join(unpackDir, GuestDir)
	if err := os.Rename(prepared.dir, gd); err != nil {
		// Another filesystem: build it again in place.
		if err := installGuestSide(ctx, opts.Runner, prepared.pkgs, gd, opts.Agent); err != nil {
			return nil, fmt.Errorf("adding guest side: %w", err)
		}
	}
	script, skipped := imageScript(img)
	for _, k := range skipped {
		notes = append(notes, fmt.Sprintf("ENV %s is not a shell name and is not applied", k))
	}
	if err := writeFile(filepath.Join(gd, "image.sh"), script, 0o644); err != nil {
		return nil, err
	}
	baked, err := removeBakedHostKeys(unpackDir)
	if err != nil {
		return nil, fmt.Errorf("removing the image's SSH host keys: %w", err)
	}
	if len(baked) > 0 {
		notes = append(notes, "removed the image's "+strings.Join(baked, ", ")+": each VM makes its own host key")
	}
	made, err := ensureGuestPaths(unpackDir)
	if err != nil {
		return nil, err
	}
	if len(made) > 0 {
		notes = append(notes, "created missing "+strings.Join(made, ", "))
	}

	if err := step("making ext4"); err != nil {
		return nil, err
	}
	if err := image.MakeExt4(ctx, opts.Runner, unpackDir, out); err != nil {
		return nil, err
	}
	st, err := os.Stat(out)
	if err != nil {
		return nil, err
	}
	m := newMetadata(img, out, imageBytes, st.Size(), notes)
	if err := writeMetadata(m); err != nil {
		return nil, err
	}
	return m, nil
}

// guestPaths are what a booted image needs to exist: mount points, and the
// directories of the files the daemon writes per VM. Made only when
// missing (and never through a symlink), root-owned.
var guestPaths = []struct {
	path string
	mode fs.FileMode
}{
	{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"run", 0o755},
	{"tmp", fs.ModeSticky | 0o777}, {"work", 0o755}, {"etc", 0o755},
	{"root", 0o700}, {"root/.ssh", 0o700},
}

func ensureGuestPaths(tree string) ([]string, error) {
	var made []string
	for _, p := range guestPaths {
		parent := filepath.Join(tree, filepath.Dir(p.path))
		if st, err := os.Lstat(parent); err != nil || !st.IsDir() {
			continue // e.g. /root is a symlink: the daemon makes what it needs
		}
		dst := filepath.Join(tree, p.path)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.Mkdir(dst, 0o700); err != nil {
			return nil, err
		}
		if err := os.Chmod(dst, p.mode); err != nil {
			return nil, err
		}
		made = append(made, "/"+p.path)
	}
	return made, nil
}

// installGuestSide builds /.banger from the unpacked guest packages in pkgs.
func installGuestSide(ctx context.Context, r Runner, pkgs, gd, agent string) error {
	for _, d := range []string{"", "bin", "lib", "libexec"} {
		if err := os.Mkdir(filepath.Join(gd, d), 0o755); err != nil {
			return err
		}
		if err := os.Chmod(filepath.Join(gd, d), 0o755); err != nil {
			return err
		}
	}
	// busybox and its applets (relative links, so they work both in the
	// guest and from the host).
	bb := filepath.Join(gd, "bin", "busybox")
	if err := copyResolved(pkgs, "bin/busybox", bb, 0o755); err != nil {
		return err
	}
	list, err := r.Run(ctx, bb, "--list")
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	applets := strings.Fields(string(list))
	if len(applets) < 50 {
		return fmt.Errorf("busybox lists only %d applets", len(applets))
	}
	for _, a := range applets {
		if a == "busybox" || a == "." || a == ".." || strings.Contains(a, "/") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(gd, "bin", a)); err != nil {
			return err
		}
	}
	// dropbear, dropbearkey and sftp-server with their libraries and loader.
	progs := map[string]string{
		"dropbear":    "usr/sbin/dropbear",
		"dropbearkey": "usr/bin/dropbearkey",
		"sftp-server": "usr/lib/openssh/sftp-server",
	}
	var elfs []string
	for name, src := range progs {
		dst := filepath.Join(gd, "libexec", name)
		if err := copyResolved(pkgs, src, dst, 0o755); err != nil {
			return err
		}
		elfs = append(elfs, dst)
	}
	if err := patchSFTPPath(filepath.Join(gd, "libexec", "dropbear")); err != nil {
		return err
	}
	if err := copyLibraries(pkgs, filepath.Join(gd, "lib"), elfs); err != nil {
		return err
	}
	// The programs' interpreter becomes /.banger/ld.so, so that they run
	// when executed directly (dropbear re-executes itself per connection),
	// with LD_LIBRARY_PATH=/.banger/lib from their wrappers.
	if err := os.Symlink("lib/ld-linux-x86-64.so.2", filepath.Join(gd, "ld.so")); err != nil {
		return err
	}
	for _, e := range elfs {
		if err := patchInterp(e, GuestDir+"/ld.so"); err != nil {
			return fmt.Errorf("%s: %w", filepath.Base(e), err)
		}
	}
	// banger's scripts.
	files := ociGuestFiles()
	err = fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == "." {
			return err
		}
		dst := filepath.Join(gd, filepath.FromSlash(p))
		if d.IsDir() {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
			return os.Chmod(dst, 0o755)
		}
		data, err := fs.ReadFile(files, p)
		if err != nil {
			return err
		}
		return writeFile(dst, data, 0o755)
	})
	if err != nil {
		return err
	}
	if agent != "" {
		if err := image.InstallAgent(agent, filepath.Join(gd, "agent")); err != nil {
			return err
		}
	}
	setup, err := guestSetupNetworkPart()
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(gd, "guest-setup"), setup, 0o755)
}

// guestSetupNetworkPart is banger's guest-setup up to its SSH host key
// part: /.banger/init runs dropbear its own way, and the image may have an
// sshd that guest-setup would otherwise pick.
func guestSetupNetworkPart() ([]byte, error) {
	s := image.GuestSetupScript()
	const marker = "\n# SSH host keys"
	i := bytes.Index(s, []byte(marker))
	if i < 0 {
		return nil, errors.New("guest-setup has no SSH host key part to leave out")
	}
	out := append([]byte(nil), s[:i+1]...)
	out = append(out, "exit 0\n"...)
	// Run by /.banger's own shell: the image may have no /bin/sh at all.
	if rest, ok := bytes.CutPrefix(out, []byte("#!/bin/sh\n")); ok {
		out = append([]byte("#!"+GuestDir+"/bin/sh\n"), rest...)
	}
	return out, nil
}

// patchSFTPPath points dropbear's built-in sftp-server path at /.banger's:
// both are 20 bytes, so the string is replaced in place.
func patchSFTPPath(file string) error {
	const from, to = "/usr/lib/sftp-server\x00", GuestDir + "/sftp-server\x00"
	if len(from) != len(to) {
		panic("sftp-server paths differ in length")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	if n := bytes.Count(data, []byte(from)); n != 1 {
		return fmt.Errorf("dropbear holds %q %d times, want once", strings.TrimSuffix(from, "\x00"), n)
	}
	return writeFile(file, bytes.Replace(data, []byte(from), []byte(to), 1), 0o755)
}

// patchInterp rewrites an ELF's PT_INTERP in place; the new path must fit
// in the old one's space.
func patchInterp(file, interp string) error {
	f, err := elf.Open(file)
	if err != nil {
		return err
	}
	var off, size uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			off, size = p.Off, p.Filesz
		}
	}
	f.Close()
	if size == 0 {
		return errors.New("no ELF interpreter to rewrite")
	}
	if uint64(len(interp))+1 > size {
		return fmt.Errorf("interpreter %s does not fit in %d bytes", interp, size)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	field := data[off : off+size]
	clear(field)
	copy(field, interp)
	return writeFile(file, data, 0o755)
}

// libDirs are where Debian packages put x86-64 libraries and the loader.
var libDirs = []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"}

// copyLibraries copies the shared libraries elfs need, transitively, and
// their dynamic loader from pkgs into lib.
func copyLibraries(pkgs, lib string, elfs []string) error {
	need := map[string]bool{}
	queue := append([]string(nil), elfs...)
	interp := ""
	for len(queue) > 0 {
		f, err := elf.Open(queue[0])
		if err != nil {
			return fmt.Errorf("reading %s: %w", filepath.Base(queue[0]), err)
		}
		queue = queue[1:]
		libs, err := f.ImportedLibraries()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP && interp == "" {
				b, _ := io.ReadAll(p.Open())
				interp = strings.TrimRight(string(b), "\x00")
			}
		}
		f.Close()
		if err != nil {
			return err
		}
		for _, l := range libs {
			if need[l] {
				continue
			}
			need[l] = true
			dst := filepath.Join(lib, l)
			if err := copyLib(pkgs, l, dst); err != nil {
				return err
			}
			queue = append(queue, dst)
		}
	}
	if path.Base(interp) != "ld-linux-x86-64.so.2" {
		return fmt.Errorf("unexpected dynamic loader %q", interp)
	}
	if need[path.Base(interp)] {
		return os.Chmod(filepath.Join(lib, path.Base(interp)), 0o755)
	}
	return copyLib(pkgs, path.Base(interp), filepath.Join(lib, path.Base(interp)), 0o755)
}

func copyLib(pkgs, name, dst string, mode ...fs.FileMode) error {
	m := fs.FileMode(0o644)
	if len(mode) > 0 {
		m = mode[0]
	}
	for _, d := range libDirs {
		if err := copyResolved(pkgs, path.Join(d, name), dst, m); err == nil {
			return nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return fmt.Errorf("library %s: %w in the guest packages", name, fs.ErrNotExist)
}

// copyResolved copies the file rel of tree root to dst, following symlinks
// as the guest would (absolute targets from root), never leaving root.
func copyResolved(root, rel, dst string, mode fs.FileMode) error {
	for range 16 {
		p := filepath.Join(root, filepath.FromSlash(rel))
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if !path.IsAbs(t) {
				t = path.Join(path.Dir(rel), t)
			}
			rel = strings.TrimPrefix(path.Clean("/"+t), "/")
			continue
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", rel)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return writeFile(dst, data, mode)
	}
	return fmt.Errorf("%s: too many symlinks", rel)
}

// writeFile writes a root-owned file with exactly mode (no umask).
func writeFile(p string, data []byte, mode fs.FileMode) error {
	if err := os.WriteFile(p, data, mode); err != nil {
		return err
	}
	if err := os.Chown(p, 0, 0); err != nil {
		return err
	}
	return os.Chmod(p, mode)
}

// writeAtomic writes a file through a temporary file, fsync and rename.
func writeAtomic(p string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(p))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// defaultPath is the PATH container runtimes give an image whose ENV has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageScript renders /.banger/image.sh, which /.banger/run sources: the
// image's ENV exported, its WORKDIR and USER, and its ENTRYPOINT + CMD as
// the positional parameters when run was given no command. It returns the
// ENV names it could not export.
func imageScript(img *Image) ([]byte, []string) {
	var b bytes.Buffer
	var skipped []string
	// Not the source reference: the same image pulled under another name
	// makes the same bytes (the rootfs cache relies on it).
	fmt.Fprintf(&b, "# Generated by banger from the config of image %s; sourced by %s.\n", img.Digest, RunHelper)
	hasPath := false
	for _, kv := range img.Config.Env {
		k, _, _ := strings.Cut(kv, "=")
		if !shellName.MatchString(k) {
			skipped = append(skipped, k)
			continue
		}
		if k == "PATH" {
			hasPath = true
		}
		fmt.Fprintf(&b, "export %s\n", shellQuote(kv))
	}
	if !hasPath {
		fmt.Fprintf(&b, "export %s\n", shellQuote("PATH="+defaultPath))
	}
	fmt.Fprintf(&b, "banger_workdir=%s\n", shellQuote(img.Config.WorkingDir))
	fmt.Fprintf(&b, "banger_user=%s\n", shellQuote(img.Config.User))
	if argv := img.Config.DefaultCommand(); len(argv) > 0 {
		q := make([]string, len(argv))
		for i, a := range argv {
			q[i] = shellQuote(a)
		}
		fmt.Fprintf(&b, "if [ $# -eq 0 ]; then set -- %s; fi\n", strings.Join(q, " "))
	}
	sort.Strings(skipped)
	return b.Bytes(), skipped
}

// shellQuote quotes s for sh: 'it'\”s'.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// treeUsage sums the sizes of a tree's regular files and counts its entries.
func treeUsage(tree string) (bytes, files int64, err error) {
	err = filepath.WalkDir(tree, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		files++
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			bytes += info.Size()
		}
		return nil
	})
	return bytes, files, err
}

// removeBakedHostKeys removes the dropbear host keys an image carries in
// /etc/dropbear, where /.banger/init keeps the VM's own key (made at its
// first boot, or written by the daemon for a clone): a key baked into the
// image would be every VM's. It looks only into real directories, never
// through a symlink, and returns the paths it removed.
func removeBakedHostKeys(tree string) ([]string, error) {
	dir := tree
	for _, c := range []string{"etc", "dropbear"} {
		dir = filepath.Join(dir, c)
		fi, err := os.Lstat(dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			return nil, nil // a link or a file: nothing of ours to look into
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, e := range ents {
		n := e.Name()
		if !strings.HasPrefix(n, "dropbear_") || !strings.HasSuffix(n, "_host_key") {
			continue
		}
		if err := os.Remove(filepath.Join(dir, n)); err != nil { // a link itself, never its target
			return removed, err
		}
		removed = append(removed, "/etc/dropbear/"+n)
	}
	return removed, nil
}
