package depcheck

import (
	"go/build"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// The daemon's shape (docs/architecture.md): the engine runs VMs and speaks
// no HTTP; the local API serves HTTP over the engine and touches no host
// object itself; the publishers and the inventory sit beside the API, above
// the engine; cmd/bangerd only wires.

// directImports returns the module-internal and standard imports of the
// package in dir (non-test files, default build constraints).
func directImports(t *testing.T, root, rel string) []string {
	t.Helper()
	bp, err := build.Default.ImportDir(filepath.Join(root, rel), 0)
	if err != nil {
		t.Fatalf("reading %s: %v", rel, err)
	}
	return bp.Imports
}

func TestShapeEngineSpeaksNoHTTP(t *testing.T) {
	root := moduleRoot(t)
	for _, imp := range directImports(t, root, "internal/engine") {
		if imp == "net/http" || imp == modulePath+"/internal/api" || imp == modulePath+"/internal/localapi" {
			t.Errorf("internal/engine imports %s: the engine speaks engine types, not the wire", imp)
		}
	}
	deps := moduleDeps(t, root, modulePath+"/internal/engine")
	for _, bad := range []string{"/internal/api", "/internal/localapi", "/internal/cli", "/client"} {
		if chain, ok := deps[modulePath+bad]; ok {
			t.Errorf("internal/engine reaches %s via %s", bad, strings.Join(chain, " -> "))
		}
	}
}

func TestShapeLocalAPITouchesNoHost(t *testing.T) {
	root := moduleRoot(t)
	for _, imp := range directImports(t, root, "internal/localapi") {
		for _, bad := range []string{"/internal/storage", "/internal/network", "/internal/vmm", "/internal/store", "/internal/system"} {
			if imp == modulePath+bad || strings.HasPrefix(imp, modulePath+bad+"/") {
				t.Errorf("internal/localapi imports %s: handlers go through the engine and the inventory", imp)
			}
		}
	}
}

// servesHTTP reports whether a package's non-test files build an HTTP
// server or route table.
func servesHTTP(t *testing.T, dir string) bool {
	t.Helper()
	bp, err := build.Default.ImportDir(dir, 0)
	if err != nil {
		return false
	}
	for _, f := range bp.GoFiles {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if strings.Contains(s, "http.NewServeMux") || strings.Contains(s, "http.Server{") || strings.Contains(s, "http.HandlerFunc(") {
			return true
		}
	}
	return false
}

func TestShapeNoPackageServesHTTPAndRunsVMs(t *testing.T) {
	root := moduleRoot(t)
	var servers []string
	filepath.WalkDir(filepath.Join(root, "internal"), func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() || strings.Contains(p, "testdata") {
			return nil
		}
		if servesHTTP(t, p) {
			rel, _ := filepath.Rel(root, p)
			servers = append(servers, rel)
		}
		return nil
	})
	sort.Strings(servers)
	if len(servers) == 0 {
		t.Fatal("found no package serving HTTP: the scan is broken")
	}
	// The Firecracker double serves Firecracker's API: it is a VMM stand-in,
	// not a banger package that runs VMs.
	allowed := map[string]bool{"internal/localapi": true, "internal/vmm/firecracker/fcdouble": true}
	for _, s := range servers {
		if !allowed[s] {
			t.Errorf("%s serves HTTP; only internal/localapi may (and the Firecracker double)", s)
			continue
		}
		for _, imp := range directImports(t, root, s) {
			if imp == modulePath+"/internal/engine" && s != "internal/localapi" {
				t.Errorf("%s serves HTTP and imports the engine", s)
			}
			if strings.HasPrefix(imp, modulePath+"/internal/vmm/") || imp == modulePath+"/internal/storage" {
				t.Errorf("%s serves HTTP and runs VMs (imports %s)", s, imp)
			}
		}
	}
}

func TestShapeBangerdIsWiringOnly(t *testing.T) {
	root := moduleRoot(t)
	imps := directImports(t, root, "cmd/bangerd")
	for _, imp := range imps {
		if strings.HasPrefix(imp, modulePath+"/") && imp != modulePath+"/internal/daemon" {
			t.Errorf("cmd/bangerd imports %s; it only calls the daemon's wiring", imp)
		}
	}
	b, err := os.ReadFile(filepath.Join(root, "cmd", "bangerd", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n > 40 {
		t.Errorf("cmd/bangerd/main.go has %d lines: keep it wiring only", n)
	}
}

// Production code reads no test hooks from the environment: BANGER_TEST_*
// variables appear only in test files and in files built with the
// bangertest tag.
func TestNoTestHooksInProduction(t *testing.T) {
	root := moduleRoot(t)
	found := 0
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		s := string(b)
		if !strings.Contains(s, `"BANGER_TEST_`) {
			return nil
		}
		found++
		rel, _ := filepath.Rel(root, p)
		if strings.Contains(s, "//go:build bangertest") {
			return nil
		}
		// The netns re-exec helper is test support in internal/system, used
		// only by tests; it names its variables but is never reached from
		// cmd/bangerd or cmd/banger.
		if rel == filepath.Join("internal", "system", "netns.go") {
			return nil
		}
		t.Errorf("%s reads a BANGER_TEST_ variable outside a bangertest build", rel)
		return nil
	})
	if found == 0 {
		t.Fatal("no file names a BANGER_TEST_ variable: the scan is broken")
	}
}
