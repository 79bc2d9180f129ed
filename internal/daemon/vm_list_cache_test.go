package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// The cached list is byte for byte what encoding the store's rows gives,
// after creates (out of name order), starts, stops and deletes.
func TestListCacheMatchesStore(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	list := func() []byte {
		body, err := e.c.ListVMsJSON(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer body.Close()
		b, _ := io.ReadAll(body)
		return b
	}
	fresh := func() []byte {
		vms, err := e.d.Store.ListVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]api.VM, 0, len(vms))
		for _, vm := range vms {
			v := api.VM{VMRecord: vm}
			if l := e.d.Engine.Live(ctx, vm, false); l != nil {
				v.Live = &api.LiveFacts{Alive: l.Alive, Handles: l.Handles, Reason: l.Reason}
			}
			out = append(out, v)
		}
		b, _ := json.Marshal(out)
		return append(b, '\n')
	}
	if got := list(); !bytes.Equal(got, []byte("[]\n")) {
		t.Fatalf("empty list: %q", got)
	}
	for _, n := range []string{"zeta", "alpha", "mid"} {
		if _, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: n, DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	check := func(step string) {
		t.Helper()
		if got, want := list(), fresh(); !bytes.Equal(got, want) {
			t.Fatalf("%s: cached list differs\n got %s\nwant %s", step, got, want)
		}
	}
	check("after creates")
	if _, err := e.c.StartVM(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	check("after start")
	var vms []api.VM
	json.Unmarshal(list(), &vms)
	if len(vms) != 3 || vms[0].Name != "zeta" || vms[1].Live == nil || !vms[1].Live.Alive {
		t.Fatalf("order or live facts wrong: %+v", vms)
	}
	e.c.StopVM(ctx, "alpha", api.StopRequest{})
	check("after stop")
	e.c.DeleteVM(ctx, "mid", false)
	check("after delete")
	for i := range 20 {
		e.c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("n%d", i)})
	}
	e.c.DeleteVM(ctx, "n7", false)
	check("after many")
	// A restarted daemon loads the same list from the store.
	before := list()
	e.crash()
	e.start()
	if got := list(); !bytes.Equal(got, before) {
		t.Fatalf("list after restart differs")
	}
}
