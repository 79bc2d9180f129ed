package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/api"
)

func TestNeedsDefaultImage(t *testing.T) {
	def := client.Image{}
	def.Name, def.Default = "default", true
	other := client.Image{}
	other.Name = "alpine"
	for _, c := range []struct {
		ims   []client.Image
		image string
		want  bool
	}{
		{nil, "", true}, // a fresh host: build, as docker run pulls
		{nil, "docker.io/library/python:3.12", true}, // a container image needs the default kernel
		{nil, "nosuch", false},                       // a missing plain name is an error, not a build
		{[]client.Image{def}, "", false},             // there is one
		{[]client.Image{other}, "alpine", false},     // asked for one that exists
		{[]client.Image{other}, "", true},            // images, but no default
		{[]client.Image{def}, "localhost:5000/app:1", false},
	} {
		if got := needsDefaultImage(c.ims, c.image); got != c.want {
			t.Errorf("needsDefaultImage(%d images, %q) = %v, want %v", len(c.ims), c.image, got, c.want)
		}
	}
}

func TestCleanupAfterRun(t *testing.T) {
	for _, c := range []struct {
		p    runPlan
		ran  bool
		want runCleanup
	}{
		// Failed before the command: nothing this run made is left, an
		// existing VM is left as it was.
		{runPlan{created: true}, false, cleanupDelete},
		{runPlan{created: true, named: true}, false, cleanupDelete},
		{runPlan{created: true, named: true, keep: true}, false, cleanupDelete},
		{runPlan{named: true, wasRunning: false}, false, cleanupStop},
		{runPlan{named: true, wasRunning: true}, false, cleanupNone},
		{runPlan{named: true, wasRunning: true, rm: true}, false, cleanupNone},
		// After the command.
		{runPlan{created: true}, true, cleanupDelete},
		{runPlan{created: true, keep: true}, true, cleanupNone},
		{runPlan{created: true, named: true}, true, cleanupNone},
		{runPlan{created: true, named: true, rm: true}, true, cleanupDelete},
		{runPlan{named: true, wasRunning: true}, true, cleanupNone},
		{runPlan{named: true, wasRunning: true, rm: true}, true, cleanupDelete},
	} {
		if got := cleanupAfterRun(c.p, c.ran); got != c.want {
			t.Errorf("cleanupAfterRun(%+v, ran %v) = %q, want %q", c.p, c.ran, got, c.want)
		}
	}
}

func TestTTLRequest(t *testing.T) {
	for arg, want := range map[string]client.TTLRequest{
		"1h":     {TTLSeconds: 3600},
		"+30m":   {TTLSeconds: 1800, Add: true},
		"7d":     {TTLSeconds: 7 * 86400},
		"1500ms": {TTLSeconds: 2},
		"none":   {Clear: true},
	} {
		if got, err := ttlRequest(arg, ""); err != nil || got != want {
			t.Errorf("ttlRequest(%q) = %+v, %v; want %+v", arg, got, err, want)
		}
	}
	for _, c := range [][2]string{{"0", ""}, {"-1h", ""}, {"+0s", ""}, {"soon", ""}, {"1h", "explode"}, {"none", "stop"}} {
		if got, err := ttlRequest(c[0], c[1]); err == nil {
			t.Errorf("ttlRequest(%q, action %q) = %+v, want an error", c[0], c[1], got)
		} else if exitCode(err) != ExitUsage {
			t.Errorf("ttlRequest(%q, action %q): %v is not a usage error", c[0], c[1], err)
		}
	}
}

// fakeDaemon answers the routes vm run uses, from a host with no image,
// recording the calls in order. The image build is the daemon's stand-in:
// it streams two progress lines and registers the default image (or fails).
type fakeDaemon struct {
	mu        sync.Mutex
	calls     []string
	images    []client.Image
	failBuild bool
	failStart bool
}

func (d *fakeDaemon) record(r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, r.Method+" "+r.URL.Path)
}

func (d *fakeDaemon) called() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, c := range d.calls {
		if c != "GET /v1/version" {
			out = append(out, c)
		}
	}
	return strings.Join(out, "\n")
}

func (d *fakeDaemon) serve(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(shortDir(t), "d.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	vm := func(state client.VMState) client.VM {
		v := client.VM{}
		v.Name, v.Runtime.State = "fresh-vm", state
		return v
	}
	mux.HandleFunc("GET /v1/version", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 200, client.VersionResponse{Version: api.Version, Ready: true})
	})
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		ims := append([]client.Image{}, d.images...)
		d.mu.Unlock()
		reply(w, 200, ims)
	})
	mux.HandleFunc("POST /v1/images/build", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "[  0.1s] fetching packages")
		fmt.Fprintln(w, "[  2.0s] writing the root filesystem")
		if d.failBuild {
			fmt.Fprintln(w, "error: no Debian mirror answers")
			return
		}
		im := client.Image{}
		im.Name, im.Default = "default", true
		d.mu.Lock()
		d.images = append(d.images, im)
		d.mu.Unlock()
		fmt.Fprintln(w, "ok default (kernel 6.1, 2.1s)")
	})
	mux.HandleFunc("GET /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) {
		reply(w, 404, api.ErrorEnvelope{Error: &api.Error{Code: api.CodeNotFound, Message: "vm not found"}})
	})
	mux.HandleFunc("POST /v1/vms", func(w http.ResponseWriter, r *http.Request) { reply(w, 201, vm(client.StateCreated)) })
	mux.HandleFunc("POST /v1/vms/{name}/start", func(w http.ResponseWriter, r *http.Request) {
		if d.failStart {
			reply(w, 409, api.ErrorEnvelope{Error: &api.Error{Code: api.CodeConflict, Message: "starting vm: the kernel is gone"}})
			return
		}
		reply(w, 200, vm(client.StateRunning))
	})
	mux.HandleFunc("POST /v1/vms/{name}/wait-ssh", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, struct{}{}) })
	mux.HandleFunc("DELETE /v1/vms/{name}", func(w http.ResponseWriter, r *http.Request) { reply(w, 200, struct{}{}) })
	mux.HandleFunc("POST /v1/vms/{name}/exec", func(w http.ResponseWriter, r *http.Request) {
		conn, brw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n%s: %s\r\n\r\n", api.UpgradeProtocol, api.VersionHeader, api.Version)
		brw.Flush()
		fw := api.NewFrameWriter(conn)
		fw.WriteFrame(api.FrameStdout, []byte("ran in the guest\n"))
		fw.WriteFrame(api.FrameExit, api.ExitPayload(0))
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.record(r)
		w.Header().Set(api.VersionHeader, api.Version)
		mux.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "bcli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func runAgainst(t *testing.T, sock string, args ...string) (int, string, string) {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, nil, 0o644)
	t.Setenv("BANGER_CONFIG", cfg)
	t.Setenv("BANGER_SOCKET", sock)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Run(ctx, args, strings.NewReader(""), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// vm run on a host with no image builds the default image first, showing
// the build's progress, then creates, starts, runs and (no --name) deletes
// its VM.
func TestRunBuildsDefaultImageFirst(t *testing.T) {
	d := &fakeDaemon{}
	code, out, errOut := runAgainst(t, d.serve(t), "vm", "run", "--", "true")
	if code != 0 || out != "ran in the guest\n" {
		t.Fatalf("vm run: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	for _, want := range []string{"no default image on this host: building it first", "fetching packages", "ok default"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr %q does not show %q", errOut, want)
		}
	}
	want := "GET /v1/images\nPOST /v1/images/build\nPOST /v1/vms\nPOST /v1/vms/fresh-vm/start\nPOST /v1/vms/fresh-vm/wait-ssh\nPOST /v1/vms/fresh-vm/exec\nDELETE /v1/vms/fresh-vm"
	if got := d.called(); got != want {
		t.Errorf("calls:\n%s\nwant:\n%s", got, want)
	}

	// Once the image exists, vm run does not build again.
	d.mu.Lock()
	d.calls = nil
	d.mu.Unlock()
	if code, _, errOut := runAgainst(t, d.serve(t), "vm", "run", "--keep", "--", "true"); code != 0 || strings.Contains(errOut, "building") {
		t.Fatalf("second vm run: exit %d, stderr %q", code, errOut)
	}
	if got := d.called(); strings.Contains(got, "build") || strings.Contains(got, "DELETE") {
		t.Errorf("second vm run (--keep) called:\n%s", got)
	}
}

// A build that fails stops vm run before any VM exists; a start that fails
// deletes the VM the run created.
func TestRunLeavesNothingWhenItFailsEarly(t *testing.T) {
	d := &fakeDaemon{failBuild: true}
	code, _, errOut := runAgainst(t, d.serve(t), "vm", "run", "--", "true")
	if code == 0 || !strings.Contains(errOut, "no Debian mirror answers") {
		t.Fatalf("vm run with a failing build: exit %d, stderr %q", code, errOut)
	}
	if got := d.called(); got != "GET /v1/images\nPOST /v1/images/build" {
		t.Errorf("after a failed build, calls:\n%s", got)
	}

	im := client.Image{}
	im.Name, im.Default = "default", true
	d = &fakeDaemon{failStart: true, images: []client.Image{im}}
	code, _, errOut = runAgainst(t, d.serve(t), "vm", "run", "--name", "kept-name", "--keep", "--", "true")
	if code == 0 || !strings.Contains(errOut, "the kernel is gone") {
		t.Fatalf("vm run with a failing start: exit %d, stderr %q", code, errOut)
	}
	if got := d.called(); !strings.HasSuffix(got, "POST /v1/vms/fresh-vm/start\nDELETE /v1/vms/fresh-vm") {
		t.Errorf("after a failed start, calls:\n%s\nwant the created vm deleted", got)
	}
}

// Bad lifetimes are refused before anything reaches the daemon.
func TestRunRefusesBadLifetimesFirst(t *testing.T) {
	d := &fakeDaemon{}
	sock := d.serve(t)
	for _, args := range [][]string{
		{"--ttl", "0"}, {"--ttl=-1m"}, {"--ttl", "soon"}, {"--ttl", "31d"}, {"--idle-timeout", "10s"},
		{"--ttl-action", "stop"}, {"--rm", "--keep"},
	} {
		code, _, errOut := runAgainst(t, sock, append(append([]string{"vm", "run"}, args...), "--", "true")...)
		if code != ExitUsage || errOut == "" {
			t.Errorf("vm run %v: exit %d, stderr %q; want a usage error", args, code, errOut)
		}
	}
	if got := d.called(); got != "" {
		t.Errorf("bad lifetimes reached the daemon:\n%s", got)
	}
}
