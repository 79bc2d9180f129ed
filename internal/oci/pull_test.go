package oci

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// smallImage is a two-layer image whose layers are unique to the test.
func smallImage(t *testing.T, arch, tag string) v1.Image {
	return testImage(t, arch, v1.Config{Cmd: []string{"/bin/hello"}, Env: []string{"PATH=/bin"}},
		gzLayer(t, layerTar(t, []entry{{name: "bin/", typ: '5'}, {name: "bin/hello", body: "hello " + tag, mode: 0o755}})),
		gzLayer(t, layerTar(t, []entry{{name: "etc/", typ: '5'}, {name: "etc/tag", body: tag}})),
	)
}

// cacheFiles lists what is in the cache's blob and tmp directories.
func cacheFiles(t *testing.T, cache string) (blobs, tmp []string) {
	t.Helper()
	b, _ := os.ReadDir(filepath.Join(cache, "blobs", "sha256"))
	for _, e := range b {
		blobs = append(blobs, "sha256:"+e.Name())
	}
	tm, _ := os.ReadDir(filepath.Join(cache, "tmp"))
	for _, e := range tm {
		tmp = append(tmp, e.Name())
	}
	return blobs, tmp
}

func TestPullCachesLayersAndSecondPullDownloadsNone(t *testing.T) {
	reg := newTestRegistry(t)
	img := smallImage(t, "amd64", t.Name())
	reg.push(t, reg.ref("small:1"), img)
	cache := t.TempDir()
	var progress []Progress
	got, err := Pull(context.Background(), reg.ref("small:1"), PullOptions{CacheDir: cache, Progress: func(p Progress) { progress = append(progress, p) }})
	if err != nil {
		t.Fatal(err)
	}
	want := layerDigests(t, img)
	if len(got.Layers) != 2 || got.Layers[0].Digest != want[0] || got.Layers[1].Digest != want[1] {
		t.Fatalf("layers = %+v, want digests %v", got.Layers, want)
	}
	md, _ := img.Digest()
	if got.Digest != md.String() || got.Platform != "linux/amd64" {
		t.Errorf("digest %s platform %s, want %s linux/amd64", got.Digest, got.Platform, md)
	}
	if strings.Join(got.Config.Cmd, " ") != "/bin/hello" || strings.Join(got.Config.Env, " ") != "PATH=/bin" {
		t.Errorf("config = %+v", got.Config)
	}
	for _, d := range want {
		if n := reg.blobGets(d); n != 1 {
			t.Errorf("first pull fetched layer %s %d times, want 1", d, n)
		}
		p, _ := blobPath(cache, d)
		data, err := os.ReadFile(p)
		if err != nil || sha256Digest(data) != d {
			t.Errorf("cached blob %s missing or wrong: %v", d, err)
		}
	}
	last := progress[len(progress)-1]
	if last.Layer != 1 || last.Done != last.Total || last.Cached {
		t.Errorf("last progress = %+v", last)
	}

	progress = nil
	if _, err := Pull(context.Background(), reg.ref("small:1"), PullOptions{CacheDir: cache, Progress: func(p Progress) { progress = append(progress, p) }}); err != nil {
		t.Fatal(err)
	}
	for _, d := range want {
		if n := reg.blobGets(d); n != 1 {
			t.Errorf("second pull fetched layer %s again (%d GETs in all)", d, n)
		}
	}
	for _, p := range progress {
		if !p.Cached {
			t.Errorf("second pull reported a download: %+v", p)
		}
	}
}

func TestPullResolvesIndexToAMD64(t *testing.T) {
	reg := newTestRegistry(t)
	amd := smallImage(t, "amd64", "amd")
	arm := smallImage(t, "arm64", "arm")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	reg.pushIndex(t, reg.ref("multi:1"), idx)
	got, err := Pull(context.Background(), reg.ref("multi:1"), PullOptions{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ad, _ := amd.Digest()
	if got.Digest != ad.String() {
		t.Errorf("pulled %s, want the amd64 manifest %s", got.Digest, ad)
	}
	for _, d := range layerDigests(t, arm) {
		if reg.blobGets(d) != 0 {
			t.Errorf("arm64 layer %s was downloaded", d)
		}
	}

	armOnly := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	reg.pushIndex(t, reg.ref("armonly:1"), armOnly)
	cache := t.TempDir()
	_, err = Pull(context.Background(), reg.ref("armonly:1"), PullOptions{CacheDir: cache})
	if !errors.Is(err, ErrPlatform) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Fatalf("index without amd64: err = %v, want ErrPlatform naming linux/arm64", err)
	}
	if blobs, _ := cacheFiles(t, cache); len(blobs) != 0 {
		t.Errorf("cache holds %v after a refused pull", blobs)
	}

	reg.push(t, reg.ref("arm:1"), arm)
	_, err = Pull(context.Background(), reg.ref("arm:1"), PullOptions{CacheDir: cache})
	if !errors.Is(err, ErrPlatform) || !strings.Contains(err.Error(), "linux/arm64") {
		t.Fatalf("arm64 image: err = %v, want ErrPlatform", err)
	}
}

func TestPullRefusesImageOverMaxSize(t *testing.T) {
	reg := newTestRegistry(t)
	img := smallImage(t, "amd64", t.Name())
	reg.push(t, reg.ref("big:1"), img)
	_, err := Pull(context.Background(), reg.ref("big:1"), PullOptions{CacheDir: t.TempDir(), MaxSize: 10})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
	for _, d := range layerDigests(t, img) {
		if reg.blobGets(d) != 0 {
			t.Errorf("layer %s downloaded although the image is over the cap", d)
		}
	}
}

func TestPullLayerFaults(t *testing.T) {
	cases := []struct {
		name  string
		fault func(w http.ResponseWriter, r *http.Request, h http.Handler)
		want  error
	}{
		{"digest mismatch", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			rec := recordResponse(r, h)
			body := rec.Body.Bytes()
			body[len(body)/2] ^= 0xff
			w.WriteHeader(rec.Code)
			w.Write(body)
		}, ErrDigestMismatch},
		{"truncated", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			rec := recordResponse(r, h)
			body := rec.Body.Bytes()
			// Claims the full length, sends half, closes.
			w.Header().Set("Content-Length", "")
			w.WriteHeader(rec.Code)
			w.Write(body[:len(body)/2])
		}, ErrTruncated},
		{"stall", func(w http.ResponseWriter, r *http.Request, h http.Handler) {
			rec := recordResponse(r, h)
			body := rec.Body.Bytes()
			w.WriteHeader(rec.Code)
			w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		}, ErrStalled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reg := newTestRegistry(t)
			img := smallImage(t, "amd64", t.Name())
			reg.push(t, reg.ref("bad:1"), img)
			layers := layerDigests(t, img)
			reg.setFault(layers[1], c.fault)
			cache := t.TempDir()
			start := time.Now()
			_, err := Pull(context.Background(), reg.ref("bad:1"), PullOptions{CacheDir: cache, IdleTimeout: 300 * time.Millisecond})
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), "layer 2/2 ("+short(layers[1])+")") {
				t.Errorf("error does not name the layer: %v", err)
			}
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %s to fail", time.Since(start))
			}
			blobs, tmp := cacheFiles(t, cache)
			if len(tmp) != 0 {
				t.Errorf("partial downloads left: %v", tmp)
			}
			// The good layer is kept (and reused next time), the bad one not.
			if len(blobs) != 1 || blobs[0] != layers[0] {
				t.Errorf("cache holds %v, want only %s", blobs, layers[0])
			}
		})
	}
}

func TestPullManifestDigestMismatch(t *testing.T) {
	reg := newTestRegistry(t)
	img := smallImage(t, "amd64", t.Name())
	reg.push(t, reg.ref("m:1"), img)
	d, _ := img.Digest()
	reg.setFault(d.String(), func(w http.ResponseWriter, r *http.Request, h http.Handler) {
		rec := recordResponse(r, h)
		// Still valid JSON, different bytes.
		body := bytes.Replace(rec.Body.Bytes(), []byte(`"schemaVersion":2`), []byte(`"schemaVersion": 2`), 1)
		if bytes.Equal(body, rec.Body.Bytes()) {
			t.Error("manifest not altered")
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.Header().Del("Content-Length")
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
	cache := t.TempDir()
	_, err := Pull(context.Background(), reg.ref("m@"+d.String()), PullOptions{CacheDir: cache})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	t.Logf("error: %v", err)
	if blobs, _ := cacheFiles(t, cache); len(blobs) != 0 {
		t.Errorf("cache holds %v after a bad manifest", blobs)
	}
}

func TestPullAuth(t *testing.T) {
	reg := newTestRegistry(t)
	img := smallImage(t, "amd64", t.Name())
	reg.push(t, reg.ref("private:1"), img)
	reg.auth = [2]string{"alice", "s3cret"}

	dockerCfg := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dockerCfg)
	writeAuth := func(user, pass string) {
		cfg := `{"auths":{"` + reg.host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}}}`
		if err := os.WriteFile(filepath.Join(dockerCfg, "config.json"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// No credentials at all: the registry's 401 is the error, named.
	_, err := Pull(context.Background(), reg.ref("private:1"), PullOptions{CacheDir: t.TempDir()})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("no credentials: err = %v, want ErrUnauthorized", err)
	}
	writeAuth("alice", "wrong")
	_, err = Pull(context.Background(), reg.ref("private:1"), PullOptions{CacheDir: t.TempDir()})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong password: err = %v, want ErrUnauthorized", err)
	}
	writeAuth("alice", "s3cret")
	if _, err := Pull(context.Background(), reg.ref("private:1"), PullOptions{CacheDir: t.TempDir()}); err != nil {
		t.Fatalf("with the docker config's credentials: %v", err)
	}
}

func TestPullNotFound(t *testing.T) {
	reg := newTestRegistry(t)
	_, err := Pull(context.Background(), reg.ref("nothing:here"), PullOptions{CacheDir: t.TempDir()})
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestPullRegistryStallsBeforeAnswering(t *testing.T) {
	reg := newTestRegistry(t)
	img := smallImage(t, "amd64", t.Name())
	reg.push(t, reg.ref("slow:1"), img)
	d, _ := img.Digest()
	// The manifest request gets no response headers at all.
	stall := func(w http.ResponseWriter, r *http.Request, h http.Handler) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}
	reg.setFault("1", stall)
	reg.setFault(d.String(), stall)
	cache := t.TempDir()
	start := time.Now()
	_, err := Pull(context.Background(), reg.ref("slow:1"), PullOptions{CacheDir: cache, ResponseTimeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("err = %v, want ErrStalled", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("took %s to give up", took)
	}
	if blobs, tmp := cacheFiles(t, cache); len(blobs)+len(tmp) != 0 {
		t.Errorf("cache holds %v %v", blobs, tmp)
	}
}
