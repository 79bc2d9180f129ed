package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/oci"
	"github.com/banger-dev/banger/internal/store"
)

// ImageInfo is an image with what the engine knows of it.
type ImageInfo struct {
	model.Image
	Bootability image.Bootability
	UsedBy      []string
	OCI         *oci.Metadata // for an image made from a container image
}

func (e *Engine) imageInfo(ctx context.Context, im model.Image) ImageInfo {
	users, _ := e.store.VMsUsingImage(ctx, im.Name)
	return ImageInfo{Image: im, Bootability: inspectImage(im), UsedBy: users, OCI: imageOCI(im)}
}

// ListImages lists every image.
func (e *Engine) ListImages(ctx context.Context) ([]ImageInfo, error) {
	ims, err := e.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	out := []ImageInfo{}
	for _, im := range ims {
		out = append(out, e.imageInfo(ctx, im))
	}
	return out, nil
}

// GetImage finds an image by name.
func (e *Engine) GetImage(ctx context.Context, name string) (ImageInfo, error) {
	im, err := e.store.GetImage(ctx, name)
	if err != nil {
		return ImageInfo{}, err
	}
	return e.imageInfo(ctx, im), nil
}

func absFile(what, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if !filepath.IsAbs(p) {
		return "", errdefs.Invalid("%s path %q must be absolute", what, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", errdefs.Invalid("%s %s: %w", what, p, err)
	}
	if !st.Mode().IsRegular() {
		return "", errdefs.Invalid("%s %s is not a regular file", what, p)
	}
	return filepath.Clean(p), nil
}

// ImportSpec names the files of an image already on the host.
type ImportSpec struct {
	Name, Kernel, Initrd, Rootfs, BootArgs, VMLinux string
}

// ImportImage registers an image from files already on the host. The files
// stay where they are; banger never deletes them.
func (e *Engine) ImportImage(ctx context.Context, req ImportSpec) (ImageInfo, error) {
	if err := validName(req.Name); err != nil {
		return ImageInfo{}, errdefs.Invalid("image %w", err)
	}
	if req.Kernel == "" || req.Rootfs == "" {
		return ImageInfo{}, errdefs.Invalid("an image needs --kernel and --rootfs")
	}
	im := model.Image{Name: req.Name, BootArgs: req.BootArgs, CreatedAt: e.deps.Now().UTC()}
	var err error
	if im.KernelPath, err = absFile("kernel", req.Kernel); err != nil {
		return ImageInfo{}, err
	}
	if im.RootfsPath, err = absFile("rootfs", req.Rootfs); err != nil {
		return ImageInfo{}, err
	}
	if im.InitrdPath, err = absFile("initrd", req.Initrd); err != nil {
		return ImageInfo{}, err
	}
	if im.VMLinux, err = absFile("vmlinux", req.VMLinux); err != nil {
		return ImageInfo{}, err
	}
	b := inspectImage(im)
	if !b.QEMU && !b.Firecracker {
		return ImageInfo{}, errdefs.Invalid("image %q is not bootable by any vmm: %s", req.Name, strings.Join(b.Reasons, "; "))
	}
	if err := e.store.CreateImage(ctx, im); err != nil {
		if errors.Is(err, store.ErrExists) {
			return ImageInfo{}, errdefs.AlreadyExists("image %q already exists", req.Name)
		}
		return ImageInfo{}, err
	}
	return e.GetImage(ctx, im.Name)
}

// inspectImage says which VMM can boot im. Firecracker boots the separate
// vmlinux when there is one, else the kernel itself (an imported ELF).
func inspectImage(im model.Image) image.Bootability {
	fc := im.VMLinux
	if fc == "" {
		fc = im.KernelPath
	}
	return image.Inspect(im.KernelPath, fc, im.InitrdPath, im.RootfsPath)
}

// ownedImageDir is where built images live; only these are deleted with
// their record.
func (e *Engine) ownedImageDir(name string) string {
	return filepath.Join(e.cfg.StateDir, "images", name)
}

// DeleteImage removes an image's record, refused while a VM uses it, and
// the files of an image banger built.
func (e *Engine) DeleteImage(ctx context.Context, name string) error {
	im, err := e.store.GetImage(ctx, name)
	if err != nil {
		return err
	}
	if err := e.store.DeleteImage(ctx, name); err != nil {
		return err
	}
	if dir := e.ownedImageDir(im.Name); validName(im.Name) == nil && strings.HasPrefix(im.RootfsPath, dir+"/") {
		os.RemoveAll(dir)
	}
	ociMeta.Delete(im.RootfsPath)
	return nil
}

// BuildSpec asks for an image built from Debian packages.
type BuildSpec struct {
	Name     string
	Base     string
	Packages []string
}

// CheckBuild validates and fills a build request before anything is made
// (so the caller can refuse it before streaming progress).
func (e *Engine) CheckBuild(ctx context.Context, req *BuildSpec) error {
	if req.Name == "" {
		req.Name = "default"
	}
	if err := validName(req.Name); err != nil {
		return errdefs.Invalid("image %w", err)
	}
	if req.Base == "" {
		req.Base = image.BaseMinimal
	}
	if req.Base != image.BaseMinimal && req.Base != image.BaseDebian {
		return errdefs.Invalid("invalid base %q: want minimal or debian", req.Base)
	}
	if _, err := e.store.GetImage(ctx, req.Name); err == nil {
		return errdefs.AlreadyExists("image %q already exists", req.Name)
	}
	return nil
}

// Built is a finished image build.
type Built struct {
	Image         model.Image
	Notes         []string
	KernelVersion string
}

// BuildImage builds and registers an image, reporting progress steps. A
// failed build leaves nothing registered and no files.
func (e *Engine) BuildImage(ctx context.Context, req BuildSpec, progress func(step string)) (Built, error) {
	if err := e.CheckBuild(ctx, &req); err != nil {
		return Built{}, err
	}
	dir := e.ownedImageDir(req.Name)
	if _, err := os.Stat(dir); err == nil {
		os.RemoveAll(dir) // leftover of a build the daemon did not finish
	}
	start := time.Now()
	opts := image.BuildOptions{
		Dir: dir, Base: req.Base, Packages: req.Packages, CacheDir: e.cfg.ImageCacheDir, Runner: e.deps.Runner,
		Progress: progress,
	}
	agent, err := e.agentBinary()
	switch {
	case err == nil:
		opts.Agent = agent
	case req.Base == "" || req.Base == image.BaseMinimal:
		return Built{}, errdefs.Conflict("building image %q: %w", req.Name, err)
	default:
		// A debian image works without the agent, but its VMs cannot
		// be snapshotted or forked.
		if progress != nil {
			progress(fmt.Sprintf("note: no guest agent (%v): VMs of this image cannot be snapshotted or forked", err))
		}
	}
	res, err := image.Build(ctx, opts)
	if err != nil {
		return Built{}, fmt.Errorf("building image %q: %w", req.Name, err)
	}
	im := model.Image{Name: req.Name, KernelPath: res.Kernel, VMLinux: res.VMLinux, InitrdPath: res.Initrd,
		RootfsPath: res.Rootfs, BootArgs: res.BootArgs, CreatedAt: e.deps.Now().UTC()}
	if err := e.store.CreateImage(context.WithoutCancel(ctx), im); err != nil {
		os.RemoveAll(dir)
		return Built{}, fmt.Errorf("registering image %q: %w", req.Name, err)
	}
	e.log.Info("image built", "image", req.Name, "kernel", res.KernelVersion, "took", time.Since(start))
	return Built{Image: im, Notes: res.Notes, KernelVersion: res.KernelVersion}, nil
}
