// Package image builds bootable guest images from Debian packages alone: a
// kernel (Debian's cloud kernel), a small generic initramfs that loads the
// virtio drivers and switches to the root disk, an ext4 root filesystem made
// without loop mounts, and an uncompressed vmlinux for Firecracker. It only
// writes files; the daemon registers them. The recipe follows
// docs/qemu.md.
//
// What a guest built here expects and provides (the contract with the VMM
// drivers and the daemon):
//   - kernel arguments: Result.BootArgs plus the driver's console=ttyS0,
//     panic=-1, reboot=t (QEMU microvm) or reboot=k (Firecracker), and
//     ip=<addr>::<gw>:<mask>:<hostname>:eth0:off[:<dns0>[:<dns1>]], which
//     guest-setup applies (the kernel has no IP_PNP);
//   - disks: root on the first virtio disk (/dev/vda), the work disk, when
//     present, on the second (/dev/vdb), mounted on /work;
//   - SSH: root with /root/.ssh/authorized_keys, which the daemon writes per
//     VM; the ed25519 host key is made on first boot and printed on the
//     console as "banger-hostkey: ssh-ed25519 AAAA..." on every boot;
//   - console markers: "rcS done <uptime>" when the guest is configured
//     (SSH follows within a fraction of a second), and on the minimal base
//     "halt: poweroff|reboot" when it stops;
//   - stopping: the ACPI power button (QMP system_powerdown) and Ctrl-Alt-Del
//     (Firecracker's SendCtrlAltDel) stop the guest cleanly. On the minimal
//     base both sync, unmount /work, remount / read-only and power off or
//     reboot at once; the debian base leaves them to systemd (seconds).
//
// Extra packages (BuildOptions.Packages) on the minimal base are unpacked
// with their dependency closure (Depends and Pre-Depends, resolved from
// apt's metadata as apt would: first installable alternative, a virtual
// package's only or highest-priority provider) but without maintainer
// scripts. An unknown package is refused before any download, and a package
// whose programs could not start in the tree (a missing interpreter, loader
// or shared library) is refused before the rootfs is written.
package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Runner runs an external command to completion and returns its stdout.
// system.ExecRunner satisfies it.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Base names what the root filesystem is built from.
const (
	BaseMinimal = "minimal" // busybox + dropbear unpacked from .debs: ~9 MB, builds in seconds
	BaseDebian  = "debian"  // debootstrap minbase with systemd and OpenSSH
)

// BuildOptions describes one image build.
type BuildOptions struct {
	Dir      string   // output directory, created; removed entirely when the build fails
	Base     string   // BaseMinimal (default) or BaseDebian
	Packages []string // extra Debian packages: debian base installs them, minimal unpacks them with their Depends and Pre-Depends (no maintainer scripts) and refuses them when their programs cannot start
	CacheDir string   // downloaded .debs are kept here between builds (optional)
	Progress func(step string)
	Runner   Runner
	// Agent is the guest agent, cmd/banger-agent built static for
	// x86-64, which a minimal image runs as /usr/lib/banger/agent (see
	// internal/agent), and a debian image as a systemd unit. A minimal
	// build needs it; a debian one without it cannot be cloned.
	Agent string
}

// Result names the files of a built image, all inside BuildOptions.Dir.
type Result struct {
	Kernel              string // bzImage (vmlinuz), for QEMU
	VMLinux             string // uncompressed ELF kernel for Firecracker; "" when extraction failed
	Initrd              string // gzip-compressed newc cpio
	Rootfs              string // ext4 image
	BootArgs            string // kernel arguments the image needs; drivers add console=, reboot=, panic= and ip=
	KernelVersion       string // e.g. "6.1.0-56-cloud-amd64"
	FirecrackerBootable bool
	Notes               []string // facts worth showing the user (untested paths, best-effort packages)
}

// bootArgs deliberately holds no console=, reboot= or panic=: those depend on
// the VMM (QEMU microvm needs reboot=t, Firecracker reboot=k) and its driver
// sets them. root= is read by the initramfs's own init.
const bootArgs = "quiet root=/dev/vda"

// Output file names inside BuildOptions.Dir.
const (
	kernelFile  = "vmlinuz"
	vmlinuxFile = "vmlinux"
	initrdFile  = "initrd.img"
	rootfsFile  = "rootfs.ext4"
	workDirName = ".build" // scratch, removed when the build ends
)

// euid is a variable so tests can exercise the failure paths unprivileged.
var euid = os.Geteuid

// Build builds an image into o.Dir. The directory must not exist or be empty;
// if the build fails or ctx is cancelled it is removed entirely, so a failed
// build leaves nothing behind. Building needs root: the rootfs is made from
// the builder's files with mkfs.ext4 -d, which keeps their owners.
func Build(ctx context.Context, o BuildOptions) (res Result, err error) {
	base := o.Base
	if base == "" {
		base = BaseMinimal
	}
	if base != BaseMinimal && base != BaseDebian {
		return Result{}, fmt.Errorf("building image: unknown base %q (want %q or %q)", o.Base, BaseMinimal, BaseDebian)
	}
	if o.Runner == nil {
		return Result{}, errors.New("building image: no runner")
	}
	if o.Dir == "" {
		return Result{}, errors.New("building image: no output directory")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return Result{}, fmt.Errorf("building image in %s: %w", o.Dir, err)
	}
	if euid() != 0 {
		return Result{}, fmt.Errorf("building image in %s: needs root (rootfs files must be owned by root)", dir)
	}
	if base == BaseMinimal || o.Agent != "" {
		if err := checkAgent(o.Agent); err != nil {
			return Result{}, fmt.Errorf("building image in %s: %w", dir, err)
		}
	}
	if err := makeEmptyDir(dir); err != nil {
		return Result{}, fmt.Errorf("building image in %s: %w", dir, err)
	}
	b := &builder{opts: o, base: base, dir: dir, work: filepath.Join(dir, workDirName), r: o.Runner}
	defer func() {
		// Cleanup runs even when ctx is cancelled: it must not be cut short.
		cleanup := context.WithoutCancel(ctx)
		if rerr := removeTree(cleanup, b.r, b.work); rerr != nil && err == nil {
			err = rerr
		}
		if err != nil {
			if rerr := removeTree(cleanup, b.r, dir); rerr != nil {
				err = errors.Join(err, rerr)
			}
			res = Result{}
			err = fmt.Errorf("building %s image in %s: %w", base, dir, err)
		}
	}()
	if err := os.Mkdir(b.work, 0o700); err != nil {
		return Result{}, err
	}
	if base == BaseDebian {
		return b.buildDebian(ctx)
	}
	return b.buildMinimal(ctx)
}

// makeEmptyDir creates dir, or accepts it when it exists and is empty: a
// build must never delete files it did not make.
func makeEmptyDir(dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	err := os.Mkdir(dir, 0o755)
	if err == nil || !errors.Is(err, os.ErrExist) {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Readdirnames(1); err != io.EOF {
		if err == nil {
			return fmt.Errorf("output directory is not empty: %w", os.ErrExist)
		}
		return err
	}
	return nil
}

// builder carries one build's paths and options between its steps.
type builder struct {
	opts  BuildOptions
	base  string
	dir   string // output
	work  string // scratch inside dir
	r     Runner
	notes []string
}

// step reports progress and stops the build when ctx is done.
func (b *builder) step(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if b.opts.Progress != nil {
		b.opts.Progress(name)
	}
	return nil
}

func (b *builder) out(name string) string { return filepath.Join(b.dir, name) }

func (b *builder) note(format string, args ...any) {
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

// minimalPackages is the busybox + dropbear userland of the minimal base
// (libgmp10 is needed by libtomcrypt1; sftp-server needs only libc).
var minimalPackages = []string{
	"busybox-static", "dropbear-bin", "libc6", "libcrypt1", "libtomcrypt1",
	"libtommath1", "libgmp10", "zlib1g", "openssh-sftp-server",
}

func (b *builder) buildMinimal(ctx context.Context) (Result, error) {
	if err := b.step(ctx, "resolving packages"); err != nil {
		return Result{}, err
	}
	kernelPkg, err := resolveKernelPackage(ctx, b.r)
	if err != nil {
		return Result{}, err
	}
	extra, err := b.resolveExtras(ctx)
	if err != nil {
		return Result{}, err
	}
	names := append(append([]string{kernelPkg}, minimalPackages...), extra...)
	debs, err := b.fetch(ctx, names)
	if err != nil {
		return Result{}, err
	}
	programs, err := b.extraPrograms(ctx, debs)
	if err != nil {
		return Result{}, err
	}

	if err := b.step(ctx, "unpacking packages"); err != nil {
		return Result{}, err
	}
	tree := filepath.Join(b.work, "rootfs")
	kpkg := filepath.Join(b.work, "kernel")
	// The kernel package is most of the unpacking time (26 MB of xz): it
	// unpacks while the rootfs is built. The deferred wait runs before
	// Build removes the scratch directory, so no dpkg writes into it late.
	kctx, cancel := context.WithCancel(ctx)
	var unpacking sync.WaitGroup
	var kernelErr error
	for _, d := range debs {
		if d.name == kernelPkg {
			unpacking.Add(1)
			go func() {
				defer unpacking.Done()
				kernelErr = unpackDeb(kctx, b.r, d.path, kpkg)
			}()
		}
	}
	defer func() {
		cancel()
		unpacking.Wait()
	}()
	for _, d := range debs {
		if d.name == kernelPkg {
			continue
		}
		if err := unpackDeb(ctx, b.r, d.path, tree); err != nil {
			return Result{}, err
		}
	}

	if err := b.step(ctx, "building rootfs"); err != nil {
		return Result{}, err
	}
	if err := b.populateMinimal(ctx, tree); err != nil {
		return Result{}, err
	}
	if len(programs) > 0 {
		if err := b.step(ctx, "checking extra packages' programs"); err != nil {
			return Result{}, err
		}
		if err := checkPackagePrograms(tree, programs); err != nil {
			return Result{}, fmt.Errorf("checking extra packages' programs (unpacked without maintainer scripts):\n%w", err)
		}
	}
	if err := makeExt4(ctx, b.r, tree, b.out(rootfsFile)); err != nil {
		return Result{}, err
	}
	unpacking.Wait()
	if kernelErr != nil {
		return Result{}, kernelErr
	}
	k, err := findKernel(kpkg)
	if err != nil {
		return Result{}, err
	}
	return b.finish(ctx, k, filepath.Join(tree, "bin", "busybox"))
}

// finish does the steps every base shares once the rootfs exists: the
// initramfs, the kernel files and the final check.
func (b *builder) finish(ctx context.Context, k kernelFiles, busybox string) (Result, error) {
	if err := b.step(ctx, "building initramfs"); err != nil {
		return Result{}, err
	}
	missing, err := buildInitramfs(b.work, busybox, k.modules, b.out(initrdFile))
	if err != nil {
		return Result{}, err
	}
	if len(missing) > 0 {
		b.note("kernel modules not found (assumed built in): %s", strings.Join(missing, ", "))
	}
	if err := copyFile(k.vmlinuz, b.out(kernelFile), 0o644); err != nil {
		return Result{}, fmt.Errorf("copying kernel: %w", err)
	}

	if err := b.step(ctx, "extracting vmlinux"); err != nil {
		return Result{}, err
	}
	res := Result{
		Kernel:        b.out(kernelFile),
		Initrd:        b.out(initrdFile),
		Rootfs:        b.out(rootfsFile),
		BootArgs:      bootArgs,
		KernelVersion: k.version,
	}
	if err := ExtractVMLinux(ctx, b.r, res.Kernel, b.out(vmlinuxFile)); err != nil {
		if ctx.Err() != nil {
			return Result{}, err
		}
		b.note("no vmlinux, so Firecracker cannot boot this image: %v", err)
	} else {
		res.VMLinux = b.out(vmlinuxFile)
	}

	if err := b.step(ctx, "checking image"); err != nil {
		return Result{}, err
	}
	bt := Inspect(res.Kernel, res.VMLinux, res.Initrd, res.Rootfs)
	if !bt.QEMU {
		return Result{}, fmt.Errorf("built image does not pass inspection: %s", strings.Join(bt.Reasons, "; "))
	}
	res.FirecrackerBootable = bt.Firecracker
	if res.FirecrackerBootable {
		b.note("Firecracker boot is untested: kernel %s finds virtio-mmio devices through ACPI (Firecracker >= 1.8) and has virtio_mmio as a module", k.version)
	}
	res.Notes = b.notes
	return res, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
