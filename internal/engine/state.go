package engine

import "github.com/banger-dev/banger/internal/model"

// Facts are what the host says about a VM now.
type Facts struct {
	// Alive: a process proven to be this VM's VMM runs and answers as it.
	Alive bool
	// HostObjects: the VM holds something on the host (a VMM process, a
	// tap, loops, dm), proven or recorded.
	HostObjects bool
	// Startup: the facts were gathered by startup reconcile, after the
	// daemon itself was down.
	Startup bool
	// Present: a process proven to be this VM's VMM runs (answering or
	// not: a paused guest, a VMM mid-save).
	Present bool
	// Saved: the VM's directory holds a complete saved state (suspend).
	Saved bool
}

// Action is what to do to bring a VM's record and the host together.
type Action string

// The actions of nextState.
const (
	ActNothing      Action = "nothing"       // nothing on the host, nothing to record
	ActKeep         Action = "keep"          // alive and recorded running: keep it
	ActTeardown     Action = "teardown"      // tear down whatever is present, then record stopped
	ActFinishDelete Action = "finish-delete" // an interrupted delete: finish it
	// ActKeepSuspended keeps a suspended VM's tap, policy and root disk
	// (ending any VMM it has) and records it suspended.
	ActKeepSuspended Action = "keep-suspended"
	// ActContinue resumes a VMM that a suspend left paused without a
	// complete saved state: the VM goes on running.
	ActContinue Action = "continue"
)

// Decision is nextState's answer: the action, the state to record after it
// and the reason to record with it.
type Decision struct {
	Action Action
	State  model.VMState
	Reason string
}

// nextState is the one pure state machine of a VM: from the recorded state
// and the facts found on the host, what to do and what to record. Startup
// reconcile, the exit watcher and vm show all ask it.
func nextState(state model.VMState, f Facts) Decision {
	switch state {
	case model.StateSuspended:
		return Decision{ActKeepSuspended, model.StateSuspended, ""}
	case model.StateSuspending:
		switch {
		case f.Saved:
			return Decision{ActKeepSuspended, model.StateSuspended, ""}
		case f.Present:
			return Decision{ActContinue, model.StateRunning, "suspend was interrupted; the vm goes on running"}
		}
		return Decision{ActTeardown, model.StateStopped, "suspend was interrupted" + restart(f)}
	case model.StateResuming:
		switch {
		case f.Alive:
			return Decision{ActKeep, model.StateRunning, ""}
		case f.Saved:
			return Decision{ActKeepSuspended, model.StateSuspended, "resume was interrupted" + restart(f)}
		}
		return Decision{ActTeardown, model.StateStopped, "resume was interrupted" + restart(f)}
	case model.StateDeleting:
		return Decision{ActFinishDelete, model.StateDeleting, ""}
	case model.StateRunning:
		if f.Alive {
			return Decision{ActKeep, model.StateRunning, ""}
		}
		if f.Startup {
			return Decision{ActTeardown, model.StateStopped, "vm process was gone at daemon startup"}
		}
		return Decision{ActTeardown, model.StateStopped, "vm process exited (guest powered off, the vmm died, or it stopped answering)"}
	case model.StateStarting:
		// A half-started VM is never trusted to be complete.
		return Decision{ActTeardown, model.StateStopped, "start was interrupted" + restart(f)}
	case model.StateStopping:
		return Decision{ActTeardown, model.StateStopped, "stop was interrupted" + restart(f)}
	default:
		if f.HostObjects || f.Alive {
			return Decision{ActTeardown, model.StateStopped, "operation was interrupted" + restart(f)}
		}
		return Decision{ActNothing, state, ""}
	}
}

func restart(f Facts) string {
	if f.Startup {
		return " by a daemon restart"
	}
	return ""
}
