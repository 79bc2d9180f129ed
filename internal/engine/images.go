package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/store"
)

func (d *Daemon) imageView(ctx context.Context, im model.Image) api.Image {
	b := inspectImage(im)
	users, _ := d.store.VMsUsingImage(ctx, im.Name)
	return api.Image{Image: im, QEMUBootable: b.QEMU, FirecrackerBootable: b.Firecracker, Notes: b.Reasons, UsedBy: users}
}

func (d *Daemon) handleImageList(w http.ResponseWriter, r *http.Request) error {
	ims, err := d.store.ListImages(r.Context())
	if err != nil {
		return err
	}
	out := []api.Image{}
	for _, im := range ims {
		out = append(out, d.imageView(r.Context(), im))
	}
	return writeJSON(w, out)
}

func (d *Daemon) handleImageShow(w http.ResponseWriter, r *http.Request) error {
	im, err := d.store.GetImage(r.Context(), r.PathValue("name"))
	if err != nil {
		return toAPIError(err)
	}
	return writeJSON(w, d.imageView(r.Context(), im))
}

func absFile(what, p string) (string, error) {
	if p == "" {
		return "", nil
	}
	if !filepath.IsAbs(p) {
		return "", api.Errorf(api.CodeInvalidArgument, "%s path %q must be absolute", what, p)
	}
	st, err := os.Stat(p)
	if err != nil {
		return "", api.Errorf(api.CodeInvalidArgument, "%s %s: %v", what, p, err)
	}
	if !st.Mode().IsRegular() {
		return "", api.Errorf(api.CodeInvalidArgument, "%s %s is not a regular file", what, p)
	}
	return filepath.Clean(p), nil
}

// handleImageImport registers an image from files already on the host. The
// files stay where they are; banger never deletes them.
func (d *Daemon) handleImageImport(w http.ResponseWriter, r *http.Request) error {
	var req api.ImportImageRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := validName(req.Name); err != nil {
		return api.Errorf(api.CodeInvalidArgument, "image %v", err)
	}
	if req.Kernel == "" || req.Rootfs == "" {
		return api.Errorf(api.CodeInvalidArgument, "an image needs --kernel and --rootfs")
	}
	im := model.Image{Name: req.Name, BootArgs: req.BootArgs, CreatedAt: d.deps.Now().UTC()}
	var err error
	if im.KernelPath, err = absFile("kernel", req.Kernel); err != nil {
		return err
	}
	if im.RootfsPath, err = absFile("rootfs", req.Rootfs); err != nil {
		return err
	}
	if im.InitrdPath, err = absFile("initrd", req.Initrd); err != nil {
		return err
	}
	if im.VMLinux, err = absFile("vmlinux", req.VMLinux); err != nil {
		return err
	}
	b := inspectImage(im)
	if !b.QEMU && !b.Firecracker {
		return api.Errorf(api.CodeInvalidArgument, "image %q is not bootable by any vmm: %s", req.Name, strings.Join(b.Reasons, "; "))
	}
	if err := d.store.CreateImage(r.Context(), im); err != nil {
		if errors.Is(err, store.ErrExists) {
			return api.Errorf(api.CodeAlreadyExists, "image %q already exists", req.Name)
		}
		return err
	}
	im, _ = d.store.GetImage(r.Context(), im.Name)
	w.WriteHeader(http.StatusCreated)
	return writeJSON(w, d.imageView(r.Context(), im))
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
func (d *Daemon) ownedImageDir(name string) string {
	return filepath.Join(d.cfg.StateDir, "images", name)
}

func (d *Daemon) handleImageDelete(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	im, err := d.store.GetImage(r.Context(), name)
	if err != nil {
		return toAPIError(err)
	}
	if err := d.store.DeleteImage(r.Context(), name); err != nil {
		return toAPIError(err)
	}
	if dir := d.ownedImageDir(im.Name); validName(im.Name) == nil && strings.HasPrefix(im.RootfsPath, dir+"/") {
		os.RemoveAll(dir)
	}
	return writeJSON(w, struct{}{})
}

// handleImageBuild builds an image from Debian packages, streaming progress
// lines; the last line is "ok NAME" or "error: ...". A failed build leaves
// nothing registered and no files.
func (d *Daemon) handleImageBuild(w http.ResponseWriter, r *http.Request) error {
	var req api.BuildImageRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.Name == "" {
		req.Name = "default"
	}
	if err := validName(req.Name); err != nil {
		return api.Errorf(api.CodeInvalidArgument, "image %v", err)
	}
	if req.Base == "" {
		req.Base = image.BaseMinimal
	}
	if req.Base != image.BaseMinimal && req.Base != image.BaseDebian {
		return api.Errorf(api.CodeInvalidArgument, "invalid base %q: want minimal or debian", req.Base)
	}
	if _, err := d.store.GetImage(r.Context(), req.Name); err == nil {
		return api.Errorf(api.CodeAlreadyExists, "image %q already exists", req.Name)
	}
	dir := d.ownedImageDir(req.Name)
	if _, err := os.Stat(dir); err == nil {
		os.RemoveAll(dir) // leftover of a build the daemon did not finish
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	out := bufio.NewWriter(flushWriter{w})
	say := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}
	start := time.Now()
	res, err := image.Build(r.Context(), image.BuildOptions{
		Dir: dir, Base: req.Base, Packages: req.Packages, CacheDir: d.cfg.ImageCacheDir, Runner: d.deps.Runner,
		Progress: func(step string) { say("[%5.1fs] %s", time.Since(start).Seconds(), step) },
	})
	if err != nil {
		say("error: building image %q: %v", req.Name, err)
		return nil
	}
	im := model.Image{Name: req.Name, KernelPath: res.Kernel, VMLinux: res.VMLinux, InitrdPath: res.Initrd,
		RootfsPath: res.Rootfs, BootArgs: res.BootArgs, CreatedAt: d.deps.Now().UTC()}
	if err := d.store.CreateImage(context.WithoutCancel(r.Context()), im); err != nil {
		os.RemoveAll(dir)
		say("error: registering image %q: %v", req.Name, err)
		return nil
	}
	for _, n := range res.Notes {
		say("note: %s", n)
	}
	say("ok %s (kernel %s, %.1fs)", req.Name, res.KernelVersion, time.Since(start).Seconds())
	return nil
}
