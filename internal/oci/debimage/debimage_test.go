package debimage

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/banger-dev/banger/internal/system"
)

func TestBuildWritesLayoutFromPackages(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := system.ExecRunner{}
	names, err := Closure(ctx, r, "busybox-static")
	if err != nil {
		t.Skipf("apt-cache unavailable: %v", err)
	}
	if len(names) != 1 || names[0] != "busybox-static" {
		t.Errorf("closure of busybox-static = %v (it depends on nothing)", names)
	}
	dir := t.TempDir()
	link, err := SymlinkLayer("usr/bin/sh", "/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	img, err := Build(ctx, r, "/var/cache/banger/debs", dir, Spec{Packages: names, Layers: 3,
		Config: v1.Config{Cmd: []string{"/bin/busybox", "true"}}, Extra: []v1.Layer{link}})
	if err != nil {
		t.Skipf("debian packages unavailable (mirror unreachable?): %v", err)
	}
	if err := WriteLayout(filepath.Join(dir, "layout"), "1", img); err != nil {
		t.Fatal(err)
	}
	p, err := layout.FromPath(filepath.Join(dir, "layout"))
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "1" {
		t.Fatalf("layout index = %+v", im)
	}
	got, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ls, _ := got.Layers()
	cf, _ := got.ConfigFile()
	// One package, so one package layer whatever -layers says, and the symlink.
	if len(ls) != 2 || cf.Architecture != "amd64" || cf.OS != "linux" || cf.Config.Cmd[0] != "/bin/busybox" {
		t.Errorf("image: %d layers, %s/%s, cmd %v", len(ls), cf.OS, cf.Architecture, cf.Config.Cmd)
	}
	if mt, _ := got.MediaType(); mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest media type %s", mt)
	}
	if _, err := os.Stat(filepath.Join(dir, "layer0.tar.gz")); err != nil {
		t.Errorf("layer file: %v", err)
	}
}
