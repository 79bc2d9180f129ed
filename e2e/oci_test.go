package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestOCIImage: a container image with no shell, no init and no SSH server
// of its own, pushed with skopeo to a real registry server (Debian's
// docker-registry on loopback in the suite's namespace), is pulled by
// banger, boots, and serves vm run with its ENV, WORKDIR, USER, ENTRYPOINT
// and CMD applied; a second pull of the same image downloads no layer.
func TestOCIImage(t *testing.T) {
	requireSuite(t)
	for _, tool := range []string{"docker-registry", "skopeo"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Skipf("%s not installed (scripts/host-deps.sh installs it)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	work := t.TempDir()
	// The image's program: a static binary.
	hello := filepath.Join(work, "hello")
	if err := system.GoBuild(ctx, "./e2e/testdata/ocihello", hello); err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile(hello)
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755, Uid: 1000, Gid: 1000})
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "bin/hello", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(prog))})
	tw.Write(prog)
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(tb.Bytes())), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	// OCI media types throughout: skopeo's oci: transport looks only at OCI manifests.
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config = v1.Config{Env: []string{"GREETING=hello from the image", "PATH=/bin"}, WorkingDir: "/app", User: "1000",
		Entrypoint: []string{"/bin/hello"}, Cmd: []string{"from-cmd"}}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	lay := filepath.Join(work, "layout")
	p, err := layout.Write(lay, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "1"})); err != nil {
		t.Fatal(err)
	}
	// A real registry server on loopback in the suite's namespace.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(work, "registry.yml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(work, "reg"), addr)), 0o644)
	reg, err := system.StartCommand(ctx, system.CommandSpec{Argv: []string{"docker-registry", "serve", cfg}, Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Wait()
	defer cancel()
	eventually(t, 20*time.Second, "registry listening", func() (bool, string) {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil, fmt.Sprint(err)
	})
	ref := addr + "/hello:1"
	var out, errOut bytes.Buffer
	sk, err := system.StartCommand(ctx, system.CommandSpec{Argv: []string{"skopeo", "copy", "--dest-tls-verify=false", "oci:" + lay + ":1", "docker://" + ref}, Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := sk.Wait(); err != nil || st.Code != 0 {
		t.Fatalf("skopeo copy: %v %+v: %s", err, st, errOut.String())
	}

	name := "hello-1"
	t.Cleanup(func() { runCLI(nil, cliTimeout, "image", "delete", name) })
	start := time.Now()
	pulled := mustBanger(t, "image", "pull", ref)
	t.Logf("TIMING pull+convert %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(pulled, "ok "+name) {
		t.Fatalf("pull output: %s", pulled)
	}
	show := mustBanger(t, "image", "show", name)
	for _, want := range []string{ref, "sha256:", "linux/amd64", `"/bin/hello"`} {
		if !strings.Contains(show, want) {
			t.Errorf("image show lacks %q: %s", want, show)
		}
	}
	vm := "e2e-oci"
	deleteAtEnd(t, vm)
	got := mustBanger(t, append(append([]string{"vm", "run", "--name", vm, "--image", name}, createFlags...), "--", "/bin/hello", "a", "b")...)
	if want := "args=[a b] cwd=/app greeting=hello from the image uid=1000\n"; got != want {
		t.Errorf("command in the image = %q, want %q", got, want)
	}
	// No command: ENTRYPOINT + CMD; the reference names the pulled image.
	if got := mustBanger(t, "vm", "run", "--name", vm, "--image", ref); !strings.HasPrefix(got, "args=[from-cmd]") {
		t.Errorf("default command = %q", got)
	}
	// Files in and out of an image with no tar of its own.
	src := filepath.Join(work, "note.txt")
	os.WriteFile(src, []byte("from the host\n"), 0o644)
	if _, errOut, code := banger(t, "vm", "cp", src, vm+":/tmp/note.txt"); code != 0 {
		t.Errorf("vm cp into the image: %s", errOut)
	} else if got := mustBanger(t, "vm", "exec", vm, "--", "/bin/hello", "cat", "/tmp/note.txt"); got != "from the host\n" {
		t.Errorf("copied file reads %q", got)
	}
	// A second pull of the same image downloads no layer: everything is cached.
	mustBanger(t, "vm", "delete", "--force", vm)
	mustBanger(t, "image", "delete", name)
	again := mustBanger(t, "image", "pull", ref)
	if !strings.Contains(again, "cached") {
		t.Errorf("second pull downloaded again: %s", again)
	}
}
