package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/oci/debimage"
)

// ociLayer is a gzip layer of regular files (name -> content).
func ociLayer(t *testing.T, files ...string) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: f, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f))})
		tw.Write([]byte(f))
	}
	tw.Close()
	data := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestPullBadInputLeavesNothing: every refused pull through the daemon
// names its cause, registers no image and leaves no image directory,
// unpack tree or partial download.
func TestPullBadInputLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("unpacking layers needs root (owners and device nodes)")
	}
	e := newEnv(t, envOpts{})
	e.importImage()

	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	var corrupt string // blob digest served with one byte changed
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if corrupt != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+corrupt) {
			rec := httptest.NewRecorder()
			reg.ServeHTTP(rec, r)
			body := rec.Body.Bytes()
			body[len(body)/2] ^= 0xff
			w.WriteHeader(rec.Code)
			w.Write(body)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	push := func(repo string, img v1.Image) string {
		ref := host + "/" + repo
		r, err := name.ParseReference(ref)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r, img); err != nil {
			t.Fatal(err)
		}
		return ref
	}
	image := func(arch string, layers ...v1.Layer) v1.Image {
		img, err := debimage.NewImage(v1.Config{Cmd: []string{"/x"}}, layers...)
		if err != nil {
			t.Fatal(err)
		}
		if arch != "amd64" {
			cf, _ := img.ConfigFile()
			cf = cf.DeepCopy()
			cf.Architecture = arch
			if img, err = mutate.ConfigFile(img, cf); err != nil {
				t.Fatal(err)
			}
		}
		return img
	}
	corruptLayer := ociLayer(t, "etc/corrupt")
	d, _ := corruptLayer.Digest()
	corrupt = d.String()

	cases := []struct {
		ref  string
		want []string
	}{
		{push("escape:1", image("amd64", ociLayer(t, "ok", "../escaped"))), []string{"unsafe layer entry", "layer 1/1", "../escaped"}},
		{push("corrupt:1", image("amd64", ociLayer(t, "ok"), corruptLayer)), []string{"digest mismatch", "layer 2/2 (" + corrupt[:19] + ")"}},
		{push("arm:1", image("arm64", ociLayer(t, "arm"))), []string{"no linux/amd64 image", "linux/arm64"}},
		{host + "/missing:1", []string{"not found"}},
	}
	check := func(ref string, want []string) {
		t.Helper()
		var lines []string
		err := e.c.PullImage(context.Background(), client.PullImageRequest{Ref: ref}, func(l string) { lines = append(lines, l) })
		if err == nil {
			t.Fatalf("pull %s succeeded: %q", ref, lines)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("pull %s: error %q does not say %q", ref, err, w)
			}
		}
		ims, err := e.c.ListImages(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(ims) != 1 || ims[0].Name != "base" {
			t.Errorf("after pull %s: images %+v, want only base", ref, ims)
		}
		left, _ := filepath.Glob(filepath.Join(e.cfg.StateDir, "images", "*"))
		hidden, _ := filepath.Glob(filepath.Join(e.cfg.StateDir, "images", ".*"))
		tmp, _ := filepath.Glob(filepath.Join(e.cfg.StateDir, "oci-cache", "tmp", "*"))
		if all := append(append(left, hidden...), tmp...); len(all) != 0 {
			t.Errorf("after pull %s: left %v", ref, all)
		}
	}
	for _, c := range cases {
		check(c.ref, c.want)
	}
	// The configured cap (oci_max_size) refuses an image before any
	// download.
	e.crash()
	e.cfg.OCIMaxSize = "100"
	e.start()
	check(push("capped:1", image("amd64", ociLayer(t, strings.Repeat("long-name/", 20)+"f"))), []string{"image too large", "the limit is 100"})
}
