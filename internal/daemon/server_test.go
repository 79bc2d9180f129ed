package daemon

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"

	"banger/internal/api"
)

func TestAPIRoundTripAndEnvelope(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := context.Background()
	v, err := e.c.Version(ctx)
	if err != nil || v.Version != api.Version || !v.Ready || e.c.DaemonVersion != api.Version {
		t.Fatalf("version %+v header %q err %v", v, e.c.DaemonVersion, err)
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
	err = e.c.Do(ctx, "POST", "/v1/vms", strings.NewReader(`{"name":"x","bogus":1}`), nil)
	if !api.IsInvalidArgument(err) {
		t.Fatalf("unknown field: %v", err)
	}
	big := bytes.Repeat([]byte(" "), api.MaxBodyBytes+100)
	err = e.c.Do(ctx, "POST", "/v1/vms", bytes.NewReader(append(big, []byte(`{}`)...)), nil)
	if !api.IsInvalidArgument(err) || !strings.Contains(err.Error(), "over") {
		t.Fatalf("oversized body: %v", err)
	}
	vms, _ := e.c.ListVMs(ctx)
	if len(vms) != 1 {
		t.Fatalf("bad requests created vms: %d", len(vms))
	}
	// Every response carries the version header, errors included.
	resp, err := e.c.Stream(ctx, "GET", "/v1/vms", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Close()
	err = e.c.Do(ctx, "GET", "/v1/nothing-here", nil, nil)
	if !api.IsNotFound(err) || e.c.DaemonVersion != api.Version {
		t.Fatalf("unknown route: %v, header %q", err, e.c.DaemonVersion)
	}
	_ = http.StatusOK
}
