package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/network"
	"github.com/banger-dev/banger/internal/system"
)

// Regression tests for the safety issue: each was a way banger destroyed
// what it could not prove was its own, or left a VM's VMM running.

// Symptom 1: gc run while other VMs start killed VMMs that were starting.
func TestGCWhileVMsStartKillsNothing(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	const n = 8
	for i := range n {
		if _, err := e.c.CreateVM(ctx, api.CreateVMRequest{Name: fmt.Sprintf("s%d", i), DiskSizeBytes: 64 << 20, WorkDiskBytes: 32 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var gcs sync.WaitGroup
	var removed []api.HostObject
	var mu sync.Mutex
	gcs.Add(1)
	go func() {
		defer gcs.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			res, err := e.c.GC(ctx, false)
			if err != nil {
				t.Errorf("gc: %v", err)
				return
			}
			mu.Lock()
			removed = append(removed, res.Removed...)
			mu.Unlock()
		}
	}()
	var starts sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		starts.Add(1)
		go func() {
			defer starts.Done()
			if _, err := e.c.StartVM(ctx, fmt.Sprintf("s%d", i)); err != nil {
				errs <- err
			}
		}()
	}
	starts.Wait()
	close(stop)
	gcs.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("start failed while gc ran: %v", err)
	}
	for _, o := range removed {
		t.Errorf("gc removed %+v while vms started", o)
	}
	for i := range n {
		vm, err := e.c.GetVM(ctx, fmt.Sprintf("s%d", i))
		if err != nil || vm.Live == nil || !vm.Live.Alive {
			t.Errorf("s%d not alive after the race: %+v %v", i, vm.Live, err)
		}
	}
}

// Symptom 2: gc SIGKILLed processes that were not VMMs: one with a stopped
// VM's API socket path in its argv, one on a dead VMM's PID with its argv.
func TestGCNeverSignalsDecoys(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	vm := e.createStarted("gone")
	p, ok := e.vmmProcess(vm)
	if !ok {
		t.Fatal("no vmm")
	}
	argv, err := system.ProcCmdline(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteVM(ctx, "gone", false); err != nil {
		t.Fatal(err)
	}
	// A debugging client naming the dead VM's socket.
	curl, err := system.StartDecoy([]string{"curl", "--unix-socket", vm.Runtime.APISockPath, "http://localhost/"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { curl.Kill(time.Second) })
	// A process with the dead VMM's exact argv, on its PID when the kernel
	// lets us have it.
	impostor, err := system.StartDecoyAtHostPID(p.PID, argv)
	if err != nil {
		t.Logf("pid %d not available (%v): the impostor takes another pid", p.PID, err)
		if impostor, err = system.StartDecoy(argv); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { impostor.Kill(time.Second) })
	// Its run dir, as a dead VMM would leave it, so gc has something to find.
	os.MkdirAll(filepath.Dir(vm.Runtime.APISockPath), 0o750)

	res, err := e.c.GC(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if !curl.Alive() || !impostor.Alive() {
		t.Fatalf("gc signalled a decoy (curl alive %v, impostor alive %v): %+v", curl.Alive(), impostor.Alive(), res)
	}
	kept := map[string]string{}
	for _, o := range res.Kept {
		kept[o.Kind+":"+o.Name] = o.Detail
	}
	for _, pr := range []system.Process{curl, impostor} {
		why, ok := kept[fmt.Sprintf("process:%d", pr.PID)]
		if !ok || !strings.Contains(why, "not proven") {
			t.Errorf("decoy %d not reported as kept and unproven: %q (kept %v)", pr.PID, why, kept)
		}
	}
	for _, o := range res.Removed {
		if o.Kind == "process" {
			t.Errorf("gc removed process %s", o.Name)
		}
	}
}

// Symptom 3: handles.json was trusted: a tap it named was deleted though
// banger did not make it; an unreadable one made banger forget the VM's
// own tap; a directory at its path made stop fail.
func TestHandlesFileIsOnlyAHint(t *testing.T) {
	ctx := context.Background()
	t.Run("foreign tap", func(t *testing.T) {
		e := newEnv(t, envOpts{dm: true, network: true})
		e.importImage()
		vm := e.createStarted("hint")
		own := network.TapName(vm.ID)
		e.net.CreateTap(ctx, "bgrforeign0000")
		e.crash()
		h, err := readHandlesFile(handlesPath(vm))
		if err != nil {
			t.Fatal(err)
		}
		h.TapDevice = "bgrforeign0000"
		writeHandlesFile(handlesPath(vm), h)
		e.start()
		if _, err := e.c.StopVM(ctx, "hint", api.StopRequest{}); err != nil {
			t.Fatal(err)
		}
		if !e.net.taps["bgrforeign0000"] {
			t.Error("a tap named only by handles.json was deleted")
		}
		if e.net.taps[own] {
			t.Errorf("the vm's own tap %s survived stop", own)
		}
	})
	t.Run("corrupt file", func(t *testing.T) {
		e := newEnv(t, envOpts{dm: true, network: true})
		e.importImage()
		vm := e.createStarted("garbled")
		own := network.TapName(vm.ID)
		e.crash()
		os.WriteFile(handlesPath(vm), []byte("{\"pid\": 1"), 0o600)
		e.start()
		if err := e.c.DeleteVM(ctx, "garbled", false); err != nil {
			t.Fatal(err)
		}
		if e.net.taps[own] {
			t.Errorf("own tap %s survived delete with a corrupt handles.json", own)
		}
		e.assertNothingLeft(vm)
	})
	t.Run("directory at its path", func(t *testing.T) {
		e := newEnv(t, envOpts{dm: true, network: true})
		e.importImage()
		vm := e.createStarted("dirred")
		e.crash()
		os.Remove(handlesPath(vm))
		if err := os.Mkdir(handlesPath(vm), 0o700); err != nil {
			t.Fatal(err)
		}
		e.start()
		if _, err := e.c.StopVM(ctx, "dirred", api.StopRequest{}); err != nil {
			t.Fatalf("stop with a directory at handles.json: %v", err)
		}
		got, _ := e.c.GetVM(ctx, "dirred")
		if got.Runtime.State != model.StateStopped {
			t.Fatalf("state %s", got.Runtime.State)
		}
		if p, ok := e.vmmProcess(vm); ok {
			t.Fatalf("vmm %d still runs", p.PID)
		}
	})
}

// Symptom 4: a VMM that does not answer its API (SIGSTOPped, or its socket
// removed) was never killed; stop and delete returned 0 and left it.
func TestUnresponsiveVMMIsKilled(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	freeze := func(vm model.VMRecord) system.Process {
		t.Helper()
		p, ok := e.vmmProcess(vm)
		if !ok {
			t.Fatal("no vmm")
		}
		if err := p.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a := e.createStarted("frozen-stop")
	pa := freeze(a)
	_, err := e.c.StopVM(ctx, "frozen-stop", api.StopRequest{TimeoutSeconds: 1})
	if err == nil || !strings.Contains(err.Error(), "did not shut down") {
		t.Errorf("stop of a frozen vmm: %v, want a timeout error", err)
	}
	if pa.Alive() {
		t.Error("frozen vmm survived stop")
	}
	if got, _ := e.c.GetVM(ctx, "frozen-stop"); got.Runtime.State != model.StateStopped {
		t.Errorf("state after stop %s", got.Runtime.State)
	}

	b := e.createStarted("frozen-force")
	pb := freeze(b)
	if _, err := e.c.StopVM(ctx, "frozen-force", api.StopRequest{Force: true}); err != nil {
		t.Errorf("stop --force: %v", err)
	}
	if pb.Alive() {
		t.Error("frozen vmm survived stop --force")
	}

	c := e.createStarted("frozen-del")
	pc := freeze(c)
	if err := e.c.DeleteVM(ctx, "frozen-del", false); err != nil {
		t.Errorf("delete: %v", err)
	}
	if pc.Alive() {
		t.Error("frozen vmm survived delete")
	}
	e.assertNothingLeft(c)

	d := e.createStarted("nosock")
	pd, _ := e.vmmProcess(d)
	os.Remove(d.Runtime.APISockPath)
	if err := e.c.DeleteVM(ctx, "nosock", false); err != nil {
		t.Errorf("delete without a socket: %v", err)
	}
	if pd.Alive() {
		t.Error("vmm whose socket was removed survived delete")
	}
}

// Symptom 5: a missing or emptied banger.db was accepted while VMs ran;
// gc then offered to remove a running VM's process and disks.
func TestEmptyStoreRefusedThenRecovered(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	vm := e.createStarted("precious")
	p, _ := e.vmmProcess(vm)
	e.crash()
	db := filepath.Join(e.cfg.StateDir, "banger.db")
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		os.Remove(f)
	}
	_, err := New(ctx, e.cfg, e.deps, nil)
	if err == nil || !strings.Contains(err.Error(), "--recover") || !strings.Contains(err.Error(), "1 VM directories") {
		t.Fatalf("start over an empty store: %v, want a refusal naming --recover and the VM directory", err)
	}
	if !p.Alive() {
		t.Fatal("the refusal killed the vm")
	}
	if _, err := os.Stat(vm.Runtime.WorkDiskPath); err != nil {
		t.Fatalf("the refusal touched the vm's disks: %v", err)
	}
	if _, err := os.Stat(db); !os.IsNotExist(err) {
		t.Fatal("the refusal left an empty store behind")
	}
	// bangerd --recover rebuilds the record; reconcile keeps the live VM.
	e.deps.Recover = true
	e.start()
	e.deps.Recover = false
	got, err := e.c.GetVM(ctx, "precious")
	if err != nil || got.Live == nil || !got.Live.Alive || got.ID != vm.ID {
		t.Fatalf("recovered vm: %+v %v", got, err)
	}
	if err := e.c.DeleteVM(ctx, "precious", false); err != nil {
		t.Fatal(err)
	}
	e.assertNothingLeft(vm)
}

// Symptom 6: the API accepted trailing data, a null body, and read an
// unparsable boolean as false (so dry_run=yes ran a real gc); requests had
// no header timeout.
func TestAPIStrictness(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true})
	e.importImage()
	ctx := context.Background()
	post := func(path, body string) (int, string) {
		t.Helper()
		c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", e.cfg.Socket)
		}}}
		resp, err := c.Post("http://banger"+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, body := range []string{`{"name":"a"}{"name":"b"}`, `null`, `{"name":"a"} x`, `[]`, `{"nmae":"a"}`} {
		if code, out := post("/v1/vms", body); code != http.StatusBadRequest {
			t.Errorf("create with %q: %d %s, want 400", body, code, out)
		}
	}
	if vms, _ := e.c.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("bad bodies created %d vms", len(vms))
	}
	orphan := filepath.Join(e.cfg.StateDir, "vms", strings.Repeat("ab", 16))
	os.MkdirAll(orphan, 0o750)
	for _, q := range []string{"yes", "no", "TRUE1", "2"} {
		if code, out := post("/v1/gc?dry_run="+q, ""); code != http.StatusBadRequest || !strings.Contains(out, "dry_run") {
			t.Errorf("gc dry_run=%s: %d %s, want 400 naming dry_run", q, code, out)
		}
	}
	if _, err := os.Stat(orphan); err != nil {
		t.Fatal("a refused gc removed something")
	}
	// A connection that never finishes its headers is closed.
	conn, err := net.Dial("unix", e.cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /v1/version HTTP/1.1\r\nHost: x\r\n"))
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	b, _ := io.ReadAll(conn)
	if time.Since(start) > 5*time.Second {
		t.Fatalf("half-open connection held %s", time.Since(start))
	}
	if bytes.Contains(b, []byte("200 OK")) {
		t.Fatalf("incomplete request answered: %q", b)
	}
}

// Symptom 7: bangerd.lock and bangerd.log were opened through symlinks.
func TestStateFilesNotFollowedThroughSymlinks(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(target, []byte("keep"), 0o644)
	os.Symlink(target, filepath.Join(dir, "bangerd.lock"))
	if _, err := lockStateDir(dir); err == nil {
		t.Fatal("lock opened through a symlink")
	}
	state := t.TempDir()
	os.Symlink(target, filepath.Join(state, "bangerd.log"))
	var stderr bytes.Buffer
	t.Setenv("BANGER_CONFIG", filepath.Join(state, "none.toml"))
	code := Main(context.Background(), []string{"--state-dir", state, "--run-dir", filepath.Join(t.TempDir(), "r")}, &stderr)
	if code == 0 {
		t.Fatal("bangerd started with a symlinked log")
	}
	if b, _ := os.ReadFile(target); string(b) != "keep" {
		t.Fatalf("the symlink's target was written: %q", b)
	}
	// A state dir others may write to is refused.
	open := t.TempDir()
	os.Chmod(open, 0o777)
	if err := checkOwnedDirs(open); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Fatalf("world-writable state dir: %v", err)
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(t.TempDir(), link)
	if err := checkOwnedDirs(link); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlinked state dir: %v", err)
	}
}

// Symptom 7b: a vm stop while the state disk was full killed the VMM but
// left the VM stopping and answered 500. Now: the VMM is gone, the answer
// is no_space (507) naming the cause, and the state settles once space is
// back (here at the next daemon start).
func TestStopWithFullStateDisk(t *testing.T) {
	e := newEnv(t, envOpts{dm: true, network: true, stateTmpfs: 24 << 20})
	e.importImage()
	ctx := context.Background()
	vm := e.createStarted("full")
	p, _ := e.vmmProcess(vm)
	// Fill the state disk.
	filler := filepath.Join(e.cfg.StateDir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	_, err = e.c.StopVM(ctx, "full", client.StopRequest{Force: true})
	if err == nil || client.CodeOf(err) != client.CodeNoSpace {
		t.Fatalf("stop on a full disk: %v (code %s), want no_space", err, client.CodeOf(err))
	}
	if p.Alive() {
		t.Error("the vmm survived the stop")
	}
	os.Remove(filler)
	e.crash()
	e.start()
	got, err := e.c.GetVM(ctx, "full")
	if err != nil || got.Runtime.State != client.StateStopped {
		t.Fatalf("after space came back: %+v %v", got.Runtime.State, err)
	}
	e.assertNothingLeft(vm)
}
