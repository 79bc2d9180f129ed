package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/oci/debimage"
	"github.com/banger-dev/banger/internal/system"
)

// cmdOCIImage builds the pull benchmark's image from Debian packages (the
// named packages with their dependency closure, spread over -layers gzip
// layers) and writes it as an OCI layout, tagged; it also fetches banger's
// guest packages into the same cache, so that pulls in a namespace with no
// mirror find them.
func cmdOCIImage(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("ociimage", flag.ContinueOnError)
	out := fs.String("o", "", "OCI layout directory to write")
	tag := fs.String("tag", "1", "tag in the layout")
	pkgs := fs.String("packages", "python3", "packages (comma-separated), with their dependencies")
	layers := fs.Int("layers", 6, "layers")
	debs := fs.String("debs", "/var/cache/banger/debs", ".deb cache")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("-o is required")
	}
	r := system.ExecRunner{}
	names, err := debimage.Closure(ctx, r, strings.Split(*pkgs, ",")...)
	if err != nil {
		return err
	}
	scratch, err := os.MkdirTemp(filepath.Dir(*out), ".ociimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	if _, err := image.FetchDebs(ctx, r, scratch, *debs, image.GuestPackages()); err != nil {
		return err
	}
	var extra []v1.Layer
	if l, err := debimage.SymlinkLayer("usr/bin/python3", "python3.11"); err == nil && strings.Contains(*pkgs, "python3") {
		extra = append(extra, l)
	}
	img, err := debimage.Build(ctx, r, *debs, scratch, debimage.Spec{Packages: names, Layers: *layers, Extra: extra,
		Config: v1.Config{Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}, Cmd: []string{"python3"}}})
	if err != nil {
		return err
	}
	if err := debimage.WriteLayout(*out, *tag, img); err != nil {
		return err
	}
	ls, _ := img.Layers()
	var blobs int64
	for _, l := range ls {
		n, _ := l.Size()
		blobs += n
	}
	fmt.Printf("image: %d packages (%s) in %d layers, %.1f MB of gzip blobs\n", len(names), *pkgs, len(ls), float64(blobs)/1e6)
	return nil
}
