package image

import (
	"context"
	"fmt"
	"io/fs"
)

// This file exports what other image producers (internal/oci, which turns
// container images into banger images) reuse from the builder: the package
// fetcher, the ext4 writer and the guest-side scripts. Nothing here changes
// how Build works.

// DebFile is a Debian package file fetched into a cache.
type DebFile struct {
	Name string // package name
	Path string // the verified .deb
}

// FetchDebs makes sure the .debs apt would download for names are in cache
// (downloading only what is missing, verified by size and SHA-256) and
// returns them in order. scratch holds apt's temporary directories. With
// every file cached it needs no network.
func FetchDebs(ctx context.Context, r Runner, scratch, cache string, names []string) ([]DebFile, error) {
	debs, err := fetchDebs(ctx, r, scratch, cache, dedupe(names), func() error { return nil })
	if err != nil {
		return nil, err
	}
	out := make([]DebFile, len(debs))
	for i, d := range debs {
		out[i] = DebFile{Name: d.name, Path: d.path}
	}
	return out, nil
}

// UnpackDeb extracts a package's files (never its maintainer scripts) into dest.
func UnpackDeb(ctx context.Context, r Runner, path, dest string) error {
	return unpackDeb(ctx, r, path, dest)
}

// MakeExt4 writes tree into a new ext4 image at out with mkfs.ext4 -d (4 KiB
// blocks, no loop mount, owners and modes kept), sized like banger's own
// root filesystems: the tree plus a quarter plus 32 MiB, at least 64 MiB.
func MakeExt4(ctx context.Context, r Runner, tree, out string) error {
	return makeExt4(ctx, r, tree, out)
}

// RootfsSize is the size MakeExt4 gives a tree of treeBytes in files entries.
func RootfsSize(treeBytes, files int64) int64 { return rootfsSize(treeBytes, files) }

// GuestPackages are the Debian packages of banger's guest userland: static
// busybox, dropbear with its libraries, and OpenSSH's sftp-server.
func GuestPackages() []string { return append([]string(nil), minimalPackages...) }

// GuestSetupScript is guest-setup, the per-boot configuration every banger
// guest runs (ip= from the kernel command line, hostname, /etc/hosts, the
// work disk on /work).
func GuestSetupScript() []byte {
	data, err := guestFiles.ReadFile("guest/common/usr/lib/banger/guest-setup")
	if err != nil {
		panic(fmt.Sprintf("embedded guest-setup missing: %v", err)) // a build defect
	}
	return data
}

// OCIGuestFiles are the files of guest/oci: banger's init and helpers for
// images that bring no init or SSH server of their own (internal/oci puts
// them under /.banger).
func OCIGuestFiles() fs.FS {
	sub, err := fs.Sub(guestFiles, "guest/oci")
	if err != nil {
		panic(fmt.Sprintf("embedded guest/oci missing: %v", err)) // a build defect
	}
	return sub
}

// InitArg is the kernel argument that makes banger's initramfs switch to an
// init other than /sbin/init, e.g. "banger.init=/.banger/init". The kernel
// does not pass dotted arguments to init; the initramfs reads /proc/cmdline.
const InitArg = "banger.init"

// DefaultBootArgs are the kernel arguments of images built by Build.
const DefaultBootArgs = bootArgs
