// Package debimage builds container images from Debian packages, for the
// tests and benchmarks that need real images and cannot reach a public
// registry: packages are fetched through banger's .deb cache (no network
// when all are cached), unpacked with dpkg -x (no maintainer scripts) and
// grouped into gzip layers with root-owned entries.
package debimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/banger-dev/banger/internal/image"
)

// Runner runs host tools (apt-cache, apt-get, dpkg); system.ExecRunner.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Closure lists names and their dependencies (Depends and Pre-Depends,
// recursively, as apt-cache gives them; virtual packages left out), sorted.
func Closure(ctx context.Context, r Runner, names ...string) ([]string, error) {
	out, err := r.Run(ctx, "apt-cache", append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests",
		"--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"}, names...)...)
	if err != nil {
		return nil, fmt.Errorf("resolving dependencies of %s: %w", strings.Join(names, " "), err)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "<") {
			continue
		}
		seen[strings.TrimSpace(l)] = true
	}
	var list []string
	for n := range seen {
		list = append(list, n)
	}
	sort.Strings(list)
	return list, nil
}

// Spec is an image to build.
type Spec struct {
	Packages []string // fetched as named (use Closure for dependencies)
	Layers   int      // packages are spread over this many layers (at least 1)
	Config   v1.Config
	// Extra layers on top, e.g. a symlink /usr/bin/python3.
	Extra []v1.Layer
}

// Build fetches the packages into debCache, writes one gzip layer per
// group of packages into scratch (which must outlive the image) and
// returns a linux/amd64 image with OCI media types.
func Build(ctx context.Context, r Runner, debCache, scratch string, spec Spec) (v1.Image, error) {
	debs, err := image.FetchDebs(ctx, r, scratch, debCache, spec.Packages)
	if err != nil {
		return nil, err
	}
	n := max(spec.Layers, 1)
	n = min(n, len(debs))
	var layers []v1.Layer
	for g := range n {
		dir := filepath.Join(scratch, fmt.Sprintf("layer%d", g))
		// Contiguous groups: the image's files in a stable order.
		for _, d := range debs[g*len(debs)/n : (g+1)*len(debs)/n] {
			if err := image.UnpackDeb(ctx, r, d.Path, dir); err != nil {
				return nil, err
			}
		}
		file := dir + ".tar.gz"
		if err := writeLayer(dir, file); err != nil {
			return nil, fmt.Errorf("layer %d: %w", g, err)
		}
		os.RemoveAll(dir)
		l, err := tarball.LayerFromFile(file, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		layers = append(layers, l)
	}
	return NewImage(spec.Config, append(layers, spec.Extra...)...)
}

// NewImage is a linux/amd64 image of layers with cfg, with OCI media types
// throughout (skopeo's oci: transport looks only at OCI manifests).
func NewImage(cfg v1.Config, layers ...v1.Layer) (v1.Image, error) {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Config = "amd64", "linux", cfg
	return mutate.ConfigFile(img, cf)
}

// WriteLayout writes img as an OCI image layout at dir, tagged tag (the
// org.opencontainers.image.ref.name that skopeo's oci:DIR:TAG names).
func WriteLayout(dir, tag string, img v1.Image) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}))
}

// SymlinkLayer is a layer of one symlink (name -> target), with its parent
// directories.
func SymlinkLayer(name, target string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	parts := strings.Split(filepath.ToSlash(filepath.Dir(name)), "/")
	for i := range parts {
		if parts[i] == "." {
			continue
		}
		if err := tw.WriteHeader(&tar.Header{Name: strings.Join(parts[:i+1], "/") + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return nil, err
		}
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777}); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		tarball.WithMediaType(types.OCILayer))
}

// writeLayer writes dir as a gzip tar with root-owned entries, keeping
// modes and symlinks, in sorted order.
func writeLayer(dir, file string) (err error) {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	gz, _ := gzip.NewWriterLevel(f, gzip.DefaultCompression)
	tw := tar.NewWriter(gz)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if st.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(st, link)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr.Name = filepath.ToSlash(rel)
		if st.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if st.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if _, err := tw.Write(data); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}
