// Package oci turns container images into banger images: it pulls an image
// from an OCI distribution registry (or imports an OCI layout directory, an
// OCI archive or a `docker save` tarball), keeps its layers in a
// content-addressed cache, unpacks them into a directory as a container
// runtime would, adds banger's guest side and writes an ext4 root filesystem
// with mkfs.ext4 -d (no loop mount). It only writes files; the engine
// registers them, with the default kernel and initramfs and BootArgs.
//
// # Flow
//
//	img, _ := oci.Pull(ctx, "docker.io/library/python:3.12-slim", oci.PullOptions{CacheDir: c})
//	// or oci.ImportLayout / oci.ImportArchive
//	meta, _ := oci.Convert(ctx, img, tree, "/images/py/rootfs.ext4", oci.ConvertOptions{
//		BuildOptions: oci.BuildOptions{Runner: r, DebCache: debs},
//		Cache:        &oci.RootfsCache{Dir: c + "/rootfs", MaxBytes: 8 << 30}})
//	// meta.BootArgs with the default kernel and initramfs; meta is also in
//	// /images/py/oci-image.json
//
// Convert is Unpack then BuildRootfs, or a verified copy of the same
// image's root filesystem from the RootfsCache (see its comment and
// docs/oci.md).
//
// Only linux/amd64 is accepted: an index is resolved to its linux/amd64
// manifest, and an image whose config names another platform is refused.
//
// # Cache
//
// CacheDir/blobs/sha256/<hex> holds each layer blob exactly as the source
// served it (compressed or not), named by its digest, so images that share
// layers share files and a second pull of the same image downloads nothing.
// A blob is written to CacheDir/tmp first, hashed and size-checked while it
// streams, and renamed into place only when its digest and size match the
// manifest; an interrupted or failed download is removed (downloads are not
// resumed). Unpack checks the digest again while reading, and the
// uncompressed stream against the config's diff_id. Nothing in the cache is
// ever trusted by name alone.
//
// # Security rules of Unpack
//
// Layers are applied in order into a private directory, as root, keeping
// numeric owners, modes, symlinks, hardlinks, device nodes and extended
// attributes (security.capability included). Whiteouts (.wh.NAME) delete
// NAME; an opaque marker (.wh..wh..opq) hides everything lower layers put in
// its directory. Every path is resolved below the directory with openat2
// and RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, so nothing is ever written
// outside it and no symlink is followed while writing: an entry named
// absolutely or climbing out with "..", a hardlink to such a path, and an
// entry whose parent is a symlink are refused with an error naming the layer
// and the entry. Symlinks themselves may point anywhere (they are only
// followed inside the guest).
//
// # Guest side
//
// BuildRootfs adds a root-owned /.banger directory (0755 directories,
// read-only to the guest by convention) and otherwise leaves the image's
// files alone, creating only missing mount points, /etc and /root/.ssh
// (where the daemon writes its per-VM files):
//
//	init          PID 1 (the initramfs switches to it when the kernel command
//	              line has BootArgs' banger.init=/.banger/init): mounts,
//	              guest-setup, SSH, console markers, power events, reaping
//	guest-setup   banger's own (ip=, hostname, /etc/hosts, /work), SSH part cut
//	ssh-user      makes root acceptable to dropbear for this boot (bind mounts
//	              over /etc/passwd and /etc/shells from /run when needed)
//	run           runs a command with the image's ENV, WORKDIR and USER, or
//	              ENTRYPOINT + CMD when given none; reads image.sh
//	bin/          static busybox and its applets; dropbear, dropbearkey wrappers
//	libexec/      dropbear, dropbearkey, sftp-server from Debian, ELF
//	              interpreter rewritten to /.banger/ld.so, so they never use the
//	              image's loader or libc (dropbear re-executes itself per
//	              connection); dropbear's sftp path is /.banger/sftp-server
//	lib/, ld.so   their libraries and dynamic loader
//	agent         banger's guest agent (BuildOptions.Agent), which init runs:
//	              clones of the image's VMs get their identity through it
//
// Dropbear host keys the image carries in /etc/dropbear are removed (a key
// baked into an image would be every VM's; the build's notes say so). The
// SSH host key (ed25519) is made on first boot in /etc/dropbear, where
// the daemon writes a clone's key before its next cold boot; dropbear
// serves a copy on tmpfs (/run/banger), printed on the console for the
// host to pin, and the only key it serves.
package oci

import (
	"errors"
	"fmt"
)

// Platform is the only platform banger runs.
const Platform = "linux/amd64"

// Errors a caller can tell apart with errors.Is; messages name the image,
// the layer and the entry.
var (
	ErrPlatform       = errors.New("no linux/amd64 image")             // other architecture, or an index without linux/amd64
	ErrDigestMismatch = errors.New("digest mismatch")                  // manifest, config or layer content does not match its digest
	ErrTruncated      = errors.New("truncated")                        // a blob shorter than its descriptor says
	ErrTooLarge       = errors.New("image too large")                  // over PullOptions.MaxSize or UnpackOptions.MaxSize
	ErrUnsafeEntry    = errors.New("unsafe layer entry")               // an entry that would escape the root or write through a symlink
	ErrUnauthorized   = errors.New("registry refused the credentials") // 401/403 from the registry
	ErrStalled        = errors.New("registry stalled")                 // no data for PullOptions.IdleTimeout
	ErrNotFound       = errors.New("image not found")                  // unknown repository, tag or digest
	ErrBadImage       = errors.New("malformed image")                  // unparsable manifest, config or archive
)

// Image is a resolved linux/amd64 image whose layers are all in the cache,
// verified. It is what Unpack reads and what Metadata records.
type Image struct {
	Source       string  // the reference or path it came from
	Digest       string  // manifest digest ("sha256:..."); for a docker save tarball, the config digest
	ConfigDigest string  // the image ID
	Platform     string  // always "linux/amd64"
	Config       Config  // what the image says about how to run it
	Layers       []Layer // bottom first
	CacheDir     string

	release func() // unpins the layers in PullOptions.Cache
}

// Release tells the layer cache the image's blobs are no longer needed
// (after Convert or Unpack); they may be trimmed or pruned from then on.
// Safe to call more than once, and on an image pulled without a
// LayerCache.
func (img *Image) Release() {
	if img != nil && img.release != nil {
		img.release()
	}
}

// Layer is one layer blob as the manifest describes it.
type Layer struct {
	Digest    string `json:"digest"`     // of the blob as stored (usually compressed)
	DiffID    string `json:"diff_id"`    // of the uncompressed tar
	Size      int64  `json:"size"`       // of the blob
	MediaType string `json:"media_type"` // as the manifest says; Unpack detects compression from the bytes
}

// Config is the part of the image config banger honours: Env and
// WorkingDir apply to every guest command, User is who runs it, and
// Entrypoint followed by Cmd is what `vm run` runs when given no command.
type Config struct {
	Env        []string `json:"env,omitempty"`
	WorkingDir string   `json:"working_dir,omitempty"`
	User       string   `json:"user,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	Cmd        []string `json:"cmd,omitempty"`
}

// DefaultCommand is Entrypoint followed by Cmd, as a container runtime runs
// it when given no command; nil when the image names none.
func (c Config) DefaultCommand() []string {
	if len(c.Entrypoint) == 0 && len(c.Cmd) == 0 {
		return nil
	}
	return append(append([]string(nil), c.Entrypoint...), c.Cmd...)
}

// Size is the sum of the layer blobs' sizes.
func (img *Image) Size() int64 {
	var n int64
	for _, l := range img.Layers {
		n += l.Size
	}
	return n
}

// short abbreviates a digest for messages: "sha256:0123456789ab".
func short(digest string) string {
	if len(digest) > len("sha256:")+12 {
		return digest[:len("sha256:")+12]
	}
	return digest
}

// layerName names layer i of n in messages.
func layerName(i, n int, digest string) string {
	return fmt.Sprintf("layer %d/%d (%s)", i+1, n, short(digest))
}
