package main

import (
	"strings"
	"testing"
	"time"
)

func TestLogDurations(t *testing.T) {
	log := `time=2026-12-06T07:00:00.000Z level=INFO msg="vm started" vm=cb-0 vmm=qemu pid=10 confined=true took=300ms steps="dirs=1ms confine=20ms vmm=100ms"
time=2026-12-06T07:00:01.000Z level=INFO msg="vm started" vm=ub-0 vmm=qemu pid=11 confined=false took=200ms steps="dirs=1ms confine=0s vmm=90ms"
time=2026-12-06T07:00:02.000Z level=INFO msg="vm started" vm=cb-1 vmm=qemu pid=12 confined=true took=500ms steps="dirs=3ms confine=40ms vmm=120ms"
time=2026-12-06T07:00:03.000Z level=INFO msg="vm started" vm=cb-2 vmm=qemu pid=13 confined=true took=1.1s steps="dirs=2ms confine=30ms vmm=110ms"
time=2026-12-06T07:00:04.000Z level=INFO msg="guest ssh connected" vm=cb-2 waited=4.5s
`
	got, n, err := logDurations(strings.NewReader(log), "vm started", "cb-")
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("n = %d, want 3 (only cb- lines with the message)", n)
	}
	want := map[string]time.Duration{"took": 500 * time.Millisecond, "step:dirs": 2 * time.Millisecond, "step:confine": 30 * time.Millisecond, "step:vmm": 110 * time.Millisecond}
	if len(got.keys) != len(want) {
		t.Fatalf("keys %v, want %d keys", got.keys, len(want))
	}
	for k, w := range want {
		if m := summarise(got.m[k]).median; m != w {
			t.Errorf("median %s = %s, want %s", k, m, w)
		}
	}
	if got.keys[0] != "took" || got.keys[1] != "step:dirs" {
		t.Errorf("key order %v: want the log's order", got.keys)
	}
}

func TestSplitLogfmtQuoted(t *testing.T) {
	kv := logfmt(`msg="a \"b\" c" vm=x steps="k=1ms"`)
	if kv["msg"] != `a "b" c` || kv["vm"] != "x" || kv["steps"] != "k=1ms" {
		t.Fatalf("got %q", kv)
	}
}
