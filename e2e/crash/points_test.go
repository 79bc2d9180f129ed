package crash

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/failpoint"

	// bangerd's packages, so that failpoint.Names lists the points bangerd has.
	_ "github.com/banger-dev/banger/internal/daemon"
)

// unreachable are the registered points the scenario cannot reach with the
// Firecracker double, each with the reason. Every one must still be a
// registered point.
var unreachable = map[string]string{
	// QEMU's QMP commands: the double stands in for Firecracker only, and
	// a real QEMU guest is the e2e suite's business.
	"vmm.qemu.command.before": "QEMU only",
	"vmm.qemu.command.after":  "QEMU only",
	// Plan steps without an undo: forward and teardown skip them, so their
	// teardown points are registered (internal/engine/failpoints.go makes
	// four per step key) but no code path hits them.
	"teardown.rootdisk.before":    "the step has no undo",
	"teardown.rootdisk.after":     "the step has no undo",
	"teardown.workdisk.before":    "the step has no undo",
	"teardown.workdisk.after":     "the step has no undo",
	"teardown.guestconfig.before": "the step has no undo",
	"teardown.guestconfig.after":  "the step has no undo",
	// Warm pools clone from snapshots, which the Firecracker driver cannot
	// yet: e2e TestPool kills bangerd during a refill on real QEMU guests.
	"pool.member.created": "QEMU only (pools)",
	"pool.member.started": "QEMU only (pools)",
	"pool.member.ready":   "QEMU only (pools)",
	"pool.claim.resumed":  "QEMU only (pools)",
}

// TestFailpointNames checks the list TestCrashPoints walks: bangerd's
// points are there, and each exclusion names a real point.
func TestFailpointNames(t *testing.T) {
	names := failpoint.Names()
	if len(names) == 0 {
		t.Fatal("failpoint.Names() is empty: the crash test would visit nothing")
	}
	for _, want := range []string{"create.insert.before", "start.vmm.before", "start.tap.after", "teardown.vmm.before", "store.commit.after", "handles.write.before", "delete.row.after", "gc.remove.before", "vmm.firecracker.call.before"} {
		if !slices.Contains(names, want) {
			t.Errorf("failpoint.Names() lacks %s: %v", want, names)
		}
	}
	for name := range unreachable {
		if !slices.Contains(names, name) {
			t.Errorf("unreachable lists %s, which is not a registered point: drop it", name)
		}
	}
}

// minHits is how many times the scenario must pass through every
// reachable point: a point reached fewer times fails the test.
const minHits = 3

// TestCrashPoints kills bangerd at every failpoint, at each hit in turn
// (the first, then the second, ...) until the scenario gets through one
// without dying, restarts it and checks the invariants (see the package
// comment). Every point must kill at least at its first minHits hits.
func TestCrashPoints(t *testing.T) {
	needHelpers(t)
	started := time.Now()
	points := reachablePoints()
	hits := inParallel(t, points, func(t *testing.T, point string) int {
		return sweepHits(t, func(t *testing.T, k int, spec string) bool {
			return crashAt(t, point, spec, "", k < minHits)
		})
	})
	var summary []string
	total := 0
	for _, p := range points {
		summary = append(summary, fmt.Sprintf("%s:%d", p, hits[p]))
		total += hits[p]
	}
	t.Logf("%d points, %d crashes (hits per point: %s); %d points excluded as unreachable; network %v; %s",
		len(points), total, strings.Join(summary, " "), len(unreachable), useNetwork(), time.Since(started).Round(time.Millisecond))
}

// TestCrashDuringRecovery crashes bangerd a second time while startup
// reconcile repairs what a first crash left: for a few first crashes that
// leave reconcile each kind of work, at every hit of every point reconcile
// passes through. The daemon after that must still bring everything right.
func TestCrashDuringRecovery(t *testing.T) {
	needHelpers(t)
	started := time.Now()
	firsts := []string{
		"start.vmm.after=kill",     // a starting, its VMM alive: reconcile kills it and tears down
		"teardown.tap.before=kill", // a stopping, its VMM gone, tap and sockets left
		"delete.files.before=kill", // b deleting, its files there: reconcile finishes the delete
		"delete.row.before=kill",   // b deleting, its files gone, its row there
	}
	var chains []string
	for _, first := range firsts {
		for _, p := range reachablePoints() {
			for _, prefix := range []string{"teardown.", "store.commit.", "handles.write.", "delete.", "vmm.firecracker.call."} {
				if strings.HasPrefix(p, prefix) {
					chains = append(chains, first+"/"+p)
				}
			}
		}
	}
	hits := inParallel(t, chains, func(t *testing.T, chain string) int {
		first, second, _ := strings.Cut(chain, "/")
		point, spec, _ := strings.Cut(first, "=")
		return sweepHits(t, func(t *testing.T, k int, secondSpec string) bool {
			return crashAt(t, point, spec, second+"="+secondSpec, true)
		})
	})
	var summary []string
	total := 0
	for _, c := range chains {
		if hits[c] > 0 {
			summary = append(summary, fmt.Sprintf("%s:%d", c, hits[c]))
			total += hits[c]
		}
	}
	t.Logf("%d crashes during recovery (%s); %s", total, strings.Join(summary, " "), time.Since(started).Round(time.Millisecond))
	if total == 0 {
		t.Error("no point was ever hit during startup reconcile: the first crashes leave it nothing to do")
	}
}

// reachablePoints are failpoint.Names() less the unreachable ones, those
// hit most often first (their chains of runs are the longest).
func reachablePoints() []string {
	var points []string
	for _, p := range failpoint.Names() {
		if _, ok := unreachable[p]; !ok && !strings.HasPrefix(p, "failpoint.test.") {
			points = append(points, p)
		}
	}
	weight := func(p string) int {
		for i, prefix := range []string{"vmm.firecracker.call.", "store.commit.", "handles.write."} {
			if strings.HasPrefix(p, prefix) {
				return i
			}
		}
		return 3
	}
	sort.SliceStable(points, func(i, j int) bool { return weight(points[i]) < weight(points[j]) })
	return points
}

// inParallel runs fn as subtest name for each name, -crash.parallel at a
// time (t.Run from several goroutines, whatever -test.parallel is), and
// returns what each returned.
func inParallel(t *testing.T, names []string, fn func(t *testing.T, name string) int) map[string]int {
	var mu sync.Mutex
	out := map[string]int{}
	sem := make(chan struct{}, max(1, *parallelFlag))
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t.Run(name, func(t *testing.T) {
				n := fn(t, name)
				mu.Lock()
				out[name] = n
				mu.Unlock()
			})
		}()
	}
	wg.Wait()
	return out
}

// sweepHits calls run as subtest hitK with the spec that kills at the
// k-th hit of a point, k = 1, 2, ..., until run reports that bangerd
// survived (or -crash.hits runs were made). It returns how many runs
// killed.
func sweepHits(t *testing.T, run func(t *testing.T, k int, spec string) (survived bool)) int {
	limit := *hitsFlag
	if limit <= 0 {
		limit = 200
	}
	killed := 0
	for k := 0; k < limit; k++ {
		spec := "kill"
		if k > 0 {
			spec = fmt.Sprintf("%d*off->kill", k)
		}
		survived, ran := false, false
		ok := t.Run(fmt.Sprintf("hit%d", k+1), func(t *testing.T) { ran = true; survived = run(t, k, spec) })
		switch {
		case !ran: // filtered out by -run
			continue
		case survived:
			return killed
		case !ok:
			return killed + 1 // one failure tells enough; the next hits would repeat it
		}
		killed++
		if k == 199 && *hitsFlag <= 0 {
			t.Fatalf("more than %d hits in one run: a loop?", k+1)
		}
	}
	return killed
}

// crashAt runs the scenario under bangerd with point=spec. When
// recoverySpec is set, the next bangerd runs with it (a second crash during
// startup reconcile); the one after runs clean, and everything is checked.
// crashAt reports whether the bangerd that was meant to die survived
// (the scenario's when recoverySpec is "", else the second), which fails
// the test when mustDie and no recoverySpec is set.
func crashAt(t *testing.T, point, spec, recoverySpec string, mustDie bool) (survived bool) {
	in := newInstallation(t)
	in.start(point + "=" + spec)
	in.importImage() // passes no failpoint
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	step, planted, err := scenario(ctx, in)
	d := in.daemon()
	switch {
	case err != nil && knownBug(err.Error()) != "" && !*knownBugsFlag:
		t.Skipf("step %q failed with a known bug (see %s; -crash.known-bugs makes it fail): %v", step, knownBug(err.Error()), err)
	case err != nil:
		t.Fatalf("step %q failed with bangerd alive: %v\nlog:\n%s", step, err, in.logTail(30))
	case step == "" && mustDie:
		t.Fatalf("failpoint %s=%s was never reached: bangerd survived the whole scenario (a new code path the scenario misses, or a point that cannot be reached: then list it in unreachable with the reason)", point, spec)
	case step == "":
		// The scenario passes fewer times through the point: it ends here.
		if bad := in.checkEmpty(ctx); len(bad) > 0 {
			t.Errorf("the scenario left, without a crash:\n  %s", strings.Join(bad, "\n  "))
		}
		in.shutdown()
		return true
	case !d.killedBySIGKILL():
		t.Fatalf("bangerd died at step %q of %s, not of the failpoint's SIGKILL\nlog:\n%s", step, d.how(), in.logTail(30))
	}
	what := fmt.Sprintf("a crash at %s=%s during %q", point, spec, step)
	t.Logf("killed during %q", step)

	if recoverySpec != "" {
		// The second bangerd dies in startup reconcile, or gets through it
		// and is stopped (its failpoint would fire in the checks).
		err := in.tryStart(recoverySpec)
		if err != nil && !errors.Is(err, errExitedAtStart) {
			t.Fatalf("after %s, bangerd with %s: %v", what, recoverySpec, err)
		}
		if err != nil || in.readyOrDead() {
			if d := in.daemon(); !d.killedBySIGKILL() {
				t.Fatalf("after %s, bangerd with %s died of %s, not of the failpoint's SIGKILL\nlog:\n%s", what, recoverySpec, d.how(), in.logTail(30))
			}
			what += ", then a crash at " + recoverySpec + " during startup reconcile"
		} else {
			// Reconcile got through: this first crash with a clean restart
			// is TestCrashPoints' business.
			in.shutdown()
			return true
		}
	}

	in.restart()
	report := func(check string, bad []string) {
		t.Helper()
		if bad = steerClear(t, bad); len(bad) > 0 {
			t.Errorf("after %s, %s:\n  %s\nlog:\n%s", what, check, strings.Join(bad, "\n  "), in.logTail(40))
		}
	}
	report("invariants", in.checkInvariants(ctx, planted))
	if planted != nil {
		res, err := in.client().GC(ctx, false)
		if err != nil {
			t.Fatalf("gc: %v", err)
		}
		var bad []string
		for _, o := range res.Removed {
			if !planted.has(o.Kind, o.Name) {
				bad = append(bad, fmt.Sprintf("gc removed %s %s (%s), which was not planted", o.Kind, o.Name, o.Detail))
			}
		}
		bad = append(bad, res.Errors...)
		report("gc of the planted orphans", append(bad, in.checkOrphansGone(planted)...))
	}
	report("invariants after gc", in.checkInvariants(ctx, nil))
	report("starting every vm", in.startAll(ctx))
	report("invariants after starting every vm", in.checkInvariants(ctx, nil))
	report("deleting every vm", in.deleteAll(ctx, false))
	in.shutdown()
	return survived
}

// scenario passes at least three times through every reachable point:
// three creates, three starts (a, b, a again), three teardowns (stop a,
// delete b, delete a), three gc removals (a planted orphan VMM, its run
// directory and a VM directory), three deletes; commits, handles writes and
// Firecracker API calls many times; three suspends, snapshots of the
// suspended VM and resumes (a, b, a again), and the snapshots' deletes. It returns the step during which
// bangerd died ("" if it never did), the orphans it planted, and an error
// when a step failed while bangerd lived.
func scenario(ctx context.Context, in *installation) (died string, planted *orphans, err error) {
	c := in.client()
	steps := []struct {
		name string
		do   func() error
	}{
		{"create a", func() error { _, err := c.CreateVM(ctx, createSpec("a")); return err }},
		{"create b", func() error { _, err := c.CreateVM(ctx, createSpec("b")); return err }},
		{"create c", func() error { _, err := c.CreateVM(ctx, createSpec("c")); return err }},
		{"start a", func() error { _, err := c.StartVM(ctx, "a"); return err }},
		{"start b", func() error { _, err := c.StartVM(ctx, "b"); return err }},
		{"stop a", func() error { _, err := c.StopVM(ctx, "a", client.StopRequest{TimeoutSeconds: 5}); return err }},
		{"start a again", func() error { _, err := c.StartVM(ctx, "a"); return err }},
		{"suspend a", func() error { _, err := c.SuspendVM(ctx, "a"); return err }},
		{"snapshot a", func() error { _, err := c.SnapshotVM(ctx, "a", client.SnapshotRequest{As: "s1"}); return err }},
		{"resume a", func() error { _, err := c.ResumeVM(ctx, "a"); return err }},
		{"suspend b", func() error { _, err := c.SuspendVM(ctx, "b"); return err }},
		{"snapshot b", func() error { _, err := c.SnapshotVM(ctx, "b", client.SnapshotRequest{As: "s2"}); return err }},
		{"resume b", func() error { _, err := c.ResumeVM(ctx, "b"); return err }},
		{"suspend a again", func() error { _, err := c.SuspendVM(ctx, "a"); return err }},
		{"snapshot a again", func() error { _, err := c.SnapshotVM(ctx, "a", client.SnapshotRequest{As: "s3"}); return err }},
		{"resume a again", func() error { _, err := c.ResumeVM(ctx, "a"); return err }},
		{"delete snapshots", func() error {
			return errors.Join(c.DeleteSnapshot(ctx, "s1"), c.DeleteSnapshot(ctx, "s2"), c.DeleteSnapshot(ctx, "s3"))
		}},
		{"gc with planted orphans", func() error {
			o, err := in.plantOrphans()
			if err != nil {
				return fmt.Errorf("planting orphans: %w", err)
			}
			planted = o
			res, err := c.GC(ctx, false)
			if err != nil {
				return err
			}
			if len(res.Errors) > 0 {
				return fmt.Errorf("gc errors: %v", res.Errors)
			}
			n := 0
			for _, r := range res.Removed {
				if o.has(r.Kind, r.Name) {
					n++
				}
			}
			if n != 3 || len(res.Removed) != 3 {
				return fmt.Errorf("gc removed %v, want the 3 planted orphans", res.Removed)
			}
			return nil
		}},
		{"delete b", func() error { return c.DeleteVM(ctx, "b", false) }},
		{"delete c", func() error { return c.DeleteVM(ctx, "c", false) }},
		{"delete a --force", func() error { return c.DeleteVM(ctx, "a", true) }},
	}
	d := in.daemon()
	for _, s := range steps {
		err := s.do()
		if d.exited(0) || err != nil && d.exited(3*time.Second) {
			return s.name, planted, nil
		}
		if err != nil {
			return s.name, planted, err
		}
	}
	return "", planted, nil
}
