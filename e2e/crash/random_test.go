package crash

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
)

// op is one random operation on a VM name (gc ignores the name).
type op struct {
	kind string
	name string
}

func (o op) String() string {
	if o.kind == "gc" {
		return "gc"
	}
	return o.kind + " " + o.name
}

// opKinds with their weights. exec needs a guest, which the double has not.
var opKinds = []struct {
	kind   string
	weight int
}{
	{"create", 20}, {"start", 20}, {"stop", 9}, {"stop --force", 8}, {"restart", 10},
	{"delete", 9}, {"delete --force", 9}, {"gc", 10}, {"kill vmm", 5},
}

func randomOp(rng *rand.Rand, names []string) op {
	total := 0
	for _, k := range opKinds {
		total += k.weight
	}
	n := rng.IntN(total)
	for _, k := range opKinds {
		if n < k.weight {
			return op{k.kind, names[rng.IntN(len(names))]}
		}
		n -= k.weight
	}
	panic("unreachable")
}

// TestRandomOps runs -crash.ops random operations on five names from
// three workers, kills bangerd (SIGKILL from the test; every other time on
// average its process group: bangerd and the tools it runs) every 15 to 30
// operations while the last ones are in flight, restarts it and checks the
// invariants each time, and at the end deletes every VM and checks that
// nothing is left. The operations and the kill moments come from the seed
// (logged; -crash.seed replays them); how the workers interleave does not.
func TestRandomOps(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	t.Logf("seed %d (replay with -crash.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x62616e676572))
	names := []string{"n0", "n1", "n2", "n3", "n4"}
	ops := make([]op, *opsFlag)
	for i := range ops {
		ops[i] = randomOp(rng, names)
	}

	in := newInstallation(t)
	in.restart()
	in.importImage()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	started := time.Now()
	var history []string // what ran, for failure messages
	kills, done := 0, 0
	for done < len(ops) {
		n := min(15+rng.IntN(16), len(ops)-done)
		killAfter := time.Duration(rng.IntN(60)) * time.Millisecond
		group := rng.IntN(2) == 0
		phase := ops[done : done+n]
		results := in.runPhase(ctx, phase, killAfter, group)
		done += n
		for _, r := range results {
			history = append(history, r.String())
			if r.unexpected && len(steerClear(t, []string{r.String()})) > 0 {
				t.Errorf("%s: unexpected error with bangerd alive: %v\nlog:\n%s", r.op, r.err, in.logTail(30))
			}
		}
		kills++
		if group {
			history = append(history, "--- bangerd and its helpers killed, restarted")
		} else {
			history = append(history, "--- bangerd killed, restarted")
		}
		in.restart()
		if bad := steerClear(t, in.checkInvariants(ctx, nil)); len(bad) > 0 {
			t.Fatalf("after kill %d (op %d of %d, seed %d), invariants:\n  %s\nlast operations:\n  %s\nlog:\n%s",
				kills, done, len(ops), seed, strings.Join(bad, "\n  "), strings.Join(lastN(history, 40), "\n  "), in.logTail(60))
		}
	}
	if bad := steerClear(t, in.deleteAll(ctx, false)); len(bad) > 0 {
		t.Fatalf("deleting every vm at the end (seed %d):\n  %s\nlast operations:\n  %s\nlog:\n%s",
			seed, strings.Join(bad, "\n  "), strings.Join(lastN(history, 40), "\n  "), in.logTail(60))
	}
	in.shutdown()
	t.Logf("%d operations, %d kills of bangerd, %s", len(ops), kills, time.Since(started).Round(time.Millisecond))
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// opResult is what one operation did.
type opResult struct {
	op         op
	err        error
	afterKill  bool // bangerd was dead when it returned
	unexpected bool // failed for another reason than a typed refusal, bangerd alive
	skipped    bool // not run: bangerd was killed first
}

func (r opResult) String() string {
	switch {
	case r.skipped:
		return r.op.String() + ": not run (killed first)"
	case r.err == nil:
		return r.op.String() + ": ok"
	case r.afterKill:
		return r.op.String() + ": cut by the kill"
	}
	return fmt.Sprintf("%s: %v", r.op, r.err)
}

// runPhase runs ops from three workers; once the last one is handed out,
// it waits killAfter and kills bangerd, whatever is still in flight. With
// group, the tools bangerd runs (mkfs.ext4, debugfs, ...) die with it, as
// on power loss or when a service manager kills the daemon's cgroup; VMMs,
// in sessions of their own, survive either way.
func (in *installation) runPhase(ctx context.Context, ops []op, killAfter time.Duration, group bool) []opResult {
	c, d := in.client(), in.daemon()
	results := make([]opResult, len(ops))
	// gc and create never overlap unless -crash.known-bugs: a VM created
	// during a gc sweep loses its VMM and directories to it (a known bug,
	// TestGCSparesVMCreatedDuringSweep), which would hide everything else.
	var gcGate sync.RWMutex
	// A VMM dies on its own only while no operation on its VM runs: a VMM
	// killed under a start fails that start, rightly.
	nameGate := map[string]*sync.RWMutex{}
	for _, o := range ops {
		nameGate[o.name] = &sync.RWMutex{}
	}
	next := make(chan int)
	var killed sync.WaitGroup
	killed.Add(1)
	go func() {
		defer killed.Done()
		for i := range ops {
			next <- i
		}
		close(next)
		time.Sleep(killAfter)
		if group {
			d.cmd.SignalGroup(syscall.SIGKILL)
		} else {
			d.cmd.Signal(syscall.SIGKILL)
		}
	}()
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for i := range next {
				if d.exited(0) {
					results[i] = opResult{op: ops[i], skipped: true}
					continue
				}
				gate := func() {}
				if ops[i].kind == "kill vmm" {
					nameGate[ops[i].name].Lock()
					gate = nameGate[ops[i].name].Unlock
				} else {
					nameGate[ops[i].name].RLock()
					gate = nameGate[ops[i].name].RUnlock
				}
				if !*knownBugsFlag {
					switch ops[i].kind {
					case "gc":
						gcGate.Lock()
						ungate := gate
						gate = func() { gcGate.Unlock(); ungate() }
					case "create":
						gcGate.RLock()
						ungate := gate
						gate = func() { gcGate.RUnlock(); ungate() }
					}
				}
				err := in.do(ctx, c, ops[i])
				gate()
				// A request cut by the kill can return before the
				// daemon is reaped: give the reaper a moment.
				r := opResult{op: ops[i], err: err, afterKill: err != nil && (d.exited(0) || errors.Is(err, client.ErrDaemonUnreachable) && d.exited(3*time.Second))}
				r.unexpected = err != nil && !r.afterKill && !expectedRefusal(err)
				results[i] = r
			}
		})
	}
	wg.Wait()
	killed.Wait()
	if !d.exited(10 * time.Second) {
		in.t.Fatalf("bangerd pid %d still there 10s after SIGKILL", d.pid)
	}
	return results
}

// expectedRefusal: the daemon refused an operation the random order made
// meaningless (no such VM, the name taken, a VM being deleted).
func expectedRefusal(err error) bool {
	return client.IsNotFound(err) || client.IsAlreadyExists(err) || client.IsConflict(err)
}

// do runs one operation. gc must remove nothing: everything a crash left
// was cleaned at restart (the invariants say so), and what runs is not an
// orphan.
func (in *installation) do(ctx context.Context, c *client.Client, o op) error {
	var err error
	switch o.kind {
	case "create":
		_, err = c.CreateVM(ctx, createSpec(o.name))
	case "start":
		_, err = c.StartVM(ctx, o.name)
	case "stop":
		_, err = c.StopVM(ctx, o.name, client.StopRequest{TimeoutSeconds: 5})
	case "stop --force":
		_, err = c.StopVM(ctx, o.name, client.StopRequest{Force: true})
	case "restart":
		_, err = c.RestartVM(ctx, o.name, client.StopRequest{TimeoutSeconds: 5})
	case "delete":
		err = c.DeleteVM(ctx, o.name, false)
	case "delete --force":
		err = c.DeleteVM(ctx, o.name, true)
	case "gc":
		var res client.GCResponse
		res, err = c.GC(ctx, false)
		if err == nil && (len(res.Removed) > 0 || len(res.Errors) > 0) {
			err = fmt.Errorf("gc removed %v (errors %v) from a host where nothing was orphaned", res.Removed, res.Errors)
		}
	case "kill vmm":
		// The VM's VMM dies on its own (a guest power-off, a VMM crash).
		vm, gerr := c.GetVM(ctx, o.name)
		if gerr != nil {
			return gerr
		}
		for _, d := range in.doubles(nil) {
			if d.sock == vm.Runtime.APISockPath {
				syscall.Kill(d.pid, syscall.SIGKILL)
			}
		}
	default:
		err = errors.New("unknown op " + o.kind)
	}
	return err
}
