//go:build bangertest

package failpoint_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/failpoint"
)

func enable(t *testing.T, name, spec string) {
	t.Helper()
	if err := failpoint.Enable(name, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { failpoint.Disable(name) })
}

func TestCompiled(t *testing.T) {
	if !failpoint.Compiled() {
		t.Fatal("Compiled() = false in a bangertest build")
	}
}

func TestHitError(t *testing.T) {
	ctx := context.Background()
	if err := fpA.Hit(ctx); err != nil {
		t.Fatalf("Hit of a point never enabled = %v", err)
	}
	enable(t, "failpoint.test.a", "error")
	err := fpA.Hit(ctx)
	if !errors.Is(err, failpoint.ErrInjected) || err.Error() != "failpoint failpoint.test.a: injected failure" {
		t.Fatalf("Hit = %v, want an injected error naming the point", err)
	}
	if err := fpB.Hit(ctx); err != nil {
		t.Fatalf("another point's Hit = %v, want nil", err)
	}
	enable(t, "failpoint.test.a", "error(no space left)")
	if err := fpA.Hit(ctx); !errors.Is(err, failpoint.ErrInjected) || err.Error() != "failpoint failpoint.test.a: no space left: injected failure" {
		t.Fatalf("Hit = %v, want the message in the error", err)
	}
	if err := failpoint.Disable("failpoint.test.a"); err != nil {
		t.Fatal(err)
	}
	if err := fpA.Hit(ctx); err != nil {
		t.Fatalf("Hit after Disable = %v", err)
	}
}

func TestHitCounted(t *testing.T) {
	ctx := context.Background()
	enable(t, "failpoint.test.a", "2*off->1*error(first)->1*off->error(rest)")
	want := []string{"", "", "first", "", "rest", "rest"}
	for i, w := range want {
		err := fpA.Hit(ctx)
		switch {
		case w == "" && err != nil:
			t.Errorf("hit %d = %v, want nil", i+1, err)
		case w != "" && (err == nil || !strings.Contains(err.Error(), w)):
			t.Errorf("hit %d = %v, want an error with %q", i+1, err, w)
		}
	}
	// Enabling again restarts the counts.
	enable(t, "failpoint.test.a", "1*error")
	if err := fpA.Hit(ctx); err == nil {
		t.Error("first hit after re-enabling 1*error = nil")
	}
	if err := fpA.Hit(ctx); err != nil {
		t.Errorf("second hit of 1*error = %v, want nil: the point turns off after its last counted step", err)
	}
}

// TestHitCountedConcurrent checks that counts hold when many goroutines hit
// one point: exactly N of them get the error.
func TestHitCountedConcurrent(t *testing.T) {
	enable(t, "failpoint.test.a", "5*off->10*error")
	var errs atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 10 {
				if fpA.Hit(context.Background()) != nil {
					errs.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if n := errs.Load(); n != 10 {
		t.Fatalf("%d of 640 hits failed, want exactly 10", n)
	}
}

func TestHitPanic(t *testing.T) {
	enable(t, "failpoint.test.a", "panic(boom)")
	defer func() {
		v := recover()
		err, ok := v.(error)
		if !ok || !errors.Is(err, failpoint.ErrInjected) || !strings.Contains(err.Error(), "failpoint.test.a: boom") {
			t.Fatalf("recovered %v, want an error wrapping ErrInjected with the point and message", v)
		}
	}()
	fpA.Hit(context.Background())
	t.Fatal("Hit returned instead of panicking")
}

func TestHitSleep(t *testing.T) {
	enable(t, "failpoint.test.a", "sleep(100ms)")
	start := time.Now()
	if err := fpA.Hit(context.Background()); err != nil {
		t.Fatalf("Hit = %v, want nil after sleeping", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("Hit returned after %v, want at least 100ms", d)
	}

	enable(t, "failpoint.test.a", "sleep(1h)")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	err := fpA.Hit(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, failpoint.ErrInjected) {
		t.Fatalf("Hit with an expiring context = %v, want the context's error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Hit took %v despite the context", d)
	}
}

func TestSetRestores(t *testing.T) {
	enable(t, "failpoint.test.b", "error(outer)")
	t.Run("inner", func(t *testing.T) {
		failpoint.Set(t, "failpoint.test.b", "error(inner)")
		if err := fpB.Hit(context.Background()); err == nil || !strings.Contains(err.Error(), "inner") {
			t.Fatalf("Hit inside Set = %v, want the inner error", err)
		}
	})
	if err := fpB.Hit(context.Background()); err == nil || !strings.Contains(err.Error(), "outer") {
		t.Fatalf("Hit after Set's cleanup = %v, want the outer spec back", err)
	}
}

func TestEnvKill(t *testing.T) {
	stdout, stderr, st := runChild(t, "failpoint.test.child=kill")
	if st.Signal != syscall.SIGKILL || stdout != "" {
		t.Fatalf("child with kill: status %+v, stdout %q, stderr %q; want killed by SIGKILL before any output", st, stdout, stderr)
	}
}

func TestEnvCountedKill(t *testing.T) {
	stdout, stderr, st := runChild(t, "other.point=off;failpoint.test.child=2*off->kill")
	if st.Signal != syscall.SIGKILL || stdout != "hit 1: <nil>\nhit 2: <nil>\n" {
		t.Fatalf("child with 2*off->kill: status %+v, stdout %q, stderr %q; want two hits then SIGKILL", st, stdout, stderr)
	}
}

func TestEnvError(t *testing.T) {
	stdout, stderr, st := runChild(t, "failpoint.test.child=1*error;no.such.point=error")
	want := "hit 1: failpoint failpoint.test.child: injected failure\nhit 2: <nil>\nhit 3: <nil>\nunregistered: [no.such.point]\n"
	if st.Code != 0 || stdout != want {
		t.Fatalf("child: status %+v, stdout %q, stderr %q; want exit 0 and %q", st, stdout, stderr, want)
	}
}

func TestEnvMalformed(t *testing.T) {
	stdout, stderr, st := runChild(t, "failpoint.test.child=explode")
	if st.Code == 0 || stdout != "" || !strings.Contains(stderr, failpoint.EnvVar+`: failpoint failpoint.test.child: spec "explode": unknown action`) {
		t.Fatalf("child with a malformed spec: status %+v, stdout %q, stderr %q; want it to stop at init naming the variable", st, stdout, stderr)
	}
}
