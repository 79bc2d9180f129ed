package depcheck

import (
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const modulePath = "github.com/banger-dev/banger"

// moduleRoot walks up from the test's working directory to go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// goFiles lists every .go file of the module, tests included, skipping what
// the go command skips (vendor, testdata, hidden and _ directories).
func goFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (name == "vendor" || name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			// A nested module is not part of this one.
			if p != root {
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if strings.HasSuffix(name, ".go") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// processSpawners are calls that start a program without os/exec; they are
// as much a way around the runner seam as the import itself.
var processSpawners = map[string]map[string]bool{
	"os":                    {"StartProcess": true},
	"syscall":               {"ForkExec": true, "Exec": true, "StartProcess": true},
	"golang.org/x/sys/unix": {"Exec": true},
}

// TestExecOnlyInSystem enforces the one seam to the OS: only package
// internal/system (not its subpackages) may import os/exec or spawn
// processes through os.StartProcess or syscall.ForkExec, tests included.
func TestExecOnlyInSystem(t *testing.T) {
	root := moduleRoot(t)
	allowed := filepath.Join(root, "internal", "system")
	files := goFiles(t, root)
	if len(files) < 20 {
		t.Fatalf("found only %d .go files under %s: the walk is broken", len(files), root)
	}
	fset := token.NewFileSet()
	var violations []string
	for _, f := range files {
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Errorf("parse %s: %v", f, err)
			continue
		}
		if filepath.Dir(f) == allowed {
			continue
		}
		violations = append(violations, execViolations(fset, file)...)
	}
	sort.Strings(violations)
	for _, v := range violations {
		t.Errorf("%s (only internal/system may start processes; add a helper there)", v)
	}
}

// execViolations reports the os/exec imports and process-spawning calls of one file.
func execViolations(fset *token.FileSet, file *ast.File) []string {
	var out []string
	local := map[string]string{} // local package name -> import path, for spawner imports
	for _, imp := range file.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if path == "os/exec" {
			out = append(out, fset.Position(imp.Pos()).String()+": imports os/exec")
			continue
		}
		if _, ok := processSpawners[path]; ok {
			name := filepath.Base(path)
			if imp.Name != nil {
				name = imp.Name.Name
			}
			local[name] = path
		}
	}
	if len(local) == 0 {
		return out
	}
	ast.Inspect(file, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		id, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		if path, ok := local[id.Name]; ok && processSpawners[path][sel.Sel.Name] {
			out = append(out, fset.Position(sel.Pos()).String()+": uses "+path+"."+sel.Sel.Name)
		}
		return true
	})
	return out
}

func TestExecViolationsDetects(t *testing.T) {
	src := `package p
import (
	"os/exec"
	sc "syscall"
	"os"
)
var _ = exec.Command
func f() { sc.ForkExec("", nil, nil); os.StartProcess("", nil, nil); os.Getpid() }
`
	fset := token.NewFileSet()
	file, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := execViolations(fset, file)
	want := []string{"imports os/exec", "uses syscall.ForkExec", "uses os.StartProcess"}
	if len(got) != len(want) {
		t.Fatalf("violations = %q, want %d of them", got, len(want))
	}
	for i, w := range want {
		if !strings.HasSuffix(got[i], w) {
			t.Errorf("violation %d = %q, want suffix %q", i, got[i], w)
		}
	}
}

// cliAllowed are the module packages cmd/banger may link. The CLI speaks the
// API through the public client; it must not carry the daemon, the store
// (SQLite), disks, networking or VMM drivers.
var cliAllowed = map[string]string{
	"github.com/banger-dev/banger/cmd/banger":      "the binary",
	"github.com/banger-dev/banger/internal/cli":    "the CLI",
	"github.com/banger-dev/banger/client":          "the API client, the CLI's only way to the daemon",
	"github.com/banger-dev/banger/internal/api":    "the wire, reached only through client",
	"github.com/banger-dev/banger/internal/model":  "plain data, reached only through client",
	"github.com/banger-dev/banger/internal/config": "settings shared with bangerd",
	"github.com/banger-dev/banger/internal/system": "LookPath, StartDetached (daemon auto-start), terminal helpers",
	"github.com/banger-dev/banger/internal/units":  "ParseSize of --disk-size and --work-disk-size",
}

// cliViaClient are the packages cmd/banger may reach only through client:
// the CLI itself must not import them.
var cliViaClient = []string{
	"github.com/banger-dev/banger/internal/api",
	"github.com/banger-dev/banger/internal/model",
}

// moduleDeps returns every module package reachable from pkg through non-test
// imports, with the import chain that reaches it, using go/build (which
// applies build constraints) rather than the go command.
func moduleDeps(t *testing.T, root, pkg string) map[string][]string {
	t.Helper()
	chains := map[string][]string{pkg: {pkg}}
	queue := []string{pkg}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		dir := filepath.Join(root, strings.TrimPrefix(strings.TrimPrefix(p, modulePath), "/"))
		bp, err := build.Default.ImportDir(dir, 0)
		if err != nil {
			t.Fatalf("reading package %s in %s: %v", p, dir, err)
		}
		for _, imp := range bp.Imports {
			if imp != modulePath && !strings.HasPrefix(imp, modulePath+"/") {
				continue
			}
			if _, seen := chains[imp]; seen {
				continue
			}
			chains[imp] = append(append([]string(nil), chains[p]...), imp)
			queue = append(queue, imp)
		}
	}
	return chains
}

// TestCLIDoesNotLinkDaemon keeps cmd/banger a thin API client.
func TestCLIDoesNotLinkDaemon(t *testing.T) {
	root := moduleRoot(t)
	deps := moduleDeps(t, root, "github.com/banger-dev/banger/cmd/banger")
	if _, ok := deps["github.com/banger-dev/banger/internal/cli"]; !ok {
		t.Fatalf("cmd/banger does not reach internal/cli (deps %v): the walk is broken", deps)
	}
	var names []string
	for p := range deps {
		names = append(names, p)
	}
	sort.Strings(names)
	for _, p := range names {
		if _, ok := cliAllowed[p]; !ok {
			t.Errorf("cmd/banger depends on %s via %s; the CLI must reach the daemon only through the client package", p, strings.Join(deps[p], " -> "))
		}
	}
	// No package of the CLI but client itself imports the wire or the model.
	for _, p := range names {
		if p == "github.com/banger-dev/banger/client" || slices.Contains(cliViaClient, p) {
			continue
		}
		bp, err := build.Default.ImportDir(filepath.Join(root, strings.TrimPrefix(strings.TrimPrefix(p, modulePath), "/")), 0)
		if err != nil {
			t.Fatalf("reading package %s: %v", p, err)
		}
		for _, imp := range bp.Imports {
			if slices.Contains(cliViaClient, imp) {
				t.Errorf("%s imports %s; the CLI must use the client package instead", p, imp)
			}
		}
	}
	for _, p := range cliViaClient {
		if _, ok := deps[p]; !ok {
			t.Errorf("cmd/banger does not reach %s (deps %v): the walk is broken", p, names)
		}
	}
}

// TestDaemonIsLinkedByBangerd proves the walk sees deep imports: bangerd
// must reach the daemon, the store and the storage packages.
func TestDaemonIsLinkedByBangerd(t *testing.T) {
	deps := moduleDeps(t, moduleRoot(t), "github.com/banger-dev/banger/cmd/bangerd")
	for _, want := range []string{"github.com/banger-dev/banger/internal/daemon", "github.com/banger-dev/banger/internal/store", "github.com/banger-dev/banger/internal/storage"} {
		if _, ok := deps[want]; !ok {
			t.Errorf("cmd/bangerd does not reach %s: the dependency walk misses imports", want)
		}
	}
}
