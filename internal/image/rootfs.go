package image

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// guestFiles are the files banger adds to a guest: guest/common for every
// base, guest/minimal and guest/debian per base, guest/initramfs for the
// initramfs. Embedding keeps them readable as the shell scripts they are.
//
//go:embed guest
var guestFiles embed.FS

// guestFileMode gives embedded files their permissions (embed keeps none).
func guestFileMode(name string) os.FileMode {
	switch {
	case name == "etc/shadow":
		return 0o600
	case name == "init", strings.HasPrefix(name, "etc/init.d/"), strings.HasPrefix(name, "etc/acpi/"),
		strings.HasPrefix(name, "usr/lib/banger/"):
		return 0o755
	}
	return 0o644
}

// installGuestFiles copies guest/<set> into tree, replacing what is there.
func installGuestFiles(set, tree string) error {
	root := path.Join("guest", set)
	return fs.WalkDir(guestFiles, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, root), "/")
		if rel == "" {
			return nil
		}
		dst := filepath.Join(tree, filepath.FromSlash(rel))
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		data, err := guestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		os.Remove(dst) // a package's file or symlink of the same name
		if err := os.WriteFile(dst, data, guestFileMode(rel)); err != nil {
			return err
		}
		return os.Chmod(dst, guestFileMode(rel)) // WriteFile's mode is masked by umask
	})
}

// prunedPaths are unpacked files a guest never uses (17 MB -> 9 MB).
var prunedPaths = []string{
	"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
	"usr/share/lintian", "usr/share/bug", "usr/share/initramfs-tools",
	"usr/lib/x86_64-linux-gnu/gconv",
}

// guestDirs are directories every minimal guest needs, with their modes.
var guestDirs = []struct {
	path string
	mode os.FileMode
}{
	{"bin", 0o755}, {"sbin", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
	{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"run", 0o755},
	{"tmp", fs.ModeSticky | 0o777}, {"work", 0o755}, {"mnt", 0o755}, {"var/log", 0o755},
	{"etc/dropbear", 0o700}, // dropbear -R and guest-setup write host keys here on first boot
	{"root", 0o700},
	// authorized_keys is written per VM by the daemon, so only the directory is here.
	{"root/.ssh", 0o700},
}

// populateMinimal turns unpacked busybox, dropbear and libraries into a
// bootable root: busybox applet links, banger's init scripts, accounts.
func (b *builder) populateMinimal(ctx context.Context, tree string) error {
	for _, p := range prunedPaths {
		if err := os.RemoveAll(filepath.Join(tree, p)); err != nil {
			return err
		}
	}
	for _, d := range guestDirs {
		p := filepath.Join(tree, d.path)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	if err := linkBusyboxApplets(ctx, b.r, tree); err != nil {
		return err
	}
	// Debian's dropbear runs /usr/lib/sftp-server for the sftp subsystem
	// (a string in the binary); OpenSSH's server lives one directory down.
	if _, err := os.Stat(filepath.Join(tree, "usr/lib/openssh/sftp-server")); err != nil {
		return fmt.Errorf("sftp-server missing from openssh-sftp-server: %w", err)
	}
	if err := os.Symlink("openssh/sftp-server", filepath.Join(tree, "usr/lib/sftp-server")); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := installGuestFiles("common", tree); err != nil {
		return fmt.Errorf("installing guest files: %w", err)
	}
	if err := installGuestFiles("minimal", tree); err != nil {
		return fmt.Errorf("installing guest files: %w", err)
	}
	if err := installAgent(b.opts.Agent, filepath.Join(tree, agentPath)); err != nil {
		return fmt.Errorf("installing the guest agent: %w", err)
	}
	// /etc/hosts lives on tmpfs (guest-setup writes it at every boot): a
	// clone's agent then renames the guest without writing to the disk's
	// file system (docs/snapshots.md).
	hosts := filepath.Join(tree, "etc/hosts")
	if err := os.Remove(hosts); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Symlink("../run/banger/hosts", hosts)
}

// linkBusyboxApplets does what `busybox --install -s` does, without chroot:
// it asks the (static) busybox for its applet paths and makes each a symlink
// to /bin/busybox unless a package already put a file there.
func linkBusyboxApplets(ctx context.Context, r Runner, tree string) error {
	bb := filepath.Join(tree, "bin", "busybox")
	out, err := r.Run(ctx, bb, "--list-full")
	if err != nil {
		return fmt.Errorf("listing busybox applets: %w", err)
	}
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || rel == "bin/busybox" || strings.Contains(rel, "..") || path.IsAbs(rel) {
			continue
		}
		dst := filepath.Join(tree, filepath.FromSlash(rel))
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return fmt.Errorf("linking busybox applet %s: %w", rel, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("busybox listed no applets")
	}
	return nil
}

// Root filesystem size: what the tree needs plus room to work in.
const (
	minRootfsBytes  = 64 << 20
	rootfsHeadroom  = 32 << 20
	perInodeBytes   = 4096 // rough cost of an inode's block and directory entry
	rootfsRoundUnit = 1 << 20
)

// rootfsSize sizes an ext4 image for a tree of treeBytes in files entries.
func rootfsSize(treeBytes, files int64) int64 {
	need := treeBytes + files*perInodeBytes
	size := need + need/4 + rootfsHeadroom
	size = (size + rootfsRoundUnit - 1) / rootfsRoundUnit * rootfsRoundUnit
	return max(size, minRootfsBytes)
}

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

// makeExt4 writes tree into a new ext4 image with mkfs.ext4 -d (no loop
// mount; owners and modes are kept from the tree).
func makeExt4(ctx context.Context, r Runner, tree, out string) error {
	used, files, err := treeUsage(tree)
	if err != nil {
		return fmt.Errorf("sizing rootfs: %w", err)
	}
	size := rootfsSize(used, files)
	// 4 KiB blocks even though mke2fs picks 1 KiB for small filesystems:
	// the daemon grows copies of this image to the VM's disk size.
	if _, err := r.Run(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "root", "-d", tree, out, fmt.Sprintf("%dk", size>>10)); err != nil {
		os.Remove(out)
		return fmt.Errorf("making rootfs %s: %w", out, err)
	}
	return nil
}
