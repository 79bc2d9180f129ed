package cli

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestConcurrentCreates runs many CLIs at once against one daemon: every
// create succeeds with its own generated name, guest address and vsock CID.
func TestConcurrentCreates(t *testing.T) {
	h := newCLIHarness(t)
	h.mustBanger("daemon", "start")
	const n = 24
	var wg sync.WaitGroup
	names := make([]string, n)
	errs := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, out, errOut := h.banger("vm", "create", "--memory", "128")
			if code != 0 {
				errs[i] = errOut
			}
			names[i] = strings.TrimSpace(out)
		}()
	}
	wg.Wait()
	for i, e := range errs {
		if e != "" {
			t.Errorf("create %d failed: %s", i, e)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vms, err := h.client().ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != n {
		t.Fatalf("%d VMs listed after %d creates", len(vms), n)
	}
	seenName, seenIP, seenCID := map[string]bool{}, map[string]bool{}, map[uint32]bool{}
	for _, vm := range vms {
		r := vm.Runtime
		if seenName[vm.Name] || seenIP[r.GuestIP] || seenCID[r.VSockCID] {
			t.Errorf("vm %s shares its name, address %s or CID %d with another", vm.Name, r.GuestIP, r.VSockCID)
		}
		seenName[vm.Name], seenIP[r.GuestIP], seenCID[r.VSockCID] = true, true, true
	}
	for _, name := range names {
		if !seenName[name] {
			t.Errorf("create printed %q, which is not listed", name)
		}
	}
	h.mustBanger(append([]string{"vm", "delete"}, names...)...)
	if out := h.mustBanger("vm", "list", "-q"); out != "" {
		t.Errorf("vm list -q after deletes = %q", out)
	}
	h.mustBanger("daemon", "stop")
}
