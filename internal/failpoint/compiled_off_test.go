//go:build !bangertest

package failpoint_test

import (
	"context"
	"errors"
	"go/ast"
	"go/build"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"testing"

	"github.com/banger-dev/banger/internal/failpoint"
)

func TestNotCompiled(t *testing.T) {
	if failpoint.Compiled() {
		t.Fatal("Compiled() = true without the bangertest tag")
	}
	err := failpoint.Enable("failpoint.test.a", "error")
	if !errors.Is(err, failpoint.ErrNotCompiled) {
		t.Fatalf("Enable = %v, want ErrNotCompiled", err)
	}
	for range 3 {
		if err := fpA.Hit(context.Background()); err != nil {
			t.Fatalf("Hit = %v in a production build", err)
		}
	}
	if n := testing.AllocsPerRun(100, func() { fpA.Hit(context.Background()) }); n != 0 {
		t.Errorf("Hit allocates %v times per call", n)
	}
	ran := false
	t.Run("set", func(t *testing.T) {
		defer func() { ran = true }()
		failpoint.Set(t, "failpoint.test.a", "error")
		t.Error("Set did not skip the test in a production build")
	})
	if !ran {
		t.Error("Set's subtest did not run")
	}
}

// TestEnvIgnored proves that a production build does not read EnvVar: the
// child survives kill, and errors and malformed specs change nothing.
func TestEnvIgnored(t *testing.T) {
	const survived = "hit 1: <nil>\nhit 2: <nil>\nhit 3: <nil>\nunregistered: []\n"
	for _, spec := range []string{"failpoint.test.child=kill", "failpoint.test.child=error;no.such.point=error", "failpoint.test.child=explode"} {
		stdout, stderr, st := runChild(t, spec)
		if st.Code != 0 || stdout != survived {
			t.Errorf("child with %q: status %+v, stdout %q, stderr %q; want exit 0 and %q", spec, st, stdout, stderr, survived)
		}
	}
}

// TestProductionFilesReadNoEnv parses the files a build without tags
// compiles and fails if any reads the environment.
func TestProductionFilesReadNoEnv(t *testing.T) {
	envReaders := []string{"Getenv", "LookupEnv", "Environ"}
	readsEnv := func(ctx build.Context) (files []string, readers []string) {
		pkg, err := ctx.ImportDir(".", 0)
		if err != nil {
			t.Fatal(err)
		}
		fset := token.NewFileSet()
		for _, name := range pkg.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(pkg.Dir, name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok {
					if id, ok := sel.X.(*ast.Ident); ok && (id.Name == "os" || id.Name == "syscall") && slices.Contains(envReaders, sel.Sel.Name) {
						readers = append(readers, fset.Position(sel.Pos()).String())
					}
				}
				return true
			})
		}
		return pkg.GoFiles, readers
	}
	prod := build.Default
	prod.BuildTags = nil
	files, readers := readsEnv(prod)
	if !slices.Contains(files, "failpoint.go") || slices.Contains(files, "compiled_on.go") {
		t.Fatalf("production build files = %v: the build-tag walk is broken", files)
	}
	if len(readers) > 0 {
		t.Errorf("production build reads the environment at %v", readers)
	}
	tagged := build.Default
	tagged.BuildTags = []string{"bangertest"}
	if _, readers := readsEnv(tagged); len(readers) == 0 {
		t.Error("the bangertest build reads no environment variable: this check finds nothing")
	}
}
