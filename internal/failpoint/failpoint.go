// Package failpoint lets tests make named points of banger's code fail,
// panic, stall or kill the process, so that crash recovery can be tested at
// every side effect of create, start, stop, delete and gc.
//
// A package declares its points once, at init:
//
//	var fpTapBefore = failpoint.New("start.tap.before")
//
// and calls Hit where the point sits, treating its error like the error of
// the step it guards:
//
//	if err := fpTapBefore.Hit(ctx); err != nil {
//		return err
//	}
//
// Production builds compile failpoints out: Hit always returns nil, nothing
// reads the environment and Enable fails with ErrNotCompiled. Builds with the
// tag bangertest (go build -tags bangertest, as tests build bangerd) read
// EnvVar once at init, such as
//
//	BANGER_FAILPOINTS="start.tap.before=kill;gc.remove.after=2*off->error"
//
// and tests in such a build may also call Enable, Disable or Set.
//
// A spec is a list of steps joined by "->"; each hit of the point takes the
// current step. A step is an action with an optional count prefix "N*" that
// makes it apply to the next N hits before the following step takes over.
// A step without a count applies to every later hit, so it must come last;
// when all steps are counted, the point turns off after the last one.
// Actions:
//
//	off            do nothing
//	error          Hit returns an error wrapping ErrInjected
//	error(msg)     the same, with msg in the error
//	panic          panic with an error wrapping ErrInjected
//	panic(msg)     the same, with msg in the panic value
//	sleep(250ms)   sleep (a time.ParseDuration value), then return nil, or
//	               return ctx's error early if ctx ends first
//	kill           SIGKILL this process at once: the crash-point action
//
// Messages may not contain "->" or ";". Examples: "error", "1*error"
// (fail once), "2*off->kill" (crash at the third hit), "1*sleep(2s)->error".
package failpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// EnvVar is the environment variable a bangertest build reads its failpoint
// specs from, as "name=spec;name=spec". Production builds never read it.
const EnvVar = "BANGER_FAILPOINTS"

// ErrInjected is wrapped by every error and panic value a failpoint makes,
// so a test can tell an injected failure from a real one with errors.Is.
var ErrInjected = errors.New("injected failure")

// ErrNotCompiled is returned by Enable in a build without the bangertest
// tag, where failpoints are compiled out.
var ErrNotCompiled = errors.New("failpoints are compiled out (build with -tags bangertest)")

// ErrNoSuchPoint is returned by Enable and Disable for a name no point
// registered.
var ErrNoSuchPoint = errors.New("no such failpoint")

// Compiled reports whether failpoints are compiled in (the bangertest build
// tag). Without it Hit is a no-op.
func Compiled() bool { return compiled }

// Point is one named failpoint. Its zero value is not usable; make points
// with New.
type Point struct {
	name string
	prog atomic.Pointer[program] // nil: off (always nil when !compiled)
}

var (
	registryMu sync.Mutex
	registry   = map[string]*Point{}
	// pending holds the specs read from EnvVar for points not yet
	// registered; New claims them. Empty when !compiled.
	pending = map[string]*program{}
)

// New registers the failpoint name and returns it. Call it from a package
// variable's initializer. Names are dot-separated lowercase words, the first
// of letters and digits, the others also with hyphens, such as
// "start.tap.before" (operation, step, before or after the side effect). New
// panics on a malformed or duplicate name: both are programming errors.
func New(name string) *Point {
	if err := checkName(name); err != nil {
		panic(fmt.Sprintf("failpoint.New: %v", err))
	}
	registryMu.Lock()
	defer registryMu.Unlock()
	if _, dup := registry[name]; dup {
		panic(fmt.Sprintf("failpoint.New: %q registered twice", name))
	}
	p := &Point{name: name}
	if prog, ok := pending[name]; ok {
		p.prog.Store(prog)
		delete(pending, name)
	}
	registry[name] = p
	return p
}

// Name returns the point's name.
func (p *Point) Name() string { return p.name }

// Hit runs the point's current action. It returns nil when the point is off
// and always in a build without the bangertest tag, where it costs a
// function call that the compiler inlines away.
func (p *Point) Hit(ctx context.Context) error {
	if !compiled {
		return nil
	}
	prog := p.prog.Load()
	if prog == nil {
		return nil
	}
	return p.run(ctx, prog.next())
}

func (p *Point) run(ctx context.Context, a action) error {
	switch a.kind {
	case actError:
		return p.injected(a.msg)
	case actPanic:
		panic(p.injected(a.msg))
	case actSleep:
		t := time.NewTimer(a.sleep)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("failpoint %s: sleep cut short: %w", p.name, ctx.Err())
		}
	case actKill:
		// A process-directed SIGKILL ends every thread before kill(2)
		// returns to user space; the loop only documents that nothing
		// after this point may run.
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		for {
			time.Sleep(time.Hour)
		}
	}
	return nil
}

func (p *Point) injected(msg string) error {
	if msg == "" {
		return fmt.Errorf("failpoint %s: %w", p.name, ErrInjected)
	}
	return fmt.Errorf("failpoint %s: %s: %w", p.name, msg, ErrInjected)
}

// Names lists every registered point, sorted, so that a crash test can
// visit all of them.
func Names() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Unregistered lists, sorted, the names EnvVar set that no point has
// registered (yet): after init, a typo or a point that is not linked into
// this binary. Always empty without the bangertest tag.
func Unregistered() []string {
	registryMu.Lock()
	defer registryMu.Unlock()
	names := make([]string, 0, len(pending))
	for n := range pending {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Enable sets the spec of the registered point name, replacing any earlier
// one, and restarts its counts. It checks the spec in every build, then
// fails with ErrNotCompiled in a build without the bangertest tag.
func Enable(name, spec string) error {
	_, err := swap(name, spec)
	return err
}

// Disable turns the point name off.
func Disable(name string) error {
	p, err := lookup(name)
	if err != nil {
		return err
	}
	p.prog.Store(nil)
	return nil
}

// TB is the part of testing.TB that Set needs.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// Set enables name with spec until the end of the test, then restores the
// point's previous spec. It skips the test in a build without the
// bangertest tag. Points are process-wide: tests that set the same point
// must not run in parallel.
func Set(tb TB, name, spec string) {
	tb.Helper()
	prev, err := swap(name, spec)
	if errors.Is(err, ErrNotCompiled) {
		tb.Skipf("failpoint %s: %v", name, err)
	}
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if p, err := lookup(name); err == nil {
			p.prog.Store(prev)
		}
	})
}

// swap installs spec on name and returns the program it replaced.
func swap(name, spec string) (*program, error) {
	prog, err := parseSpec(spec)
	if err != nil {
		return nil, fmt.Errorf("enabling failpoint %s: %w", name, err)
	}
	p, err := lookup(name)
	if err != nil {
		return nil, err
	}
	if !compiled {
		return nil, fmt.Errorf("enabling failpoint %s: %w", name, ErrNotCompiled)
	}
	return p.prog.Swap(prog), nil
}

func lookup(name string) (*Point, error) {
	registryMu.Lock()
	p := registry[name]
	registryMu.Unlock()
	if p == nil {
		return nil, fmt.Errorf("failpoint %q: %w", name, ErrNoSuchPoint)
	}
	return p, nil
}

// checkName enforces ^[a-z0-9]+(\.[a-z0-9-]+)+$ without the regexp package.
func checkName(name string) error {
	segments, start := 0, 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '.' {
			c := name[i]
			lowerOrDigit := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
			if !lowerOrDigit && (c != '-' || segments == 0) {
				return fmt.Errorf("invalid failpoint name %q: want dot-separated words of [a-z0-9] (hyphens allowed after the first word), such as start.tap.before", name)
			}
			continue
		}
		if i == start {
			return fmt.Errorf("invalid failpoint name %q: empty word; want at least two dot-separated words, such as start.tap.before", name)
		}
		segments++
		start = i + 1
	}
	if segments < 2 {
		return fmt.Errorf("invalid failpoint name %q: want at least two dot-separated words, such as start.tap.before", name)
	}
	return nil
}
