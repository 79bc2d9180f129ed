package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

func open(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "banger.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func vm(name string, n int) model.VMRecord {
	now := time.Now().UTC()
	return model.VMRecord{
		ID: fmt.Sprintf("%032x", n), Name: name, Spec: model.VMSpec{VCPUs: 2, MemoryMiB: 1024, DiskSizeBytes: 8 << 30, WorkDiskBytes: 4 << 30},
		Runtime:   model.VMRuntime{State: model.StateCreated, GuestIP: fmt.Sprintf("172.30.0.%d", n+2), VSockCID: uint32(n + 3), VMDir: "/x/" + name, DNSName: name + ".banger.internal"},
		CreatedAt: now, UpdatedAt: now,
	}
}

func TestMigrationsIdempotent(t *testing.T) {
	s, path := open(t)
	v, err := s.SchemaVersion(context.Background())
	if err != nil || v != len(migrations) {
		t.Fatalf("version %d err %v", v, err)
	}
	if err := s.CreateVM(context.Background(), vm("a", 1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	v2, _ := s2.SchemaVersion(context.Background())
	got, err := s2.GetVM(context.Background(), "a")
	if v2 != v || err != nil || got.Name != "a" {
		t.Fatalf("reopen: version %d vm %+v err %v", v2, got, err)
	}
}

func TestVMCRUD(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	a := vm("alpha", 1)
	if err := s.CreateVM(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != a.ID || !reflect.DeepEqual(got.Spec, a.Spec) || got.Runtime != a.Runtime || !got.CreatedAt.Equal(a.CreatedAt) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, a)
	}
	got.Runtime.State = model.StateRunning
	got.Runtime.LastError = "boom"
	if err := s.UpdateVM(ctx, &got); err != nil {
		t.Fatal(err)
	}
	again, _ := s.GetVMByID(ctx, a.ID)
	if again.Runtime.State != model.StateRunning || again.Runtime.LastError != "boom" {
		t.Fatalf("update lost: %+v", again.Runtime)
	}
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetVM(ctx, "alpha"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteVM(ctx, a.ID); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	missing := vm("ghost", 9)
	if err := s.UpdateVM(ctx, &missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of missing: %v", err)
	}
}

func TestUniqueNamesAndAddresses(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateVM(ctx, vm("dup", 1)); err != nil {
		t.Fatal(err)
	}
	other := vm("dup", 2)
	if err := s.CreateVM(ctx, other); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	sameIP := vm("other", 1)
	sameIP.ID = fmt.Sprintf("%032x", 77)
	if err := s.CreateVM(ctx, sameIP); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate ip: %v", err)
	}
	vms, _ := s.ListVMs(ctx)
	if len(vms) != 1 {
		t.Fatalf("rejected rows were stored: %d", len(vms))
	}
}

func TestConcurrentWriters(t *testing.T) {
	s, path := open(t)
	ctx := context.Background()
	// A second handle on the same file, as a second process would have.
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := s
			if i%2 == 1 {
				st = s2
			}
			if err := st.CreateVM(ctx, vm(fmt.Sprintf("vm%d", i), i)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	vms, err := s.ListVMs(ctx)
	if err != nil || len(vms) != 200 {
		t.Fatalf("got %d vms, err %v", len(vms), err)
	}
}

func TestImagesDefaultAndInUse(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	for i, n := range []string{"one", "two"} {
		if err := s.CreateImage(ctx, model.Image{Name: n, KernelPath: "/k", RootfsPath: "/r", CreatedAt: time.Unix(int64(i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateImage(ctx, model.Image{Name: "one", KernelPath: "/k", RootfsPath: "/r"}); !errors.Is(err, ErrExists) {
		t.Fatalf("dup image: %v", err)
	}
	def, err := s.GetImage(ctx, "")
	if err != nil || def.Name != "one" {
		t.Fatalf("default %q %v", def.Name, err)
	}
	v := vm("user", 1)
	v.Image = "one"
	s.CreateVM(ctx, v)
	if err := s.DeleteImage(ctx, "one"); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete in use: %v", err)
	}
	s.DeleteVM(ctx, v.ID)
	if err := s.DeleteImage(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	def, err = s.GetImage(ctx, "")
	if err != nil || def.Name != "two" {
		t.Fatalf("default after delete %q %v", def.Name, err)
	}
	if err := s.DeleteImage(ctx, "one"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete missing: %v", err)
	}
}

func TestSessionsAndPorts(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	v := vm("host", 1)
	s.CreateVM(ctx, v)
	gs := model.GuestSession{ID: "s1", VMID: v.ID, Name: "web", Command: []string{"sh", "-c", "echo 'hi'"}, Stdin: true,
		Status: model.SessionRunning, StartedAt: time.Now().UTC(), StdoutPath: "/o", StderrPath: "/e"}
	if err := s.CreateSession(ctx, gs); err != nil {
		t.Fatal(err)
	}
	gs2 := gs
	gs2.ID = "s2"
	if err := s.CreateSession(ctx, gs2); !errors.Is(err, ErrExists) {
		t.Fatalf("dup session name: %v", err)
	}
	code := 3
	now := time.Now().UTC()
	gs.Status, gs.ExitCode, gs.EndedAt = model.SessionExited, &code, &now
	if err := s.UpdateSession(ctx, gs); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSession(ctx, v.ID, "web")
	if err != nil || got.Status != model.SessionExited || *got.ExitCode != 3 || got.EndedAt == nil || len(got.Command) != 3 || !got.Stdin {
		t.Fatalf("session %+v %v", got, err)
	}
	if err := s.AddPort(ctx, Port{VMID: v.ID, Spec: "8080:80", HostKey: "127.0.0.1:8080/tcp"}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddPort(ctx, Port{VMID: v.ID, Spec: "127.0.0.1:8080:81", HostKey: "127.0.0.1:8080/tcp"}); !errors.Is(err, ErrExists) {
		t.Fatalf("dup host port: %v", err)
	}
	s.DeleteVM(ctx, v.ID)
	if ss, _ := s.ListSessions(ctx, v.ID); len(ss) != 0 {
		t.Fatal("sessions not cascaded")
	}
	if ps, _ := s.ListPorts(ctx, ""); len(ps) != 0 {
		t.Fatal("ports not cascaded")
	}
}

func TestPools(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	p := model.Pool{Name: "warm", Snapshot: "base", Size: 3, CreatedAt: time.Unix(100, 5).UTC()}
	if err := s.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := s.CreatePool(ctx, p); !errors.Is(err, ErrExists) {
		t.Fatalf("second CreatePool = %v, want ErrExists", err)
	}
	if err := s.CreatePool(ctx, model.Pool{Name: "cold", Snapshot: "b2", Size: 1, CreatedAt: time.Unix(200, 0).UTC()}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetPool(ctx, "warm")
	if err != nil || !reflect.DeepEqual(got, p) {
		t.Fatalf("GetPool = %+v, %v; want %+v", got, err, p)
	}
	if _, err := s.GetPool(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPool nosuch = %v, want ErrNotFound", err)
	}
	all, err := s.ListPools(ctx)
	if err != nil || len(all) != 2 || all[0].Name != "warm" || all[1].Name != "cold" {
		t.Fatalf("ListPools = %+v, %v; want warm then cold", all, err)
	}
	if err := s.DeletePool(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePool(ctx, "warm"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeletePool = %v, want ErrNotFound", err)
	}
}
