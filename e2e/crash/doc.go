// Package crash holds banger's crash tests. They run the real bangerd (built
// with the bangertest tag, so its failpoints are compiled in) with the
// Firecracker double as VMM, kill it with SIGKILL at every failpoint and at
// random moments, start it again and check what it makes of the host:
//
//   - every VM in the store is running with a VMM proven alive (vm show says
//     alive, exactly one double serves its API socket and it is the process
//     the handles name, in the VM's cgroup; handles.json is there, its tap
//     too) or is created, stopped or in error with nothing on the host (no
//     VMM, nothing in its run directory, no handles.json, no tap, no cgroup,
//     no jail); no VM is left starting, stopping or deleting once startup
//     reconcile is done;
//   - a VM's root.img and work.ext4, when they exist, are ext4 file systems
//     (a start takes an existing disk as made);
//   - no VMM process, run directory, VM directory, tap, cgroup or jail
//     exists that no VM accounts for;
//   - gc --dry-run finds nothing to remove and nothing it would refuse;
//   - every VM can be started again, and deleting every VM leaves nothing.
//
// What gc moves to STATE_DIR/lost+found (VM directories no VM accounts for)
// is set aside on purpose, never deleted: the checks ignore lost+found.
//
// TestCrashPoints visits every name failpoint.Names() lists, at every hit
// in turn (one run killed at the first hit, one at the second, ... until a
// run gets through), in a scenario that passes through every point at least
// three times: three creates, three starts, a stop, a gc with planted
// orphans, three deletes. A point reached fewer than three times fails the
// test, so a new point cannot be forgotten; the points the double cannot
// reach are listed with the reason in unreachable (points_test.go), and
// TestFailpointNames checks that each is still a registered point.
//
// TestCrashDuringRecovery crashes the next bangerd too, at every hit of
// every point startup reconcile passes through while it repairs a first
// crash (a half-started VM, a half-stopped one, two half-deleted ones).
//
// TestRandomOps runs random operations on five names from three workers and
// kills the daemon (alone, or with the tools it runs) at random moments,
// checking the invariants after each restart and that nothing is left at
// the end. Its seed is logged; -crash.seed replays the operations and kill
// moments (not the workers' interleaving).
//
// The tests in bugs_test.go pin daemon bugs found here, deterministically
// (a wrapped host tool holds the daemon in the window); they fail until the
// bugs are fixed. Meanwhile TestRandomOps steers clear of their symptoms
// and logs them, unless -crash.known-bugs.
//
// TestInvariantsSeeLeaks checks the checker: each kind of leftover, planted
// by hand, must be reported.
//
// As root, each installation runs in a network namespace of its own
// (created by the test, gone with its last process), with banger's network
// on, so taps and the bridge are real; the whole test binary first
// re-executes itself in a private namespace (system.ReexecInNewNetNS). Its
// VMMs run confined (their own uids, jails, and cgroups under a parent of
// the installation's own, removed at the end). Unprivileged, or with
// -crash.net=false and -crash.confine=false, the network and confinement
// are off and everything else is the same.
//
// make test-crash runs this package alone, verbosely.
package crash
