package engine

import (
	"testing"

	"github.com/banger-dev/banger/internal/model"
)

func TestNextState(t *testing.T) {
	cases := []struct {
		state      model.VMState
		alive, has bool
		want       Action
		next       model.VMState
	}{
		{model.StateRunning, true, true, ActKeep, model.StateRunning},
		{model.StateRunning, false, true, ActTeardown, model.StateStopped},
		{model.StateRunning, false, false, ActTeardown, model.StateStopped},
		{model.StateStarting, true, true, ActTeardown, model.StateStopped},
		{model.StateStarting, false, true, ActTeardown, model.StateStopped},
		{model.StateStopping, false, false, ActTeardown, model.StateStopped},
		{model.StateDeleting, false, false, ActFinishDelete, model.StateDeleting},
		{model.StateStopped, false, false, ActNothing, model.StateStopped},
		{model.StateStopped, false, true, ActTeardown, model.StateStopped},
		{model.StateCreated, false, false, ActNothing, model.StateCreated},
		{model.StateError, true, true, ActTeardown, model.StateStopped},
	}
	for _, c := range cases {
		d := nextState(c.state, Facts{Alive: c.alive, HostObjects: c.has})
		if d.Action != c.want || d.State != c.next {
			t.Errorf("nextState(%s, alive=%v, objects=%v) = %s -> %s, want %s -> %s", c.state, c.alive, c.has, d.Action, d.State, c.want, c.next)
		}
		if d.Action == ActTeardown && d.Reason == "" {
			t.Errorf("nextState(%s): a teardown records no reason", c.state)
		}
	}
}
