package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
)

// ImportLayout imports the linux/amd64 image of an OCI image layout
// directory (oci-layout, index.json, blobs/) into the cache. Every blob is
// checked against its digest as it is copied.
func ImportLayout(ctx context.Context, dir string, opts PullOptions) (*Image, error) {
	img, err := importLayout(ctx, dir, dir, opts)
	if err != nil {
		return nil, fmt.Errorf("importing OCI layout %s: %w", dir, err)
	}
	return img, nil
}

func importLayout(ctx context.Context, dir, source string, opts PullOptions) (*Image, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, fmt.Errorf("%w: index.json: %w", ErrBadImage, err)
	}
	img, digest, err := imageFromIndex(idx, 0)
	if err != nil {
		return nil, err
	}
	r, err := resolveV1(img, digest)
	if err != nil {
		return nil, err
	}
	r.source = source
	return r.fetch(ctx, opts)
}

// imageFromIndex picks the linux/amd64 image of a layout's index: the
// descriptor whose platform says so, or the only image there is (its config
// is checked later), following nested indexes.
func imageFromIndex(idx v1.ImageIndex, depth int) (v1.Image, string, error) {
	if depth > 2 {
		return nil, "", fmt.Errorf("%w: indexes nested too deep", ErrBadImage)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, "", fmt.Errorf("%w: index: %w", ErrBadImage, err)
	}
	d, err := choosePlatform(im.Manifests)
	if err != nil {
		var candidates []v1.Descriptor
		for _, m := range im.Manifests {
			if m.Platform == nil && (m.MediaType.IsImage() || m.MediaType.IsIndex()) {
				candidates = append(candidates, m)
			}
		}
		if len(candidates) != 1 || len(candidates) != len(im.Manifests) {
			if len(im.Manifests) == 0 {
				return nil, "", fmt.Errorf("%w: the index lists no image", ErrBadImage)
			}
			return nil, "", err
		}
		d = candidates[0]
	}
	if d.MediaType.IsIndex() {
		child, err := idx.ImageIndex(d.Digest)
		if err != nil {
			return nil, "", fmt.Errorf("%w: %w", ErrBadImage, err)
		}
		return imageFromIndex(child, depth+1)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	return img, d.Digest.String(), nil
}

// ImportArchive imports an OCI archive (a tar of an OCI layout) or a
// `docker save` tarball, optionally gzip-compressed. The archive is
// unpacked into a private directory under the cache (regular files and
// directories only, nothing outside it), read, and removed.
func ImportArchive(ctx context.Context, file string, opts PullOptions) (*Image, error) {
	img, err := importArchive(ctx, file, opts)
	if err != nil {
		return nil, fmt.Errorf("importing archive %s: %w", file, err)
	}
	return img, nil
}

func importArchive(ctx context.Context, file string, opts PullOptions) (*Image, error) {
	opts.useCache()
	if opts.CacheDir == "" {
		return nil, errors.New("no cache directory")
	}
	tmpRoot := filepath.Join(opts.CacheDir, "tmp")
	if err := os.MkdirAll(tmpRoot, 0o700); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tmpRoot, "archive-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := extractArchive(ctx, file, dir); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		return importLayout(ctx, dir, file, opts)
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
		r, err := resolveDockerSave(dir)
		if err != nil {
			return nil, err
		}
		r.source = file
		return r.fetch(ctx, opts)
	}
	return nil, fmt.Errorf("%w: neither index.json (OCI) nor manifest.json (docker save) in it", ErrBadImage)
}

// extractArchive unpacks an image archive's regular files and directories
// into dir. Symlinks (docker save links repeated layers) become hardlinks
// to their target when it is a file in the archive; anything else is
// refused.
func extractArchive(ctx context.Context, file, dir string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var in io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadImage, err)
		}
		defer gz.Close()
		in = gz
	}
	tr := tar.NewReader(in)
	links := map[string]string{}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: reading archive: %w", ErrBadImage, err)
		}
		name, ok := cleanArchiveName(hdr.Name)
		if !ok {
			return fmt.Errorf("%w: archive entry %q", ErrUnsafeEntry, hdr.Name)
		}
		if name == "" {
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return err
			}
			out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("%w: archive entry %q: %w", ErrBadImage, hdr.Name, err)
			}
			_, err = io.Copy(out, tr)
			if cerr := out.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%w: archive entry %q: %w", ErrTruncated, hdr.Name, err)
			}
		case tar.TypeSymlink, tar.TypeLink:
			target := hdr.Linkname
			if hdr.Typeflag == tar.TypeSymlink {
				target = path.Join(path.Dir(name), target)
			}
			t, ok := cleanArchiveName(target)
			if !ok || t == "" {
				return fmt.Errorf("%w: archive entry %q links to %q", ErrUnsafeEntry, hdr.Name, hdr.Linkname)
			}
			links[name] = t
		case tar.TypeXGlobalHeader:
		default:
			return fmt.Errorf("%w: archive entry %q has type %q", ErrBadImage, hdr.Name, hdr.Typeflag)
		}
	}
	for name, target := range links {
		src := filepath.Join(dir, filepath.FromSlash(target))
		if st, err := os.Lstat(src); err != nil || !st.Mode().IsRegular() {
			return fmt.Errorf("%w: archive entry %q links to %q, which is not a file in it", ErrBadImage, name, target)
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return err
		}
		if err := os.Link(src, dst); err != nil {
			return err
		}
	}
	return nil
}

// cleanArchiveName makes an archive member name relative and clean; false
// when it is absolute or climbs out.
func cleanArchiveName(n string) (string, bool) {
	if path.IsAbs(n) {
		return "", false
	}
	c := path.Clean(n)
	if c == "." {
		return "", true
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", false
	}
	return c, true
}

// dockerManifest is one entry of a docker save manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// resolveDockerSave reads a docker save tarball unpacked in dir.
func resolveDockerSave(dir string) (*resolved, error) {
	data, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var ms []dockerManifest
	if err := json.Unmarshal(data, &ms); err != nil {
		return nil, fmt.Errorf("%w: manifest.json: %w", ErrBadImage, err)
	}
	if len(ms) != 1 {
		return nil, fmt.Errorf("%w: manifest.json lists %d images, banger imports one at a time", ErrBadImage, len(ms))
	}
	m := ms[0]
	member := func(n string) (string, error) {
		c, ok := cleanArchiveName(n)
		if !ok || c == "" {
			return "", fmt.Errorf("%w: manifest.json names %q", ErrUnsafeEntry, n)
		}
		return filepath.Join(dir, filepath.FromSlash(c)), nil
	}
	cfgPath, err := member(m.Config)
	if err != nil {
		return nil, err
	}
	rawCfg, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("%w: config %s: %w", ErrBadImage, m.Config, err)
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(rawCfg))
	if err != nil {
		return nil, fmt.Errorf("%w: config %s: %w", ErrBadImage, m.Config, err)
	}
	if err := checkPlatform(cfg.OS, cfg.Architecture); err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: manifest.json has %d layers, config %d diff_ids", ErrBadImage, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	configDigest := sha256Digest(rawCfg)
	r := &resolved{digest: configDigest, configDigest: configDigest, config: configOf(cfg)}
	var files []string
	for i, name := range m.Layers {
		p, err := member(name)
		if err != nil {
			return nil, err
		}
		digest, size, gz, err := hashFile(p)
		if err != nil {
			return nil, fmt.Errorf("%w: layer %d/%d (%s): %w", ErrBadImage, i+1, len(m.Layers), name, err)
		}
		mt := "application/vnd.docker.image.rootfs.diff.tar"
		if gz {
			mt = "application/vnd.docker.image.rootfs.diff.tar.gzip"
		}
		r.layers = append(r.layers, Layer{Digest: digest, DiffID: cfg.RootFS.DiffIDs[i].String(), Size: size, MediaType: mt})
		files = append(files, p)
	}
	r.open = func(i int) (io.ReadCloser, error) { return os.Open(files[i]) }
	return r, nil
}

// hashFile returns a file's digest and size and whether it is gzip.
func hashFile(p string) (digest string, size int64, gz bool, err error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, false, err
	}
	defer f.Close()
	var magic [2]byte
	if n, _ := io.ReadFull(f, magic[:]); n == 2 && magic == [2]byte{0x1f, 0x8b} {
		gz = true
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", 0, false, err
	}
	h := sha256.New()
	size, err = io.Copy(h, f)
	if err != nil {
		return "", 0, false, err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), size, gz, nil
}
