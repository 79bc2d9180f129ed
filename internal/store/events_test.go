package store

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// The event log keeps its newest entries only, in order, filtered by VM name
// on request; options with lifetimes survive a round trip.
func TestEventsBoundedAndFiltered(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	t0 := time.Unix(1700000000, 5).UTC()
	var evs []model.Event
	for i := 1; i <= 7; i++ {
		name := "a"
		if i%2 == 0 {
			name = "b"
		}
		evs = append(evs, model.Event{Seq: int64(i), Time: t0.Add(time.Duration(i) * time.Second), Kind: "started", VMName: name, VMID: "id-" + name, Cause: "request", TookMillis: int64(i)})
	}
	if err := s.AppendEvents(ctx, evs[:4], 5); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendEvents(ctx, evs[4:], 5); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListEvents(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(all, evs[2:]) {
		t.Fatalf("kept %+v, want the newest 5 %+v", all, evs[2:])
	}
	b, _ := s.ListEvents(ctx, "b", 0)
	if len(b) != 2 || b[0].Seq != 4 || b[1].Seq != 6 {
		t.Fatalf("events of b: %+v", b)
	}
	after, _ := s.ListEvents(ctx, "", 6)
	if len(after) != 1 || after[0].Seq != 7 {
		t.Fatalf("events after 6: %+v", after)
	}
	if n, err := s.LastEventSeq(ctx); err != nil || n != 7 {
		t.Fatalf("last seq %d %v", n, err)
	}

	v := vm("ttl", 1)
	v.Spec.Options.ExpiresAt = t0
	v.Spec.Options.TTLAction = model.TTLStop
	v.Spec.Options.IdleTimeoutSeconds = 600
	if err := s.CreateVM(ctx, v); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "ttl")
	if err != nil || !got.Spec.Options.ExpiresAt.Equal(t0) || got.Spec.Options.TTLAction != model.TTLStop || got.Spec.Options.IdleTimeoutSeconds != 600 {
		t.Fatalf("lifetime options after a round trip: %+v %v", got.Spec.Options, err)
	}
}
