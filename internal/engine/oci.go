package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/oci"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/units"
)

// OCI images: any container image becomes a banger image. The layers come
// from a registry (Pull) or a local layout or archive (ImportOCI), cached
// by digest under the state dir; they are unpacked into a private
// directory, banger's guest side is added under /.banger, and an ext4 root
// filesystem is written. The image borrows the default image's kernel and
// initramfs and boots /.banger/init. Commands run through /.banger/run,
// which applies the image's ENV, WORKDIR and USER (and runs ENTRYPOINT+CMD
// when given no command).

// OCISpec asks for an OCI image: Ref (a registry reference) or Path (an
// OCI layout directory, an OCI archive or a docker save tarball).
type OCISpec struct {
	Name     string
	Ref      string
	Path     string
	Insecure bool
	MaxSize  int64 // 0: the oci_max_size setting
}

func nameFromRef(ref string) string { return model.ImageNameFromRef(ref) }

func (e *Engine) ociCache() string { return filepath.Join(e.cfg.StateDir, "oci-cache") }

// OCIMaxSize is the oci_max_size setting in bytes (0: no cap).
func OCIMaxSize(cfg config.Config) (int64, error) {
	if cfg.OCIMaxSize == "" || cfg.OCIMaxSize == "none" {
		return 0, nil
	}
	n, err := units.ParseSize(cfg.OCIMaxSize)
	if err != nil {
		return 0, fmt.Errorf("oci_max_size %q: %w (or none)", cfg.OCIMaxSize, err)
	}
	return n, nil
}

// OCICacheMax is the oci_cache_max setting in bytes (0: no bound).
func OCICacheMax(cfg config.Config) (int64, error) {
	if cfg.OCICacheMax == "none" {
		return 0, nil
	}
	if cfg.OCICacheMax == "" {
		return 10 << 30, nil
	}
	n, err := units.ParseSize(cfg.OCICacheMax)
	if err != nil {
		return 0, fmt.Errorf("oci_cache_max %q: %w (or none)", cfg.OCICacheMax, err)
	}
	return n, nil
}

// rootfsCacheBytes bounds the disk space of the built root filesystems kept
// for converting the same image again (least recently used go first).
const rootfsCacheBytes = 8 << 30

func (e *Engine) rootfsCache() *oci.RootfsCache {
	return &oci.RootfsCache{Dir: filepath.Join(e.ociCache(), "rootfs"), MaxBytes: rootfsCacheBytes}
}

// ociErr gives the oci package's errors their kinds.
func ociErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, oci.ErrNotFound):
		return errdefs.NotFound("%w", err)
	case errors.Is(err, oci.ErrPlatform), errors.Is(err, oci.ErrUnsafeEntry), errors.Is(err, oci.ErrBadImage),
		errors.Is(err, oci.ErrDigestMismatch), errors.Is(err, oci.ErrTruncated), errors.Is(err, oci.ErrTooLarge):
		return errdefs.Invalid("%w", err)
	case errors.Is(err, oci.ErrUnauthorized), errors.Is(err, oci.ErrStalled):
		return errdefs.Unavailable("%w", err)
	}
	return err
}

// CheckOCI validates and fills an OCI request before anything is made.
func (e *Engine) CheckOCI(ctx context.Context, req *OCISpec) error {
	if (req.Ref == "") == (req.Path == "") {
		return errdefs.Invalid("give an image reference or an --oci path, not both or neither")
	}
	if req.Name == "" {
		req.Name = nameFromRef(req.Ref + req.Path)
	}
	if err := validName(req.Name); err != nil {
		return errdefs.Invalid("image %w (choose one with --name)", err)
	}
	if _, err := e.store.GetImage(ctx, req.Name); err == nil {
		return errdefs.AlreadyExists("image %q already exists", req.Name)
	}
	if req.Path != "" && !filepath.IsAbs(req.Path) {
		return errdefs.Invalid("oci path %q must be absolute", req.Path)
	}
	if _, err := e.store.GetImage(ctx, ""); err != nil {
		return errdefs.Conflict("an OCI image boots with the default image's kernel and initramfs, and there is none yet: run banger image build first")
	}
	return nil
}

// PullImage makes an image from an OCI image, reporting progress lines. A
// failure leaves nothing registered and no image files (verified layers
// stay in the cache for the next try).
func (e *Engine) PullImage(ctx context.Context, req OCISpec, progress func(string)) (ImageInfo, error) {
	if err := e.CheckOCI(ctx, &req); err != nil {
		return ImageInfo{}, err
	}
	say := func(format string, args ...any) {
		if progress != nil {
			progress(fmt.Sprintf(format, args...))
		}
	}
	base, err := e.store.GetImage(ctx, "")
	if err != nil {
		return ImageInfo{}, err
	}
	if req.MaxSize == 0 {
		req.MaxSize = e.ociMaxSize
	}
	opts := oci.PullOptions{Cache: e.layers, Insecure: req.Insecure, MaxSize: req.MaxSize,
		Progress: func(p oci.Progress) {
			if p.Cached {
				say("layer %d/%d %s: cached", p.Layer, p.Layers, short(p.Digest))
			} else if p.Total > 0 && p.Done == p.Total {
				say("layer %d/%d %s: %d bytes", p.Layer, p.Layers, short(p.Digest), p.Total)
			}
		}}
	start := time.Now()
	var img *oci.Image
	switch {
	case req.Ref != "":
		say("pulling %s", req.Ref)
		img, err = oci.Pull(ctx, req.Ref, opts)
	default:
		say("importing %s", req.Path)
		if st, serr := os.Stat(req.Path); serr == nil && st.IsDir() {
			img, err = oci.ImportLayout(ctx, req.Path, opts)
		} else {
			img, err = oci.ImportArchive(ctx, req.Path, opts)
		}
	}
	if err != nil {
		return ImageInfo{}, ociErr(err)
	}
	// Its blobs stay pinned, and its cached rootfs kept by prune, until it
	// is registered (or failed).
	defer img.Release()
	defer e.pulling.add(img.Digest)()
	dir := e.ownedImageDir(req.Name)
	tree := filepath.Join(e.cfg.StateDir, "images", "."+req.Name+".unpack")
	fail := func(err error) (ImageInfo, error) {
		os.RemoveAll(tree)
		os.RemoveAll(dir)
		return ImageInfo{}, ociErr(err)
	}
	os.RemoveAll(tree)
	if err := os.MkdirAll(tree, 0o700); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	// The guest agent lets VMs of the image be snapshotted and forked;
	// without one the image still works otherwise.
	agent, err := e.agentBinary()
	if err != nil {
		say("note: no guest agent (%v): VMs of this image cannot be snapshotted or forked", err)
		agent = ""
	}
	meta, err := oci.Convert(ctx, img, tree, filepath.Join(dir, "rootfs.ext4"), oci.ConvertOptions{
		BuildOptions: oci.BuildOptions{Runner: e.deps.Runner, DebCache: e.cfg.ImageCacheDir, Scratch: filepath.Join(e.cfg.StateDir, "images"),
			Progress: func(step string) { say("%s", step) }, Agent: agent},
		MaxSize: req.MaxSize,
		Cache:   e.rootfsCache(),
	})
	if err != nil {
		return fail(err)
	}
	os.RemoveAll(tree)
	im := model.Image{Name: req.Name, KernelPath: base.KernelPath, VMLinux: base.VMLinux, InitrdPath: base.InitrdPath,
		RootfsPath: meta.Rootfs, BootArgs: meta.BootArgs, CreatedAt: e.deps.Now().UTC()}
	if err := e.store.CreateImage(context.WithoutCancel(ctx), im); err != nil {
		if errors.Is(err, store.ErrExists) {
			return fail(errdefs.AlreadyExists("image %q already exists", req.Name))
		}
		return fail(err)
	}
	for _, n := range meta.Notes {
		say("note: %s", n)
	}
	e.log.Info("oci image made", "image", req.Name, "source", meta.Source, "digest", meta.Digest, "took", time.Since(start))
	return e.GetImage(ctx, req.Name)
}

func short(digest string) string {
	if i := strings.Index(digest, ":"); i >= 0 && len(digest) > i+13 {
		return digest[:i+13]
	}
	return digest
}

// ociMeta caches each OCI image's metadata by rootfs path.
var ociMeta sync.Map // rootfs path -> *oci.Metadata (nil: not an OCI image)

// imageOCI returns the OCI metadata of an image, or nil.
func imageOCI(im model.Image) *oci.Metadata {
	if im.RootfsPath == "" {
		return nil
	}
	if v, ok := ociMeta.Load(im.RootfsPath); ok {
		m, _ := v.(*oci.Metadata)
		return m
	}
	m, err := oci.ReadMetadata(filepath.Dir(im.RootfsPath))
	if err != nil {
		m = nil
	}
	ociMeta.Store(im.RootfsPath, m)
	return m
}

// pullSet counts the images (by manifest digest) being pulled.
type pullSet struct {
	mu sync.Mutex
	m  map[string]int
}

// add marks digest as being pulled until the returned func is called.
func (p *pullSet) add(digest string) func() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]int{}
	}
	p.m[digest]++
	return func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.m[digest]--; p.m[digest] <= 0 {
			delete(p.m, digest)
		}
	}
}

func (p *pullSet) has(digest string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[digest] > 0
}

// PruneResult says what PruneImages removed and what is left.
type PruneResult struct {
	RemovedLayers, RemovedRootfs oci.CacheUsage
	KeptLayers, KeptRootfs       oci.CacheUsage
}

// PruneImages removes the cached layers and built root filesystems that no
// registered image was made from (with all, every one), and downloads left
// by a crash. What a pull in progress uses is kept: its layers are pinned
// in the layer cache and its rootfs entry is kept while it is being pulled.
func (e *Engine) PruneImages(ctx context.Context, all bool) (PruneResult, error) {
	layers, images := map[string]bool{}, map[string]bool{}
	if !all {
		ims, err := e.store.ListImages(ctx)
		if err != nil {
			return PruneResult{}, err
		}
		for _, im := range ims {
			m := imageOCI(im)
			if m == nil {
				continue
			}
			images[m.Digest+" "+m.ConfigDigest] = true
			for _, l := range m.Layers {
				layers[l.Digest] = true
			}
		}
	}
	var res PruneResult
	var err error
	res.RemovedLayers, res.KeptLayers, err = e.layers.Prune(func(d string) bool { return layers[d] })
	if err != nil {
		return res, fmt.Errorf("pruning the layer cache: %w", err)
	}
	res.RemovedRootfs, res.KeptRootfs, err = e.rootfsCache().Prune(func(digest, config string) bool {
		return images[digest+" "+config] || e.pulling.has(digest)
	})
	if err != nil {
		return res, fmt.Errorf("pruning the rootfs cache: %w", err)
	}
	e.log.Info("image caches pruned", "all", all, "removed_layers", res.RemovedLayers.Count, "removed_layer_bytes", res.RemovedLayers.Bytes,
		"removed_rootfs", res.RemovedRootfs.Count, "removed_rootfs_bytes", res.RemovedRootfs.Bytes)
	return res, nil
}

// ImageCacheUsage is what the layer and rootfs caches hold now.
func (e *Engine) ImageCacheUsage() (layers, rootfs oci.CacheUsage, err error) {
	if layers, err = e.layers.Usage(); err != nil {
		return layers, rootfs, err
	}
	rootfs, err = e.rootfsCache().Usage()
	return layers, rootfs, err
}
