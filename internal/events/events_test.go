package events

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/store"
)

func openLog(t *testing.T, keep int) (*Log, *store.Store) {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "banger.db"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(context.Background(), st, keep, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); st.Close() })
	return l, st
}

func ev(kind engine.EventKind, vm, cause string) engine.Event {
	return engine.Event{Kind: kind, VM: model.VMRecord{ID: "id-" + vm, Name: vm}, Time: time.Now().UTC(), Cause: cause}
}

func kinds(evs []model.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.VMName+":"+e.Kind+":"+e.Cause)
	}
	return out
}

func TestLogKeepsLifecycleInOrder(t *testing.T) {
	l, st := openLog(t, 4)
	ctx := context.Background()
	for _, e := range []engine.Event{
		ev(engine.EventUpdated, "a", ""), // record writes are not events of the log
		ev(engine.EventCreated, "a", ""),
		{Kind: engine.EventStarted, VM: model.VMRecord{ID: "id-a", Name: "a"}, Replay: true},
		ev(engine.EventStarted, "a", ""),
		ev(engine.EventStarted, "b", "restart"),
		ev(engine.EventTTLExpired, "a", "expired"),
		ev(engine.EventDeleted, "a", "ttl expired"),
	} {
		l.Handle(e)
	}
	got, err := l.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a:started:request", "b:started:restart", "a:ttl-expired:expired", "a:deleted:ttl expired"}
	if len(got) != len(want) {
		t.Fatalf("kept %v, want the newest 4 %v", kinds(got), want)
	}
	for i := range want {
		if kinds(got)[i] != want[i] || (i > 0 && got[i].Seq != got[i-1].Seq+1) {
			t.Fatalf("kept %v, want %v in sequence", kinds(got), want)
		}
	}
	if b, _ := l.List(ctx, "b"); len(b) != 1 || b[0].Kind != "started" {
		t.Fatalf("events of b: %v", kinds(b))
	}
	// A new log over the same store numbers on from the last stored event.
	l.Close()
	l2, err := New(ctx, st, 4, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	l2.Handle(ev(engine.EventStopped, "b", ""))
	all, _ := l2.List(ctx, "")
	if last := all[len(all)-1]; last.Kind != "stopped" || last.Seq != got[len(got)-1].Seq+1 {
		t.Fatalf("after a restart: %v (seq %d)", kinds(all), last.Seq)
	}
}

func TestFollowSeesPastThenLive(t *testing.T) {
	l, _ := openLog(t, 0)
	l.Handle(ev(engine.EventCreated, "a", ""))
	l.Handle(ev(engine.EventCreated, "b", ""))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var seen []model.Event
	errc := make(chan error, 1)
	go func() {
		errc <- l.Follow(ctx, "a", func(e model.Event) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, e)
			return nil
		})
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	for deadline := time.Now().Add(5 * time.Second); count() < 1 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	l.Handle(ev(engine.EventStarted, "b", ""))
	l.Handle(ev(engine.EventStarted, "a", ""))
	l.Handle(ev(engine.EventStopped, "a", "idle"))
	for deadline := time.Now().Add(5 * time.Second); count() < 3 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("follow ended with %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := kinds(seen); len(got) != 3 || got[0] != "a:created:request" || got[1] != "a:started:request" || got[2] != "a:stopped:idle" {
		t.Fatalf("follower of a saw %v", got)
	}
}

func TestSlowFollowerIsDropped(t *testing.T) {
	l, _ := openLog(t, 0)
	block := make(chan struct{})
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		first := true
		errc <- l.Follow(context.Background(), "", func(model.Event) error {
			if first {
				first = false
				close(started)
				<-block
			}
			return nil
		})
	}()
	l.Handle(ev(engine.EventCreated, "a", ""))
	<-started
	for range followerBuffer + 10 {
		l.Handle(ev(engine.EventStarted, "a", ""))
	}
	close(block)
	select {
	case err := <-errc:
		if !errors.Is(err, ErrFellBehind) {
			t.Fatalf("slow follower ended with %v, want ErrFellBehind", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("slow follower never ended")
	}
}
