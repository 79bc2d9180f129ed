package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// debianSuite is the release debootstrap installs; it matches the host's
// apt sources, from which the kernel comes.
const debianSuite = "bookworm"

// debianPackages are added to debootstrap's minbase: an init, udev and dbus
// so systemd-logind handles the ACPI power button, sshd, and ip(8) for
// guest-setup.
var debianPackages = []string{
	"systemd-sysv", "udev", "dbus", "openssh-server", "openssh-sftp-server", "iproute2",
}

func (b *builder) buildDebian(ctx context.Context) (Result, error) {
	if err := b.step(ctx, "resolving packages"); err != nil {
		return Result{}, err
	}
	// Fail before any download when debootstrap is not installed.
	if _, err := b.r.Run(ctx, "debootstrap", "--version"); err != nil {
		return Result{}, fmt.Errorf("debootstrap is needed for the %s base (apt-get install debootstrap): %w", BaseDebian, err)
	}
	kernelPkg, err := resolveKernelPackage(ctx, b.r)
	if err != nil {
		return Result{}, err
	}
	debs, err := b.fetch(ctx, []string{kernelPkg, "busybox-static"})
	if err != nil {
		return Result{}, err
	}

	if err := b.step(ctx, "unpacking packages"); err != nil {
		return Result{}, err
	}
	kpkg := filepath.Join(b.work, "kernel")
	bbpkg := filepath.Join(b.work, "busybox")
	for _, d := range debs {
		dest := bbpkg
		if d.name == kernelPkg {
			dest = kpkg
		}
		if err := unpackDeb(ctx, b.r, d.path, dest); err != nil {
			return Result{}, err
		}
	}
	k, err := findKernel(kpkg)
	if err != nil {
		return Result{}, err
	}

	if err := b.step(ctx, "bootstrapping debian"); err != nil {
		return Result{}, err
	}
	tree := filepath.Join(b.work, "rootfs")
	include := dedupe(append(append([]string{}, debianPackages...), b.opts.Packages...))
	args := []string{"--variant=minbase", "--include=" + strings.Join(include, ",")}
	if b.opts.CacheDir != "" {
		cache, err := filepath.Abs(filepath.Join(b.opts.CacheDir, "debootstrap"))
		if err != nil {
			return Result{}, err
		}
		if err := os.MkdirAll(cache, 0o755); err != nil {
			return Result{}, err
		}
		args = append(args, "--cache-dir="+cache)
	}
	if _, err := b.r.Run(ctx, "debootstrap", append(args, debianSuite, tree)...); err != nil {
		return Result{}, fmt.Errorf("bootstrapping %s: %w", debianSuite, err)
	}

	if err := b.step(ctx, "building rootfs"); err != nil {
		return Result{}, err
	}
	if err := populateDebian(tree, b.opts.Agent); err != nil {
		return Result{}, err
	}
	if err := makeExt4(ctx, b.r, tree, b.out(rootfsFile)); err != nil {
		return Result{}, err
	}
	b.note("debian base boots systemd: expect ~30 s to SSH without KVM (minimal: ~4 s)")
	return b.finish(ctx, k, filepath.Join(bbpkg, "bin", "busybox"))
}

// populateDebian makes a debootstrapped tree a banger guest: nothing that
// must differ per VM stays baked in (SSH host keys, machine-id), the host's
// resolv.conf goes (the daemon writes the guest's), banger-setup is enabled,
// and so is the guest agent when there is one (agent: its binary, or "").
func populateDebian(tree, agent string) error {
	keys, _ := filepath.Glob(filepath.Join(tree, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	for _, p := range []string{"etc/resolv.conf", "var/lib/dbus/machine-id"} {
		if err := os.Remove(filepath.Join(tree, p)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	// An empty machine-id makes systemd generate one on first boot.
	if err := os.WriteFile(filepath.Join(tree, "etc/machine-id"), nil, 0o444); err != nil {
		return err
	}
	for _, g := range []string{"var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_Packages"} {
		files, _ := filepath.Glob(filepath.Join(tree, g))
		for _, f := range files {
			os.Remove(f)
		}
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"work", 0o755}, {"root", 0o700}, {"root/.ssh", 0o700}} {
		p := filepath.Join(tree, d.path)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "etc/hostname"), []byte("banger-guest\n"), 0o644); err != nil {
		return err
	}
	if err := installGuestFiles("common", tree); err != nil {
		return fmt.Errorf("installing guest files: %w", err)
	}
	if err := installGuestFiles("debian", tree); err != nil {
		return fmt.Errorf("installing guest files: %w", err)
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	units := []string{"banger-setup.service"}
	if agent != "" {
		if err := os.MkdirAll(filepath.Join(tree, filepath.Dir(agentPath)), 0o755); err != nil {
			return err
		}
		if err := installAgent(agent, filepath.Join(tree, agentPath)); err != nil {
			return err
		}
		units = append(units, "banger-agent.service")
	} else {
		os.Remove(filepath.Join(tree, "etc/systemd/system/banger-agent.service"))
	}
	for _, u := range units {
		link := filepath.Join(wants, u)
		os.Remove(link)
		if err := os.Symlink("/etc/systemd/system/"+u, link); err != nil {
			return err
		}
	}
	return nil
}
