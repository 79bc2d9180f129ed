package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/system"
)

// debCache keeps the .debs between test runs, shared with internal/image's
// tests, so that repeated runs download nothing.
const debCache = "/var/cache/banger/debs"

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (run as root, e.g. make test)")
	}
}

// testRegistry is an in-process registry on 127.0.0.1 that counts the
// requests for each blob and can misbehave on chosen ones.
type testRegistry struct {
	srv  *httptest.Server
	host string

	mu      sync.Mutex
	gets    map[string]int                                                    // blob digest -> GET count
	faults  map[string]func(http.ResponseWriter, *http.Request, http.Handler) // by blob or manifest digest
	auth    [2]string                                                         // user, password; "" when open
	refused int
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	tr := &testRegistry{gets: map[string]int{}, faults: map[string]func(http.ResponseWriter, *http.Request, http.Handler){}}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	tr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tr.mu.Lock()
		auth := tr.auth
		tr.mu.Unlock()
		if auth[0] != "" {
			u, p, ok := r.BasicAuth()
			if !ok || u != auth[0] || p != auth[1] {
				tr.mu.Lock()
				tr.refused++
				tr.mu.Unlock()
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}`, http.StatusUnauthorized)
				return
			}
		}
		last := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		tr.mu.Lock()
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			tr.gets[last]++
		}
		fault := tr.faults[last]
		tr.mu.Unlock()
		if fault != nil && r.Method == http.MethodGet {
			fault(w, r, reg)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(tr.srv.Close)
	tr.host = strings.TrimPrefix(tr.srv.URL, "http://")
	return tr
}

func (tr *testRegistry) ref(repo string) string { return tr.host + "/" + repo }

func (tr *testRegistry) blobGets(digest string) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.gets[digest]
}

func (tr *testRegistry) setFault(digest string, f func(http.ResponseWriter, *http.Request, http.Handler)) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.faults[digest] = f
}

func (tr *testRegistry) push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

func (tr *testRegistry) pushIndex(t *testing.T, ref string, idx v1.ImageIndex) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(r, idx); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
}

// recorded responses: a fault handler can let the registry answer into a
// buffer and then send a damaged copy.
func recordResponse(r *http.Request, h http.Handler) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// entry is one tar member of a test layer.
type entry struct {
	name     string
	typ      byte // tar.TypeReg when 0
	body     string
	mode     int64
	uid, gid int
	link     string
	major    int64
	minor    int64
	pax      map[string]string
}

// layerTar renders entries as an uncompressed tar.
func layerTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		hdr := &tar.Header{
			Name: e.name, Typeflag: typ, Mode: mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			Devmajor: e.major, Devminor: e.minor, ModTime: time.Unix(1700000000, 0), PAXRecords: e.pax,
			Format: tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %s: %v", e.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// gzLayer is a gzip-compressed layer from a tar.
func gzLayer(t testing.TB, tarData []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(tarData)), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testImage builds an image of layers for os/arch with cfg.
func testImage(t testing.TB, arch string, cfg v1.Config, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", arch, cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// layerDigests lists an image's layer digests.
func layerDigests(t testing.TB, img v1.Image) []string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d.String())
	}
	return out
}

// fetchDebs downloads packages into debCache (or finds them there) and
// returns their files, or skips the test when apt cannot.
func fetchDebs(t *testing.T, names ...string) []image.DebFile {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	debs, err := image.FetchDebs(ctx, system.ExecRunner{}, t.TempDir(), debCache, names)
	if err != nil {
		t.Skipf("debian packages unavailable (mirror unreachable?): %v", err)
	}
	return debs
}

// dirLayer turns a directory (e.g. an unpacked .deb) into a tar with
// root-owned entries, keeping modes and symlinks.
func dirLayer(t testing.TB, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(paths)
	for _, p := range paths {
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		link := ""
		if st.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				t.Fatal(err)
			}
		}
		hdr, err := tar.FileInfoHeader(st, link)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		hdr.Name = filepath.ToSlash(rel)
		if st.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if st.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			tw.Write(data)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// debLayer unpacks a .deb and makes it a layer.
func debLayer(t *testing.T, deb image.DebFile) v1.Layer {
	t.Helper()
	dir := t.TempDir()
	if err := image.UnpackDeb(context.Background(), system.ExecRunner{}, deb.Path, dir); err != nil {
		t.Fatalf("unpacking %s: %v", deb.Name, err)
	}
	return gzLayer(t, dirLayer(t, dir))
}

// listTree renders a tree as sorted lines "path type mode uid:gid [target|content]".
func listTree(t testing.TB, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(interface{}) // *syscall.Stat_t
		uid, gid := statOwner(sys)
		line := fmt.Sprintf("%s %s %04o %d:%d", rel, typeChar(st.Mode()), st.Mode().Perm()|setBits(st.Mode()), uid, gid)
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case st.Mode().IsRegular():
			data, _ := os.ReadFile(p)
			line += " " + strings.TrimSpace(string(data))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(lines, "\n")
}

func typeChar(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "d"
	case m&fs.ModeSymlink != 0:
		return "l"
	case m&fs.ModeCharDevice != 0:
		return "c"
	case m&fs.ModeDevice != 0:
		return "b"
	case m&fs.ModeNamedPipe != 0:
		return "p"
	}
	return "f"
}

func setBits(m fs.FileMode) fs.FileMode {
	var b fs.FileMode
	if m&fs.ModeSetuid != 0 {
		b |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		b |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		b |= 0o1000
	}
	return b
}

// agentOnce builds cmd/banger-agent once per test binary, for the builds
// that put the guest agent into an image.
var agentOnce struct {
	once sync.Once
	path string
	err  error
}

func testAgent(t testing.TB) string {
	t.Helper()
	agentOnce.once.Do(func() {
		dir, err := os.MkdirTemp("", "banger-oci-agent-")
		if err != nil {
			agentOnce.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		p := filepath.Join(dir, "banger-agent")
		if agentOnce.err = system.GoBuild(ctx, "./cmd/banger-agent", p, "netgo", "osusergo"); agentOnce.err == nil {
			agentOnce.path = p
		}
	})
	if agentOnce.err != nil {
		t.Fatalf("building the guest agent: %v", agentOnce.err)
	}
	return agentOnce.path
}
