package failpoint_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/failpoint"
	"github.com/banger-dev/banger/internal/system"
)

var (
	fpA     = failpoint.New("failpoint.test.a")
	fpB     = failpoint.New("failpoint.test.b")
	fpChild = failpoint.New("failpoint.test.child")
)

// childEnv makes the test binary act as the child of runChild instead of
// running tests.
const childEnv = "BANGER_FAILPOINT_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		childMain()
		return
	}
	os.Exit(m.Run())
}

// childMain hits fpChild three times, printing each result, then the names
// EnvVar set that no point claimed.
func childMain() {
	for i := 1; i <= 3; i++ {
		fmt.Printf("hit %d: %v\n", i, fpChild.Hit(context.Background()))
	}
	fmt.Printf("unregistered: %v\n", failpoint.Unregistered())
	os.Exit(0)
}

// runChild re-runs the test binary as a child whose environment sets
// failpoint.EnvVar to spec, and returns its stdout, stderr and exit status.
func runChild(t *testing.T, spec string) (stdout, stderr string, status system.ExitStatus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd, err := system.StartCommand(ctx, system.CommandSpec{
		Argv:   []string{os.Args[0], "-test.run=^$"},
		Env:    append(os.Environ(), childEnv+"=1", failpoint.EnvVar+"="+spec),
		Stdout: &out,
		Stderr: &errOut,
	})
	if err != nil {
		t.Fatal(err)
	}
	status, err = cmd.Wait()
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), status
}

func TestNewRejects(t *testing.T) {
	for _, name := range []string{"failpoint.test.a", "nodot", "Upper.case", "a..b", "-a.b"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%q) did not panic", name)
				}
			}()
			failpoint.New(name)
		}()
	}
}

func TestNames(t *testing.T) {
	names := failpoint.Names()
	for _, want := range []string{"failpoint.test.a", "failpoint.test.b", "failpoint.test.child"} {
		if !slices.Contains(names, want) {
			t.Errorf("Names() = %v, missing %s", names, want)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("Names() = %v, not sorted", names)
	}
	if fpA.Name() != "failpoint.test.a" {
		t.Errorf("Name() = %q", fpA.Name())
	}
}

// TestEnableChecks runs in both builds: bad names and specs are refused
// before the build's support is considered.
func TestEnableChecks(t *testing.T) {
	if err := failpoint.Enable("no.such.point", "error"); !errors.Is(err, failpoint.ErrNoSuchPoint) {
		t.Errorf("Enable of an unknown point = %v, want ErrNoSuchPoint", err)
	}
	if err := failpoint.Disable("no.such.point"); !errors.Is(err, failpoint.ErrNoSuchPoint) {
		t.Errorf("Disable of an unknown point = %v, want ErrNoSuchPoint", err)
	}
	err := failpoint.Enable("failpoint.test.a", "explode")
	if err == nil || errors.Is(err, failpoint.ErrNotCompiled) || !strings.Contains(err.Error(), `failpoint.test.a: spec "explode": unknown action`) {
		t.Errorf("Enable with a bad spec = %v, want a spec error naming the point", err)
	}
}
