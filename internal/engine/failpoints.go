package engine

import (
	"context"

	"github.com/banger-dev/banger/internal/failpoint"
)

// Failpoints before and after every side effect of the engine. They do
// nothing in production builds; the crash-point tests (built with the
// bangertest tag) kill the daemon at each in turn and check what restart
// makes of it.
var (
	fpCreateInsertBefore = failpoint.New("create.insert.before")
	fpCreateInsertAfter  = failpoint.New("create.insert.after")
	fpCommitBefore       = failpoint.New("store.commit.before")
	fpCommitAfter        = failpoint.New("store.commit.after")
	fpHandlesBefore      = failpoint.New("handles.write.before")
	fpHandlesAfter       = failpoint.New("handles.write.after")
	fpDeleteFilesBefore  = failpoint.New("delete.files.before")
	fpDeleteFilesAfter   = failpoint.New("delete.files.after")
	fpDeleteRowBefore    = failpoint.New("delete.row.before")
	fpDeleteRowAfter     = failpoint.New("delete.row.after")
	// Suspend, resume and snapshots: the state saved but the VMM's
	// resources not yet released; restored but not yet recorded running;
	// a snapshot's files copied but its meta.json not yet written.
	fpSuspendSaved       = failpoint.New("suspend.saved")
	fpResumeRestored     = failpoint.New("resume.restored")
	fpSnapshotMetaBefore = failpoint.New("snapshot.meta.before")
)

// stepPoints are a plan step's failpoints: around its do (start.KEY.*) and
// around its undo (teardown.KEY.*).
type stepPoints struct {
	doBefore, doAfter, undoBefore, undoAfter *failpoint.Point
}

var planPoints = map[string]stepPoints{}

func init() {
	for _, key := range []string{"dirs", "rootdisk", "workdisk", "activate", "guestconfig", "tap", "netpolicy", "confine", "vmm"} {
		planPoints[key] = stepPoints{
			doBefore:   failpoint.New("start." + key + ".before"),
			doAfter:    failpoint.New("start." + key + ".after"),
			undoBefore: failpoint.New("teardown." + key + ".before"),
			undoAfter:  failpoint.New("teardown." + key + ".after"),
		}
	}
}

// hit runs a failpoint, returning its injected error.
func hit(ctx context.Context, p *failpoint.Point) error { return p.Hit(ctx) }
