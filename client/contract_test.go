package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/banger-dev/banger/client"
)

// specPath is banger's OpenAPI document, relative to this package.
const specPath = "../api/openapi.yaml"

func loadSpec(t *testing.T) (*openapi3.T, routers.Router) {
	t.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(specPath)
	if err != nil {
		t.Fatalf("loading %s: %v", specPath, err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("%s is not a valid OpenAPI document: %v", specPath, err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("router for %s: %v", specPath, err)
	}
	return doc, router
}

// apiRoutes reads the Route* constants of internal/api from its source:
// name -> "METHOD /path/{param}". Reading the source, not a list kept here,
// means a route added there is seen here without anyone remembering to.
func apiRoutes(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("../internal/api/*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no source files of internal/api (%v)", err)
	}
	routes := map[string]string{}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Route") || !name.IsExported() || i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("%s: %s is not a string literal", fset.Position(name.Pos()), name.Name)
					}
					v, _ := strconv.Unquote(lit.Value)
					routes[name.Name] = v
				}
			}
		}
	}
	if len(routes) < 20 {
		t.Fatalf("found only %d Route* constants in internal/api: the parse is broken", len(routes))
	}
	return routes
}

// docOperations lists the document's operations as "METHOD /path/{param}".
func docOperations(doc *openapi3.T) map[string]bool {
	ops := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			ops[method+" "+path] = true
		}
	}
	return ops
}

// TestSpecMatchesRoutes: the document describes exactly the routes of
// internal/api, no more and no fewer.
func TestSpecMatchesRoutes(t *testing.T) {
	doc, _ := loadSpec(t)
	ops := docOperations(doc)
	routes := apiRoutes(t)
	inAPI := map[string]bool{}
	for name, r := range routes {
		inAPI[r] = true
		if !ops[r] {
			t.Errorf("api.%s (%s) is not in %s", name, r, specPath)
		}
	}
	for op := range ops {
		if !inAPI[op] {
			t.Errorf("%s describes %s, which is no route of internal/api", specPath, op)
		}
	}
}

// validator checks every request the client sends and every response it gets
// against the document, and records which operations and statuses it saw.
type validator struct {
	router routers.Router
	next   http.RoundTripper

	mu       sync.Mutex
	errs     []string
	seen     map[string]bool // "METHOD /path/{param}"
	statuses map[int]bool
}

func newValidator(router routers.Router, next http.RoundTripper) *validator {
	return &validator{router: router, next: next, seen: map[string]bool{}, statuses: map[int]bool{}}
}

func (v *validator) fail(format string, args ...any) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.errs = append(v.errs, strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " | "))
}

func (v *validator) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		if body, err = io.ReadAll(req.Body); err != nil {
			return nil, err
		}
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	vreq := req.Clone(req.Context())
	vreq.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := v.router.FindRoute(vreq)
	if err != nil {
		v.fail("%s %s: no operation in %s: %v", req.Method, req.URL, specPath, err)
		return v.next.RoundTrip(req)
	}
	op := req.Method + " " + route.Path
	in := &openapi3filter.RequestValidationInput{
		Request: vreq, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		v.fail("request %s %s %.300s breaks %s: %v", req.Method, req.URL, body, specPath, err)
	}
	resp, err := v.next.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	v.seen[op] = true
	v.statuses[resp.StatusCode] = true
	v.mu.Unlock()

	header := resp.Header.Clone()
	// Streams (console and session logs, build progress, the upgraded exec
	// connection) are not read here: they may not end, and their schema is
	// any string.
	var checked []byte
	// JSON lines (a followed event log) are a stream too; their lines are
	// Events, which the client decodes.
	ndjson := strings.HasPrefix(header.Get("Content-Type"), "application/x-ndjson")
	streaming := resp.StatusCode == http.StatusSwitchingProtocols || strings.HasPrefix(header.Get("Content-Type"), "text/plain") || ndjson
	if !streaming {
		if checked, err = io.ReadAll(resp.Body); err != nil {
			resp.Body.Close()
			return nil, err
		}
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(checked))
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: header,
		Body:    io.NopCloser(bytes.NewReader(checked)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, ExcludeResponseBody: ndjson},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), out); err != nil {
		v.fail("response to %s %s (%d, %s) %.300s breaks %s: %v", req.Method, req.URL, resp.StatusCode, resp.Header.Get("Content-Type"), checked, specPath, err)
	}
	return resp, nil
}

// check fails the test with every violation recorded so far.
func (v *validator) check(t *testing.T) {
	t.Helper()
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		t.Error(e)
	}
	v.errs = nil
}

// TestValidatorRejects proves the validator bites: answers and requests that
// break the document are reported.
func TestValidatorRejects(t *testing.T) {
	_, router := loadSpec(t)
	vm := `{"id":"x","name":"web","image":"base","spec":{"vcpus":1,"memory_mib":128,"disk_size_bytes":1,"work_disk_bytes":1},` +
		`"runtime":{"state":"created","vmm":"","accel":"","root_disk_method":"","guest_ip":"","guest_mac":"","api_sock_path":"","vsock_path":"",` +
		`"vsock_cid":0,"log_path":"","metrics_path":"","dns_name":"","vm_dir":"","system_overlay":"","work_disk_path":""},` +
		`"created_at":"2024-01-01T00:00:00Z","updated_at":"2024-01-01T00:00:00Z"}`
	type answer struct {
		status int
		ctype  string
		body   string
	}
	call := func(a answer, do func(c *client.Client)) []string {
		stub := roundTripFunc(func(req *http.Request) (*http.Response, error) {
			h := http.Header{}
			h.Set("Banger-Version", "test")
			if a.ctype != "" {
				h.Set("Content-Type", a.ctype)
			}
			return &http.Response{StatusCode: a.status, Header: h, Body: io.NopCloser(strings.NewReader(a.body)), Request: req}, nil
		})
		v := newValidator(router, stub)
		c := &client.Client{Socket: "/nonexistent", WrapTransport: func(http.RoundTripper) http.RoundTripper { return v }}
		do(c)
		return v.errs
	}
	getVM := func(c *client.Client) { c.GetVM(context.Background(), "web") }
	if errs := call(answer{200, "application/json", vm}, getVM); len(errs) != 0 {
		t.Errorf("a valid VM was refused: %v", errs)
	}
	bad := []struct {
		what string
		a    answer
		do   func(c *client.Client)
	}{
		{"a VM without runtime", answer{200, "application/json", strings.Replace(vm, `"runtime"`, `"runtimes"`, 1)}, getVM},
		{"an unknown state", answer{200, "application/json", strings.Replace(vm, `"created"`, `"paused"`, 1)}, getVM},
		{"a VM as text", answer{200, "text/plain", vm}, getVM},
		{"an undocumented status", answer{202, "application/json", vm}, getVM},
		{"an error without code", answer{404, "application/json", `{"error":{"message":"x"}}`}, getVM},
		{"an unknown error code", answer{404, "application/json", `{"error":{"code":"gone","message":"x"}}`}, getVM},
		{"a request with an unknown vmm", answer{201, "application/json", vm}, func(c *client.Client) {
			c.CreateVM(context.Background(), client.CreateVMRequest{VMM: "bochs"})
		}},
		{"a session logs request with a negative tail", answer{200, "text/plain", ""}, func(c *client.Client) {
			c.SessionLogs(context.Background(), "web", "s", client.SessionLogsOptions{Tail: -1})
		}},
	}
	for _, b := range bad {
		if errs := call(b.a, b.do); len(errs) == 0 {
			t.Errorf("%s passed the validator", b.what)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestContract drives every route of a real daemon through the client,
// checking each request and answer against the document, successes and
// errors alike, then that every route and the main statuses were seen.
func TestContract(t *testing.T) {
	doc, router := loadSpec(t)
	d, err := startDaemon()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if left := d.stop(); left != "" {
			t.Error(left)
		}
	})
	var v *validator
	c := &client.Client{Socket: d.socket, WrapTransport: func(next http.RoundTripper) http.RoundTripper {
		v = newValidator(router, next)
		return v
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	want := func(what string, err error, is func(error) bool, code client.ErrorCode) {
		t.Helper()
		if !is(err) {
			t.Errorf("%s: got %v, want a %s error", what, err, code)
		}
	}

	// Version.
	ver, err := c.Version(ctx)
	must("Version", err)
	if ver.Version != client.ClientVersion() || !ver.Ready || ver.Socket != d.socket {
		t.Errorf("Version = %+v, want version %s, ready, socket %s", ver, client.ClientVersion(), d.socket)
	}
	if c.DaemonVersion() != client.ClientVersion() {
		t.Errorf("DaemonVersion = %q, want %q", c.DaemonVersion(), client.ClientVersion())
	}

	// Images.
	im, err := c.ImportImage(ctx, d.image("contract"))
	must("ImportImage", err)
	if im.Name != "contract" || !im.FirecrackerBootable || im.Default {
		t.Errorf("ImportImage = %+v, want contract, bootable by firecracker, not the default", im)
	}
	_, err = c.ImportImage(ctx, d.image("contract"))
	want("ImportImage of a taken name", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	bad := d.image("relative")
	bad.Kernel = "vmlinux"
	_, err = c.ImportImage(ctx, bad)
	want("ImportImage of a relative path", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	ims, err := c.ListImages(ctx)
	must("ListImages", err)
	if names := imageNames(ims); names != "base contract" {
		t.Errorf("ListImages = %s, want base contract", names)
	}
	if im, err = c.GetImage(ctx, "base"); err != nil || !im.Default {
		t.Errorf("GetImage base = %+v, %v; want the default image", im, err)
	}
	_, err = c.GetImage(ctx, "nosuch")
	want("GetImage nosuch", err, client.IsNotFound, client.CodeNotFound)
	err = c.BuildImage(ctx, client.BuildImageRequest{Name: "contract"}, nil)
	want("BuildImage of a taken name", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	// A build that starts answers 200 and streams; without a Debian mirror
	// (and with its directory taken by a file) it ends in "error: ...".
	imagesDir := filepath.Join(d.state, "images")
	if err := os.Remove(imagesDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("emptying the built images' directory: %v", err)
	}
	must("blocking image builds", os.WriteFile(imagesDir, nil, 0o644))
	var lines []string
	err = c.BuildImage(ctx, client.BuildImageRequest{Name: "built", Base: "minimal"}, func(l string) { lines = append(lines, l) })
	if err == nil || len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "error: ") || !strings.Contains(lines[len(lines)-1], err.Error()) {
		t.Errorf("BuildImage = %v after lines %q; want the error of the last line", err, lines)
	}

	// Container images: a request naming neither a reference nor a path is
	// refused before anything starts; one that starts streams and ends in
	// "error: ..." for a missing archive.
	err = c.PullImage(ctx, client.PullImageRequest{}, nil)
	want("PullImage of nothing", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	lines = nil
	err = c.PullImage(ctx, client.PullImageRequest{Name: "pulled", Path: filepath.Join(d.state, "no-such-archive.tar")}, func(l string) { lines = append(lines, l) })
	if err == nil || len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "error: ") {
		t.Errorf("PullImage of a missing archive = %v after lines %q; want the error of the last line", err, lines)
	}

	// Prune: a cached layer and a cached rootfs no image was made from are
	// removed; then there is nothing left to remove, with --all too.
	cache := filepath.Join(d.state, "oci-cache")
	blob := filepath.Join(cache, "blobs", "sha256", strings.Repeat("ab", 32))
	entry := filepath.Join(cache, "rootfs", strings.Repeat("cd", 32))
	must("seeding the layer cache", os.MkdirAll(filepath.Dir(blob), 0o700))
	must("seeding the layer cache", os.WriteFile(blob, bytes.Repeat([]byte{1}, 8192), 0o644))
	must("seeding the rootfs cache", os.MkdirAll(entry, 0o700))
	must("seeding the rootfs cache", os.WriteFile(filepath.Join(entry, "entry.json"), []byte(`{"digest":"sha256:`+strings.Repeat("ef", 32)+`"}`), 0o644))
	must("seeding the rootfs cache", os.WriteFile(filepath.Join(entry, "rootfs.ext4"), bytes.Repeat([]byte{1}, 8192), 0o644))
	pruned, err := c.PruneImages(ctx, client.PruneImagesRequest{})
	must("PruneImages", err)
	if pruned.RemovedLayers.Count != 1 || pruned.RemovedLayers.Bytes < 8192 || pruned.RemovedRootfs.Count != 1 || pruned.KeptLayers.Count != 0 || pruned.KeptRootfs.Count != 0 {
		t.Errorf("PruneImages = %+v, want one layer and one rootfs removed, nothing kept", pruned)
	}
	if _, err := os.Stat(blob); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pruned blob: %v, want it gone", err)
	}
	pruned, err = c.PruneImages(ctx, client.PruneImagesRequest{All: true})
	must("PruneImages --all", err)
	if pruned != (client.PruneImagesResult{}) {
		t.Errorf("PruneImages --all of empty caches = %+v, want nothing", pruned)
	}

	// VMs.
	req := client.CreateVMRequest{Name: "web", Image: "contract", VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20}
	vm, err := c.CreateVM(ctx, req)
	must("CreateVM", err)
	if vm.Name != "web" || vm.Runtime.State != client.StateCreated || vm.Image != "contract" {
		t.Errorf("CreateVM = %s %s %s, want web created contract", vm.Name, vm.Runtime.State, vm.Image)
	}
	_, err = c.CreateVM(ctx, req)
	want("CreateVM of a taken name", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	_, err = c.CreateVM(ctx, client.CreateVMRequest{VCPUs: 999})
	want("CreateVM with 999 vCPUs", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	_, err = c.CreateVM(ctx, client.CreateVMRequest{Image: "nosuch"})
	want("CreateVM of an unknown image", err, client.IsNotFound, client.CodeNotFound)
	vms, err := c.ListVMs(ctx)
	must("ListVMs", err)
	if len(vms) != 1 || vms[0].Name != "web" {
		t.Errorf("ListVMs = %v, want web", vms)
	}
	raw, err := c.ListVMsJSON(ctx)
	must("ListVMsJSON", err)
	b, err := io.ReadAll(raw)
	raw.Close()
	if err != nil || !bytes.HasPrefix(b, []byte(`[{"id":`)) || !bytes.Contains(b, []byte(`"name":"web"`)) {
		t.Errorf("ListVMsJSON = %s, %v; want a JSON array holding web", b, err)
	}
	_, err = c.GetVM(ctx, "nosuch")
	want("GetVM nosuch", err, client.IsNotFound, client.CodeNotFound)
	logs, err := c.VMLogs(ctx, "web", false)
	must("VMLogs before boot", err)
	b, _ = io.ReadAll(logs)
	logs.Close()
	if len(b) != 0 {
		t.Errorf("VMLogs before the first boot = %q, want nothing", b)
	}
	_, err = c.VMLogs(ctx, "nosuch", false)
	want("VMLogs nosuch", err, client.IsNotFound, client.CodeNotFound)
	err = c.WaitSSH(ctx, "web", client.WaitSSHRequest{TimeoutSeconds: 1})
	want("WaitSSH of a VM not running", err, client.IsConflict, client.CodeConflict)

	// Ports.
	port := freePort(t)
	added, err := c.AddPort(ctx, "web", port+":80")
	must("AddPort", err)
	spec := "127.0.0.1:" + port + ":80/tcp"
	if len(added) != 1 || added[0] != spec {
		t.Errorf("AddPort = %q, want [%s]", added, spec)
	}
	_, err = c.AddPort(ctx, "web", port+":81")
	want("AddPort of a forwarded host port", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	_, err = c.AddPort(ctx, "web", "nonsense")
	want("AddPort nonsense", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	ports, err := c.ListPorts(ctx, "web")
	if err != nil || len(ports) != 1 || ports[0] != spec {
		t.Errorf("ListPorts = %q, %v; want [%s]", ports, err, spec)
	}
	must("RemovePort", c.RemovePort(ctx, "web", spec))
	err = c.RemovePort(ctx, "web", spec)
	want("RemovePort again", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.ListPorts(ctx, "nosuch")
	want("ListPorts nosuch", err, client.IsNotFound, client.CodeNotFound)

	// Lifecycle and guest commands.
	vm, err = c.StartVM(ctx, "web")
	must("StartVM", err)
	if vm.Runtime.State != client.StateRunning || vm.Live == nil || !vm.Live.Alive {
		t.Errorf("StartVM = %s (live %+v), want running and alive", vm.Runtime.State, vm.Live)
	}
	_, err = c.StartVM(ctx, "nosuch")
	want("StartVM nosuch", err, client.IsNotFound, client.CodeNotFound)

	// Stats and lifetimes.
	st, err := c.VMStats(ctx, "web")
	must("VMStats", err)
	if st.Name != "web" || st.Source == "" || st.CPUSeconds < 0 || st.MemoryBytes <= 0 || st.LastActivity.IsZero() {
		t.Errorf("VMStats = %+v, want web's counters", st)
	}
	_, err = c.VMStats(ctx, "nosuch")
	want("VMStats nosuch", err, client.IsNotFound, client.CodeNotFound)
	vm, err = c.SetTTL(ctx, "web", client.TTLRequest{TTLSeconds: 3600, Action: "stop"})
	must("SetTTL", err)
	if o := vm.Spec.Options; o.ExpiresAt.IsZero() || o.TTLAction != client.TTLStop {
		t.Errorf("SetTTL = %+v, want an expiry with action stop", o)
	}
	_, err = c.SetTTL(ctx, "web", client.TTLRequest{TTLSeconds: 100 * 86400})
	want("SetTTL beyond max_ttl", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	_, err = c.SetTTL(ctx, "nosuch", client.TTLRequest{TTLSeconds: 60})
	want("SetTTL nosuch", err, client.IsNotFound, client.CodeNotFound)
	vm, err = c.SetTTL(ctx, "web", client.TTLRequest{Clear: true})
	if err != nil || !vm.Spec.Options.ExpiresAt.IsZero() {
		t.Errorf("SetTTL clear = %+v, %v; want no expiry", vm.Spec.Options, err)
	}
	_, err = c.CreateVM(ctx, client.CreateVMRequest{Name: "brief", IdleTimeoutSeconds: 5})
	want("CreateVM with a 5s idle timeout", err, client.IsInvalidArgument, client.CodeInvalidArgument)

	// Events: the log so far, one VM's, a filter naming nothing, and a
	// follower that gets the kept events and then stops with its context.
	evs, err := c.Events(ctx, "")
	must("Events", err)
	var kinds []string
	for _, ev := range evs {
		if ev.VMName == "web" {
			kinds = append(kinds, ev.Kind)
		}
	}
	if strings.Join(kinds, " ") != "created started" {
		t.Errorf("Events of web = %v, want created started", kinds)
	}
	if evs, err := c.Events(ctx, "web"); err != nil || len(evs) != 2 {
		t.Errorf("Events of web = %d events, %v; want 2", len(evs), err)
	}
	_, err = c.Events(ctx, "nosuch")
	want("Events of nosuch", err, client.IsNotFound, client.CodeNotFound)
	followCtx, stopFollowing := context.WithCancel(ctx)
	var followed []string
	err = c.FollowEvents(followCtx, "web", func(ev client.Event) error {
		followed = append(followed, ev.Kind)
		if len(followed) == 2 {
			stopFollowing()
		}
		return nil
	})
	stopFollowing()
	if err != nil || strings.Join(followed, " ") != "created started" {
		t.Errorf("FollowEvents of web = %v, %v; want created started, then nil when its context ends", followed, err)
	}
	must("WaitSSH", c.WaitSSH(ctx, "web", client.WaitSSHRequest{TimeoutSeconds: 30}))
	var stdout, stderr bytes.Buffer
	code, err := run(ctx, c, "web", client.ExecRequest{Argv: []string{"sh", "-c", "cat; echo err >&2; exit 7"}, Stdin: true}, "from stdin", &stdout, &stderr)
	if err != nil || code != 7 || stdout.String() != "from stdin" || stderr.String() != "err\n" {
		t.Errorf("Exec = exit %d, %v, stdout %q, stderr %q; want exit 7, stdin echoed, err", code, err, stdout.String(), stderr.String())
	}
	// Once the command runs, the stream is no longer tied to the request's
	// context (the CLI passes Ctrl-C on as a signal instead), and Signal
	// reaches the command.
	execCtx, execCancel := context.WithCancel(ctx)
	s, err := c.Exec(execCtx, "web", client.ExecRequest{Argv: []string{"sh", "-c", "echo started; sleep 30"}})
	must("Exec sleep", err)
	execCancel()
	out := &syncWriter{}
	go func() {
		for !strings.Contains(out.String(), "started") {
			time.Sleep(10 * time.Millisecond)
		}
		s.Signal("TERM")
	}()
	began := time.Now()
	code, err = s.Wait(out, io.Discard)
	s.Close()
	if err != nil || code == 0 || time.Since(began) > 20*time.Second {
		t.Errorf("Exec of a signalled command after its context ended = exit %d, %v after %s; want a non-zero exit at once", code, err, time.Since(began))
	}
	_, err = c.Exec(ctx, "web", client.ExecRequest{})
	want("Exec without a command", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	// A user: root runs as before; a value that is no user name is refused;
	// a user the guest lacks is its exit 126.
	stdout.Reset()
	stderr.Reset()
	code, err = run(ctx, c, "web", client.ExecRequest{Argv: []string{"echo", "as root"}, User: "root"}, "", &stdout, &stderr)
	if err != nil || code != 0 || stdout.String() != "as root\n" {
		t.Errorf("Exec as root = exit %d, %v, stdout %q", code, err, stdout.String())
	}
	_, err = c.Exec(ctx, "web", client.ExecRequest{Argv: []string{"true"}, User: "a b"})
	want("Exec as user \"a b\"", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	stderr.Reset()
	code, err = run(ctx, c, "web", client.ExecRequest{Argv: []string{"true"}, User: "no-such-user"}, "", io.Discard, &stderr)
	if err != nil || code != 126 || !strings.Contains(stderr.String(), `no user "no-such-user"`) {
		t.Errorf("Exec as an unknown user = exit %d, %v, stderr %q; want exit 126 and the reason", code, err, stderr.String())
	}
	_, err = c.Exec(ctx, "nosuch", client.ExecRequest{Argv: []string{"true"}})
	want("Exec nosuch", err, client.IsNotFound, client.CodeNotFound)

	// Sessions.
	gs, err := c.StartSession(ctx, "web", client.StartSessionRequest{Name: "out", Argv: []string{"sh", "-c", "echo out; echo err >&2"}})
	must("StartSession", err)
	if gs.Name != "out" || gs.Status != client.SessionRunning {
		t.Errorf("StartSession = %s %s, want out running", gs.Name, gs.Status)
	}
	_, err = c.StartSession(ctx, "web", client.StartSessionRequest{Name: "out", Argv: []string{"true"}})
	want("StartSession of a taken name", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	_, err = c.StartSession(ctx, "web", client.StartSessionRequest{Name: "empty"})
	want("StartSession without a command", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	_, err = c.StartSession(ctx, "web", client.StartSessionRequest{Name: "baduser", Argv: []string{"true"}, User: "-x"})
	want("StartSession as user -x", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	_, err = c.StartSession(ctx, "web", client.StartSessionRequest{Name: "asroot", Argv: []string{"true"}, User: "root"})
	must("StartSession as root", err)
	_, err = c.StartSession(ctx, "web", client.StartSessionRequest{Name: "in", Argv: []string{"sh", "-c", "read l; echo got $l"}, Stdin: true})
	must("StartSession with stdin", err)
	must("SendSession", c.SendSession(ctx, "web", "in", strings.NewReader("hello\n")))
	err = c.SendSession(ctx, "web", "out", strings.NewReader("x"))
	want("SendSession to a session without stdin", err, client.IsConflict, client.CodeConflict)
	waitFor(t, "session out's stderr", func() bool {
		return readSession(ctx, c, "web", "out", client.SessionLogsOptions{Stream: "stderr"}) == "err\n"
	})
	waitFor(t, "session in's answer", func() bool {
		return readSession(ctx, c, "web", "in", client.SessionLogsOptions{Tail: 1}) == "got hello\n"
	})
	if got := readSession(ctx, c, "web", "out", client.SessionLogsOptions{Follow: true}); got != "out\n" {
		t.Errorf("followed logs of an ended session = %q, want out", got)
	}
	_, err = c.SessionLogs(ctx, "web", "nosuch", client.SessionLogsOptions{})
	want("SessionLogs nosuch", err, client.IsNotFound, client.CodeNotFound)
	list, err := c.ListSessions(ctx, "web")
	must("ListSessions", err)
	if len(list) < 2 {
		t.Errorf("ListSessions = %d sessions, want out and in at least", len(list))
	}
	gs, err = c.StopSession(ctx, "web", "out", client.StopSessionRequest{})
	if err != nil || gs.Status != client.SessionExited {
		t.Errorf("StopSession of an ended session = %s, %v; want exited", gs.Status, err)
	}
	_, err = c.StopSession(ctx, "web", "nosuch", client.StopSessionRequest{})
	want("StopSession nosuch", err, client.IsNotFound, client.CodeNotFound)

	vm, err = c.RestartVM(ctx, "web", client.StopRequest{Force: true})
	if err != nil || vm.Runtime.State != client.StateRunning {
		t.Errorf("RestartVM = %s, %v; want running", vm.Runtime.State, err)
	}
	_, err = c.StopVM(ctx, "web", client.StopRequest{TimeoutSeconds: -1})
	want("StopVM with a negative timeout", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	vm, err = c.StopVM(ctx, "web", client.StopRequest{Force: true})
	if err != nil || vm.Runtime.State != client.StateStopped {
		t.Errorf("StopVM = %s, %v; want stopped", vm.Runtime.State, err)
	}
	// Suspend and resume (the double implements pause, snapshot create and
	// load); a stopped VM cannot be suspended.
	_, err = c.SuspendVM(ctx, "web")
	want("SuspendVM of a stopped VM", err, client.IsConflict, client.CodeConflict)
	if _, err := c.StartVM(ctx, "web"); err != nil {
		t.Fatalf("StartVM: %v", err)
	}
	if vm, err = c.SuspendVM(ctx, "web"); err != nil || vm.Runtime.State != client.StateSuspended {
		t.Errorf("SuspendVM = %s, %v; want suspended", vm.Runtime.State, err)
	}
	// Snapshots: a suspended VM's saved state and disks are copied; the
	// Firecracker driver cannot restore clones yet, so a VM made from one
	// is refused, and so is a fork (it snapshots a running VM).
	snap, err := c.SnapshotVM(ctx, "web", client.SnapshotRequest{As: "snap1"})
	if err != nil || snap.Name != "snap1" || snap.SourceVM != "web" {
		t.Errorf("SnapshotVM = %+v, %v; want snap1 of web", snap, err)
	}
	_, err = c.SnapshotVM(ctx, "web", client.SnapshotRequest{As: "snap1"})
	want("SnapshotVM again", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	_, err = c.SnapshotVM(ctx, "web", client.SnapshotRequest{As: "bad/name"})
	want("SnapshotVM with a bad name", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	_, err = c.SnapshotVM(ctx, "nosuch", client.SnapshotRequest{})
	want("SnapshotVM nosuch", err, client.IsNotFound, client.CodeNotFound)
	if snaps, err := c.ListSnapshots(ctx); err != nil || len(snaps) != 1 || snaps[0].Name != "snap1" {
		t.Errorf("ListSnapshots = %+v, %v; want [snap1]", snaps, err)
	}
	if got, err := c.GetSnapshot(ctx, "snap1"); err != nil || got.Image != "contract" {
		t.Errorf("GetSnapshot = %+v, %v; want image contract", got, err)
	}
	_, err = c.GetSnapshot(ctx, "nosuch")
	want("GetSnapshot nosuch", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.CreateVM(ctx, client.CreateVMRequest{Name: "clone", From: "snap1"})
	want("CreateVM from a Firecracker snapshot", err, client.IsConflict, client.CodeConflict)
	_, err = c.CreateVM(ctx, client.CreateVMRequest{Name: "clone", From: "nosuch"})
	want("CreateVM from a missing snapshot", err, client.IsNotFound, client.CodeNotFound)
	// A snapshot interrupted before its meta.json is not listed, holds its
	// name, and is removed by a delete.
	half := filepath.Join(d.state, "snapshots", "half")
	if err := os.MkdirAll(half, 0o750); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(half, "root.img"), []byte("partial"), 0o600)
	if snaps, err := c.ListSnapshots(ctx); err != nil || len(snaps) != 1 {
		t.Errorf("ListSnapshots with an incomplete one = %+v, %v; want only snap1", snaps, err)
	}
	_, err = c.SnapshotVM(ctx, "web", client.SnapshotRequest{As: "half"})
	want("SnapshotVM over an incomplete snapshot", err, client.IsAlreadyExists, client.CodeAlreadyExists)
	must("DeleteSnapshot of an incomplete snapshot", c.DeleteSnapshot(ctx, "half"))
	// Warm pools need a VMM that restores clones and keeps them paused
	// (QEMU: e2e TestPool); here every refusal is checked.
	_, err = c.CreatePool(ctx, client.CreatePoolRequest{Name: "warm", Snapshot: "snap1", Size: 2})
	want("CreatePool from a Firecracker snapshot", err, client.IsConflict, client.CodeConflict)
	_, err = c.CreatePool(ctx, client.CreatePoolRequest{Name: "warm", Snapshot: "nosuch", Size: 2})
	want("CreatePool from a missing snapshot", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.CreatePool(ctx, client.CreatePoolRequest{Name: "warm", Snapshot: "snap1", Size: 0})
	want("CreatePool of size 0", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	_, err = c.CreatePool(ctx, client.CreatePoolRequest{Name: "bad/name", Snapshot: "snap1", Size: 1})
	want("CreatePool with a bad name", err, client.IsInvalidArgument, client.CodeInvalidArgument)
	if pools, err := c.ListPools(ctx); err != nil || len(pools) != 0 {
		t.Errorf("ListPools = %+v, %v; want none (every create was refused)", pools, err)
	}
	_, err = c.GetPool(ctx, "warm")
	want("GetPool nosuch", err, client.IsNotFound, client.CodeNotFound)
	err = c.DeletePool(ctx, "warm")
	want("DeletePool nosuch", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.ClaimFromPool(ctx, "warm", client.ClaimRequest{})
	want("ClaimFromPool nosuch", err, client.IsNotFound, client.CodeNotFound)
	if _, err := os.Stat(half); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("incomplete snapshot dir after delete: %v", err)
	}
	must("DeleteSnapshot", c.DeleteSnapshot(ctx, "snap1"))
	err = c.DeleteSnapshot(ctx, "snap1")
	want("DeleteSnapshot again", err, client.IsNotFound, client.CodeNotFound)
	if vm, err = c.ResumeVM(ctx, "web"); err != nil || vm.Runtime.State != client.StateRunning {
		t.Errorf("ResumeVM = %s, %v; want running", vm.Runtime.State, err)
	}
	_, err = c.ForkVM(ctx, "web", client.ForkRequest{Count: 1})
	want("ForkVM of a running Firecracker VM", err, client.IsConflict, client.CodeConflict)
	_, err = c.ResumeVM(ctx, "web")
	want("ResumeVM of a running VM", err, client.IsConflict, client.CodeConflict)
	if _, err := c.StopVM(ctx, "web", client.StopRequest{Force: true}); err != nil {
		t.Fatalf("StopVM: %v", err)
	}
	_, err = c.SuspendVM(ctx, "nosuch")
	want("SuspendVM nosuch", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.RestartVM(ctx, "nosuch", client.StopRequest{})
	want("RestartVM nosuch", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.StopVM(ctx, "nosuch", client.StopRequest{})
	want("StopVM nosuch", err, client.IsNotFound, client.CodeNotFound)
	_, err = c.VMStats(ctx, "web")
	want("VMStats of a stopped VM", err, client.IsConflict, client.CodeConflict)

	// Host.
	rep, err := c.Doctor(ctx)
	must("Doctor", err)
	if len(rep.Checks) == 0 {
		t.Error("Doctor reported no checks")
	}
	// Only a dry run: a real gc on a shared host could reach other daemons' objects.
	gc, err := c.GC(ctx, true)
	if err != nil || !gc.DryRun || gc.ImageCaches != nil {
		t.Errorf("GC dry run = %+v, %v; want no image caches reported (they are empty)", gc, err)
	}
	// A cached layer is reported by gc, which leaves it alone.
	must("seeding the layer cache", os.WriteFile(blob, bytes.Repeat([]byte{1}, 8192), 0o644))
	gc, err = c.GC(ctx, true)
	if err != nil || gc.ImageCaches == nil || gc.ImageCaches.Layers.Count != 1 || gc.ImageCaches.Layers.Bytes < 8192 || gc.ImageCaches.Rootfs.Count != 0 {
		t.Errorf("GC with a cached layer = %+v, %v; want the layer counted", gc, err)
	}
	if _, err := os.Stat(blob); err != nil {
		t.Errorf("gc removed a cached layer: %v", err)
	}

	// Deletes.
	err = c.DeleteImage(ctx, "contract")
	want("DeleteImage of an image in use", err, client.IsConflict, client.CodeConflict)
	must("DeleteVM", c.DeleteVM(ctx, "web", false))
	err = c.DeleteVM(ctx, "web", true)
	want("DeleteVM again", err, client.IsNotFound, client.CodeNotFound)
	must("DeleteImage", c.DeleteImage(ctx, "contract"))
	err = c.DeleteImage(ctx, "contract")
	want("DeleteImage again", err, client.IsNotFound, client.CodeNotFound)

	must("Shutdown", c.Shutdown(ctx))
	if _, err := c.Version(ctx); err == nil {
		// The daemon answers shutdown before it stops listening: give it a moment.
		waitFor(t, "the daemon to stop answering", func() bool {
			_, err := c.Version(ctx)
			return err != nil
		})
	}
	if _, err := c.Version(ctx); !isUnreachable(err) {
		t.Errorf("Version after Shutdown = %v, want ErrDaemonUnreachable", err)
	}

	v.check(t)
	var missing []string
	for _, r := range apiRoutes(t) {
		if !v.seen[r] {
			missing = append(missing, r)
		}
	}
	sort.Strings(missing)
	for _, r := range missing {
		t.Errorf("route %s was not exercised", r)
	}
	for _, s := range []int{101, 200, 201, 400, 404, 409} {
		if !v.statuses[s] {
			t.Errorf("no answer with status %d was checked", s)
		}
	}
	if len(v.seen) != len(docOperations(doc)) {
		t.Errorf("exercised %d operations, the document has %d", len(v.seen), len(docOperations(doc)))
	}
}

func isUnreachable(err error) bool { return errors.Is(err, client.ErrDaemonUnreachable) }

// run runs a command in a guest with stdin and returns its exit code.
func run(ctx context.Context, c *client.Client, vm string, req client.ExecRequest, stdin string, stdout, stderr io.Writer) (int, error) {
	s, err := c.Exec(ctx, vm, req)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	go s.CopyStdin(strings.NewReader(stdin))
	return s.Wait(stdout, stderr)
}

func readSession(ctx context.Context, c *client.Client, vm, session string, o client.SessionLogsOptions) string {
	r, err := c.SessionLogs(ctx, vm, session, o)
	if err != nil {
		return "error: " + err.Error()
	}
	defer r.Close()
	b, _ := io.ReadAll(r)
	return string(b)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func imageNames(ims []client.Image) string {
	var names []string
	for _, im := range ims {
		names = append(names, im.Name)
	}
	sort.Strings(names)
	return strings.Join(names, " ")
}

// syncWriter lets one goroutine read what another writes.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
