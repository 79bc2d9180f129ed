package engine

import (
	"testing"
	"time"
)

func TestStepTimesRendersPlanOrder(t *testing.T) {
	r := &run{took: []stepTime{
		{"dirs", 1234 * time.Microsecond},
		{"confine", 20 * time.Millisecond},
		{"vmm", 1500 * time.Millisecond},
	}}
	if got, want := r.stepTimes(), "dirs=1.2ms confine=20ms vmm=1.5s"; got != want {
		t.Fatalf("stepTimes() = %q, want %q", got, want)
	}
	if got := (&run{}).stepTimes(); got != "" {
		t.Fatalf("no steps: %q, want empty", got)
	}
}
