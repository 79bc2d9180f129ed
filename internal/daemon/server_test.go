package daemon

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestAPIRoundTripAndEnvelope(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	v, err := e.c.Version(ctx)
	if err != nil || v.Version != api.Version || !v.Ready || e.c.DaemonVersion() != api.Version {
		t.Fatalf("version %+v header %q err %v", v, e.c.DaemonVersion(), err)
	}
	created, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: "rt", VCPUs: 3, MemoryMiB: 512})
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.c.GetVM(ctx, "rt")
	if err != nil || got.ID != created.ID || got.Spec.VCPUs != 3 || got.Spec.MemoryMiB != 512 || got.Runtime.DNSName != "rt.banger.internal" {
		t.Fatalf("show: %+v %v", got, err)
	}
	if len(got.Runtime.APISockPath) > 107 || !strings.Contains(got.Runtime.VMDir, got.ID) {
		t.Fatalf("derived paths: %+v", got.Runtime)
	}
	if _, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: "rt"}); !api.IsAlreadyExists(err) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := e.c.GetVM(ctx, "nope"); !api.IsNotFound(err) {
		t.Fatalf("unknown: %v", err)
	}
	for _, req := range []api.CreateVMRequest{{MemoryMiB: -1}, {VCPUs: 999}, {DiskSizeBytes: 5}, {VMM: "xen"}} {
		if _, err := e.c.CreateVM(ctx, req); !api.IsInvalidArgument(err) {
			t.Errorf("%+v: %v", req, err)
		}
	}
	// Unknown JSON fields and oversized bodies are invalid_argument.
	code, out := e.raw("POST", "/v1/vms", strings.NewReader(`{"name":"x","bogus":1}`))
	if code != http.StatusBadRequest || !strings.Contains(out, "invalid_argument") {
		t.Fatalf("unknown field: %d %s", code, out)
	}
	big := bytes.Repeat([]byte(" "), api.MaxBodyBytes+100)
	code, out = e.raw("POST", "/v1/vms", bytes.NewReader(append(big, []byte(`{}`)...)))
	if code != http.StatusBadRequest || !strings.Contains(out, "over") {
		t.Fatalf("oversized body: %d %s", code, out)
	}
	vms, _ := e.c.ListVMs(ctx)
	if len(vms) != 1 {
		t.Fatalf("bad requests created vms: %d", len(vms))
	}
	// Every response carries the version header, errors included.
	if _, err := e.c.ListVMs(ctx); err != nil || e.c.DaemonVersion() != api.Version {
		t.Fatalf("list: %v, header %q", err, e.c.DaemonVersion())
	}
	code, out = e.raw("GET", "/v1/nothing-here", nil)
	if code != http.StatusNotFound || !strings.Contains(out, "not_found") {
		t.Fatalf("unknown route: %d %s", code, out)
	}
}

// Guest addresses and vsock CIDs come from an in-memory book: the lowest free
// ones, freed by delete, and rebuilt from the store after a restart.
func TestAddressAllocation(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	create := func(name string) api.VM {
		t.Helper()
		vm, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		return vm
	}
	for i, n := range []string{"a", "b", "c"} {
		vm := create(n)
		if vm.Runtime.GuestIP != "172.30.0."+strconv.Itoa(i+2) || vm.Runtime.VSockCID != uint32(i+3) {
			t.Fatalf("%s got %s cid %d", n, vm.Runtime.GuestIP, vm.Runtime.VSockCID)
		}
	}
	if err := e.c.DeleteVM(ctx, "b", false); err != nil {
		t.Fatal(err)
	}
	if d := create("d"); d.Runtime.GuestIP != "172.30.0.3" || d.Runtime.VSockCID != 4 {
		t.Fatalf("freed address not reused: %s cid %d", d.Runtime.GuestIP, d.Runtime.VSockCID)
	}
	e.crash()
	e.start()
	if f := create("f"); f.Runtime.GuestIP != "172.30.0.5" || f.Runtime.VSockCID != 6 {
		t.Fatalf("after restart: %s cid %d", f.Runtime.GuestIP, f.Runtime.VSockCID)
	}
}
