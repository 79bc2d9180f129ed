package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/oci/debimage"
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
// banger, boots, and serves vm run, exec and sessions with its ENV,
// WORKDIR, USER, ENTRYPOINT and CMD applied, and vm cp; a second pull of
// the same image downloads no layer and builds no filesystem. Then a
// Python image built from Debian packages runs python3 -c 'print(6*7)'
// through vm run --image REF, pulled on first use.
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
	skopeoPush(ctx, t, lay, "1", ref)

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
	// Forks: a guest whose agent does not answer is refused soon, with the
	// reason, and nothing is left behind (the agent is stopped for this);
	// with the agent answering, a clone has its own name and host key and
	// the source's memory.
	inGuest := func(vm, script string) string {
		return strings.TrimSpace(mustBanger(t, "vm", "exec", vm, "--user", "root", "--", "/.banger/bin/sh", "-c", script))
	}
	hostKey := "/.banger/bin/dropbearkey -y -f /run/banger/dropbear_ed25519_host_key | /.banger/bin/grep ^ssh-"
	srcKey := inGuest(vm, hostKey)
	inGuest(vm, "kill -STOP $(/.banger/bin/pidof agent)")
	forkStart := time.Now()
	if _, errOut, code := banger(t, "vm", "fork", vm); code == 0 || !strings.Contains(errOut, "guest agent") {
		t.Errorf("vm fork with the guest agent stopped = exit %d, stderr %q; want a refusal naming the guest agent", code, errOut)
	}
	if took := time.Since(forkStart); took > 30*time.Second {
		t.Errorf("vm fork took %s to be refused", took.Round(time.Millisecond))
	}
	if out := mustBanger(t, "vm", "list", "-q"); strings.Contains(out, "-fork-") {
		t.Errorf("a refused fork left a clone: %q", out)
	}
	if out := mustBanger(t, "snapshot", "list"); strings.Contains(out, "fork-") {
		t.Errorf("a refused fork left its snapshot: %q", out)
	}
	inGuest(vm, "kill -CONT $(/.banger/bin/pidof agent)")
	clones := strings.Fields(mustBanger(t, "vm", "fork", vm))
	if len(clones) != 1 {
		t.Fatalf("vm fork printed %q, want one name", clones)
	}
	clone := clones[0]
	deleteAtEnd(t, clone)
	if got := inGuest(clone, "/.banger/bin/hostname"); got != clone {
		t.Errorf("clone hostname %q, want %q", got, clone)
	}
	cloneKey := inGuest(clone, hostKey)
	if cloneKey == "" || cloneKey == srcKey {
		t.Errorf("clone serves host key %q, the source %q: want a key of its own", cloneKey, srcKey)
	}
	if got := mustBanger(t, "vm", "exec", clone, "--", "/bin/hello", "cat", "/tmp/note.txt"); got != "from the host\n" {
		t.Errorf("the clone's copy of the source's /tmp/note.txt reads %q", got)
	}
	// A cold boot of the clone keeps its key (the host wrote it to the
	// clone's disk): the pinned SSH connection still works.
	mustBanger(t, "vm", "restart", clone)
	if key := inGuest(clone, hostKey); key != cloneKey {
		t.Errorf("after a restart the clone serves %q, before %q", key, cloneKey)
	}
	mustBanger(t, "vm", "delete", "--force", clone)
	// ENV, WORKDIR and USER apply to exec and sessions too.
	if got, want := mustBanger(t, "vm", "exec", vm, "--", "/bin/hello", "x"), "args=[x] cwd=/app greeting=hello from the image uid=1000\n"; got != want {
		t.Errorf("exec in the image = %q, want %q", got, want)
	}
	mustBanger(t, "vm", "session", "start", vm, "--name", "hello", "--", "/bin/hello", "from-session")
	eventually(t, 30*time.Second, "session output", func() (bool, string) {
		out, _, _ := banger(t, "vm", "session", "logs", vm, "hello")
		return out == "args=[from-session] cwd=/app greeting=hello from the image uid=1000\n", out
	})
	// --user overrides USER (the image has no /etc/passwd: root and its
	// USER get entries at boot); a user the guest lacks is exit 126.
	if got, want := mustBanger(t, "vm", "exec", vm, "--user", "root", "--", "/bin/hello", "y"), "args=[y] cwd=/app greeting=hello from the image uid=0\n"; got != want {
		t.Errorf("exec --user root in the image = %q, want %q", got, want)
	}
	if _, errOut, code := banger(t, "vm", "exec", vm, "--user", "nosuch", "--", "/bin/hello"); code != 126 || !strings.Contains(errOut, `no user "nosuch"`) {
		t.Errorf("exec --user nosuch = exit %d, stderr %q; want 126 and the reason", code, errOut)
	}
	mustBanger(t, "vm", "session", "start", vm, "--name", "asroot", "--user", "0", "--", "/bin/hello", "as-root")
	eventually(t, 30*time.Second, "session output as root", func() (bool, string) {
		out, _, _ := banger(t, "vm", "session", "logs", vm, "asroot")
		return out == "args=[as-root] cwd=/app greeting=hello from the image uid=0\n", out
	})
	// A second pull of the same image downloads no layer and builds no
	// filesystem: the layers and the built rootfs are cached.
	mustBanger(t, "vm", "delete", "--force", vm)
	mustBanger(t, "image", "delete", name)
	start = time.Now()
	again := mustBanger(t, "image", "pull", ref)
	t.Logf("TIMING second pull %s", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(again, "cached") || !strings.Contains(again, "rootfs from the cache") || strings.Contains(again, "unpacking") {
		t.Errorf("second pull downloaded or built again: %s", again)
	}
	if got := mustBanger(t, "vm", "run", "--name", vm, "--image", name, "--", "/bin/hello", "again"); !strings.HasPrefix(got, "args=[again] cwd=/app") {
		t.Errorf("image from the cache runs %q", got)
	}
	mustBanger(t, "vm", "delete", "--force", vm)
	// image prune keeps the cached layer and rootfs of a registered image;
	// --all removes them, and the next pull downloads and builds again.
	var pruned client.PruneImagesResult
	if err := json.Unmarshal([]byte(mustBanger(t, "image", "prune", "-o", "json")), &pruned); err != nil {
		t.Fatal(err)
	}
	if pruned.KeptLayers.Count < 1 || pruned.KeptRootfs.Count < 1 {
		t.Errorf("image prune with %s registered = %+v, want its layer and rootfs kept", name, pruned)
	}
	if err := json.Unmarshal([]byte(mustBanger(t, "image", "prune", "--all", "-o", "json")), &pruned); err != nil {
		t.Fatal(err)
	}
	if pruned.RemovedLayers.Count < 1 || pruned.RemovedRootfs.Count < 1 || pruned.KeptLayers.Count != 0 || pruned.KeptRootfs.Count != 0 {
		t.Errorf("image prune --all = %+v, want everything removed", pruned)
	}
	t.Cleanup(func() { runCLI(nil, cliTimeout, "image", "delete", "hello-again") })
	if again := mustBanger(t, "image", "pull", ref, "--name", "hello-again"); strings.Contains(again, "cached") || !strings.Contains(again, "unpacking") {
		t.Errorf("pull after image prune --all used a cache: %s", again)
	}
	mustBanger(t, "image", "delete", "hello-again")

	// Python from Debian's python3.11-minimal and its dependencies, pulled
	// on first use by vm run --image.
	if why := os.Getenv(pythonDebsEnv); why != "" {
		t.Skipf("python packages were not fetched before the suite: %s", why)
	}
	names, err := debimage.Closure(ctx, system.ExecRunner{}, "python3.11-minimal")
	if err != nil {
		t.Fatal(err)
	}
	link, err := debimage.SymlinkLayer("usr/bin/python3", "python3.11")
	if err != nil {
		t.Fatal(err)
	}
	pyImg, err := debimage.Build(ctx, system.ExecRunner{}, os.Getenv("BANGER_IMAGE_CACHE_DIR"), t.TempDir(), debimage.Spec{
		Packages: names, Layers: 3, Extra: []v1.Layer{link},
		Config: v1.Config{Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin"}, Cmd: []string{"python3"}}})
	if err != nil {
		t.Fatalf("building the python image from %v: %v", names, err)
	}
	pyLayout := filepath.Join(work, "pylayout")
	if err := debimage.WriteLayout(pyLayout, "3.11", pyImg); err != nil {
		t.Fatal(err)
	}
	pyRef := addr + "/python:3.11"
	skopeoPush(ctx, t, pyLayout, "3.11", pyRef)
	pyVM := "e2e-oci-py"
	// Cleanups run last first: the VM goes before its image.
	t.Cleanup(func() { runCLI(nil, cliTimeout, "image", "delete", model.ImageNameFromRef(pyRef)) })
	deleteAtEnd(t, pyVM)
	start = time.Now()
	got = mustBanger(t, append(append([]string{"vm", "run", "--name", pyVM, "--image", pyRef}, createFlags...), "--", "python3", "-c", "print(6*7)")...)
	t.Logf("TIMING python: pull, boot and run %s (%d packages)", time.Since(start).Round(time.Millisecond), len(names))
	if got != "42\n" {
		t.Errorf("python3 -c 'print(6*7)' printed %q, want 42", got)
	}
}

// skopeoPush copies the image tagged tag in an OCI layout to ref on the
// suite's registry.
func skopeoPush(ctx context.Context, t *testing.T, layoutDir, tag, ref string) {
	t.Helper()
	var out, errOut bytes.Buffer
	sk, err := system.StartCommand(ctx, system.CommandSpec{Argv: []string{"skopeo", "copy", "--dest-tls-verify=false", "oci:" + layoutDir + ":" + tag, "docker://" + ref}, Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := sk.Wait(); err != nil || st.Code != 0 {
		t.Fatalf("skopeo copy: %v %+v: %s", err, st, errOut.String())
	}
}

// pythonDebsEnv says why the python image's packages could not be fetched
// before the suite entered its namespace (empty: they were).
const pythonDebsEnv = "BANGER_E2E_PYTHON_DEBS"

// fetchPythonDebs brings python3.11-minimal and its dependencies into the
// suite's package cache while the Debian mirror is reachable.
func fetchPythonDebs(ctx context.Context, scratch string) error {
	names, err := debimage.Closure(ctx, system.ExecRunner{}, "python3.11-minimal")
	if err != nil {
		return err
	}
	_, err = image.FetchDebs(ctx, system.ExecRunner{}, scratch, os.Getenv("BANGER_IMAGE_CACHE_DIR"), names)
	return err
}
