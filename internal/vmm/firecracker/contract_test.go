package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/golden")

// swaggerRouter loads Firecracker's swagger 2.0 file from shared/ (beside the
// repository root, as CI lays it out) and builds a router over its v3 form.
func swaggerRouter(t *testing.T) routers.Router {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := wd
	for {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			t.Fatal("no go.mod above the test directory")
		}
		root = parent
	}
	spec := filepath.Join(root, "..", "shared", "firecracker", "firecracker.yaml")
	data, err := os.ReadFile(spec)
	if err != nil {
		t.Skipf("Firecracker swagger file not available at %s (shared/ is laid beside the clone): %v", spec, err)
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
		t.Fatalf("parse %s: %v", spec, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		t.Fatalf("convert %s to OpenAPI 3: %v", spec, err)
	}
	router, err := gorillamux.NewRouter(doc3)
	if err != nil {
		t.Fatalf("router for %s: %v", spec, err)
	}
	return router
}

// loggedRequest is one line of the double's FC_DOUBLE_REQUEST_LOG.
type loggedRequest struct {
	Method      string          `json:"method"`
	Path        string          `json:"path"`
	ContentType string          `json:"content_type"`
	Body        json.RawMessage `json:"body"`
}

func validateAgainstSwagger(t *testing.T, router routers.Router, r loggedRequest) {
	t.Helper()
	if err := swaggerCheck(router, r); err != nil {
		t.Error(err)
	}
}

// swaggerCheck validates one request (route, path parameters, body schema).
func swaggerCheck(router routers.Router, r loggedRequest) error {
	var body []byte
	if len(r.Body) > 0 && string(r.Body) != "null" {
		body = r.Body
	}
	req, err := http.NewRequest(r.Method, "http://localhost"+r.Path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if r.ContentType != "" {
		req.Header.Set("Content-Type", r.ContentType)
	}
	route, params, err := router.FindRoute(req)
	if err != nil {
		return fmt.Errorf("%s %s: no such operation in the swagger file: %w", r.Method, r.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{
		Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
		return fmt.Errorf("%s %s %s violates the swagger file: %w", r.Method, r.Path, body, err)
	}
	return nil
}

// TestSwaggerCheckRejects proves the validator bites: requests that break
// the swagger file must be refused.
func TestSwaggerCheckRejects(t *testing.T) {
	router := swaggerRouter(t)
	bad := []loggedRequest{
		{Method: "PUT", Path: "/machine-config", ContentType: "application/json", Body: json.RawMessage(`{"vcpu_count":64,"mem_size_mib":128}`)},
		{Method: "PUT", Path: "/boot-source", ContentType: "application/json", Body: json.RawMessage(`{"boot_args":"x"}`)},
		{Method: "PUT", Path: "/actions", ContentType: "application/json", Body: json.RawMessage(`{"action_type":"Reboot"}`)},
		{Method: "PUT", Path: "/vsock", ContentType: "application/json", Body: json.RawMessage(`{"guest_cid":"3","uds_path":"/x"}`)},
		{Method: "POST", Path: "/actions", ContentType: "application/json", Body: json.RawMessage(`{"action_type":"InstanceStart"}`)},
		{Method: "PUT", Path: "/no-such-resource", ContentType: "application/json", Body: json.RawMessage(`{}`)},
	}
	for _, r := range bad {
		if err := swaggerCheck(router, r); err == nil {
			t.Errorf("%s %s %s accepted by the swagger check", r.Method, r.Path, r.Body)
		}
	}
	good := loggedRequest{Method: "PUT", Path: "/drives/rootfs", ContentType: "application/json",
		Body: json.RawMessage(`{"drive_id":"rootfs","is_root_device":true,"path_on_host":"/x"}`)}
	if err := swaggerCheck(router, good); err != nil {
		t.Errorf("valid drive request refused: %v", err)
	}
}

// TestContractWithSwagger drives a create/start/stop through the double,
// checks every request it received against Firecracker's swagger file, and
// compares the configuration requests with a golden file.
func TestContractWithSwagger(t *testing.T) {
	router := swaggerRouter(t)
	d, m := newMachine(t)
	dir := filepath.Dir(m.APISock)
	logPath := filepath.Join(dir, "requests.jsonl")
	t.Setenv(fcdouble.EnvRequestLog, logPath)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	if err := d.Identify(ctx, m, p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
	if err := d.Shutdown(ctx, m, p, 10*time.Second, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var golden strings.Builder
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r loggedRequest
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("request log line %q: %v", sc.Text(), err)
		}
		n++
		validateAgainstSwagger(t, router, r)
		if r.Method == http.MethodGet {
			continue // readiness polls: how many depends on timing
		}
		if r.ContentType != "application/json" {
			t.Errorf("%s %s sent Content-Type %q, want application/json", r.Method, r.Path, r.ContentType)
		}
		golden.WriteString(r.Method + " " + r.Path + "\n" + strings.ReplaceAll(string(r.Body), dir, "$DIR") + "\n\n")
	}
	if n == 0 {
		t.Fatal("the double logged no request")
	}
	checkGolden(t, "launch_shutdown.txt", golden.String())
}

// TestContractNetworkCalls checks the requests the driver sends only with a
// tap (not exercised against the double without root) against the swagger file.
func TestContractNetworkCalls(t *testing.T) {
	router := swaggerRouter(t)
	_, m := newMachine(t)
	m.TapDevice, m.GuestMAC = "tap-banger0", "02:fc:00:00:00:02"
	m.Initrd = "/boot/initrd.img"
	var golden strings.Builder
	for _, c := range bootCalls(m) {
		body, err := json.Marshal(c.body)
		if err != nil {
			t.Fatal(err)
		}
		validateAgainstSwagger(t, router, loggedRequest{Method: http.MethodPut, Path: c.path, ContentType: "application/json", Body: body})
		golden.WriteString("PUT " + c.path + "\n" + strings.ReplaceAll(string(body), filepath.Dir(m.APISock), "$DIR") + "\n\n")
	}
	checkGolden(t, "boot_calls_network.txt", golden.String())
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if got != string(want) {
		t.Errorf("requests differ from %s (rerun with -update if intended)\n--- got ---\n%s--- want ---\n%s", path, got, want)
	}
}
