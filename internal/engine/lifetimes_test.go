package engine

import (
	"errors"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
)

func TestCheckLifetime(t *testing.T) {
	e := &Engine{maxTTL: 30 * 24 * time.Hour}
	for _, ok := range []Lifetime{
		{}, {TTL: time.Second}, {TTL: 30 * time.Minute, TTLAction: model.TTLStop}, {IdleTimeout: MinIdleTimeout},
		{TTL: 30 * 24 * time.Hour, TTLAction: model.TTLDelete, IdleTimeout: time.Hour},
	} {
		if err := e.checkLifetime(ok); err != nil {
			t.Errorf("checkLifetime(%+v) = %v, want ok", ok, err)
		}
	}
	for _, bad := range []struct {
		l    Lifetime
		want string
	}{
		{Lifetime{TTL: -time.Second}, "positive"},
		{Lifetime{TTL: 31 * 24 * time.Hour}, "beyond max_ttl"},
		{Lifetime{IdleTimeout: 10 * time.Second}, "shorter than a boot"},
		{Lifetime{IdleTimeout: -time.Minute}, "positive"},
		{Lifetime{IdleTimeout: 40 * 24 * time.Hour}, "beyond max_ttl"},
		{Lifetime{TTL: time.Hour, TTLAction: "explode"}, "want delete, stop or suspend"},
		{Lifetime{TTLAction: model.TTLStop}, "needs a ttl"},
	} {
		err := e.checkLifetime(bad.l)
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("checkLifetime(%+v) = %v, want an invalid-argument error saying %q", bad.l, err, bad.want)
		}
	}
	if _, err := MaxTTL(config.Config{MaxTTL: "soon"}); err == nil {
		t.Error("max_ttl soon accepted")
	}
	if d, err := MaxTTL(config.Config{}); err != nil || d != 30*24*time.Hour {
		t.Errorf("default max_ttl %v %v, want 30 days", d, err)
	}
}

// due finds expired TTLs, and idle VMs only when nothing keeps them busy;
// a VM being acted on is not offered twice.
func TestLifetimesDue(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var l lifeIndex
	l.init(t0)
	rec := func(id string, state model.VMState, o model.VMOptions) model.VMRecord {
		return model.VMRecord{ID: id, Name: id, Runtime: model.VMRuntime{State: state}, Spec: model.VMSpec{Options: o}}
	}
	l.note(rec("ttl", model.StateStopped, model.VMOptions{ExpiresAt: t0.Add(time.Minute), TTLAction: model.TTLDelete}), false)
	l.note(rec("idle", model.StateRunning, model.VMOptions{IdleTimeoutSeconds: 60}), false)
	l.note(rec("idle-stopped", model.StateStopped, model.VMOptions{IdleTimeoutSeconds: 60}), false)
	l.note(rec("execing", model.StateRunning, model.VMOptions{IdleTimeoutSeconds: 60}), false)
	l.note(rec("forwarding", model.StateRunning, model.VMOptions{IdleTimeoutSeconds: 60}), false)
	l.note(rec("plain", model.StateRunning, model.VMOptions{}), false)
	l.active["execing"] = 1
	l.busy = func(id string) bool { return id == "forwarding" }

	if exp, idle := l.due(t0.Add(59 * time.Second)); len(exp)+len(idle) != 0 {
		t.Fatalf("before anything is due: expired %v idle %v", exp, idle)
	}
	exp, idle := l.due(t0.Add(61 * time.Second))
	sort.Strings(idle)
	if len(exp) != 1 || exp[0] != "ttl" || len(idle) != 1 || idle[0] != "idle" {
		t.Fatalf("after a minute: expired %v idle %v; want ttl and idle", exp, idle)
	}
	if exp, idle := l.due(t0.Add(62 * time.Second)); len(exp)+len(idle) != 0 {
		t.Fatalf("while being acted on: expired %v idle %v", exp, idle)
	}
	// A failed action is retried after its delay; activity resets idleness.
	l.done("idle", t0.Add(62*time.Second), 10*time.Second)
	l.touch("idle", t0.Add(65*time.Second))
	if _, idle := l.due(t0.Add(80 * time.Second)); len(idle) != 0 {
		t.Fatalf("idle offered again within its retry delay: %v", idle)
	}
	if _, idle := l.due(t0.Add(126 * time.Second)); len(idle) != 1 {
		t.Fatalf("idle not offered a minute after its last activity: %v", idle)
	}
	// Deleted VMs are forgotten.
	l.note(rec("ttl", model.StateStopped, model.VMOptions{}), true)
	l.done("ttl", t0, 0)
	if exp, _ := l.due(t0.Add(time.Hour)); len(exp) != 0 {
		t.Fatalf("a deleted vm expired: %v", exp)
	}
}
