package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

// TestUntilVMMExits: waiting for a guest's SSH ends when its VMM process
// exits, and says so; with no recorded process the context is unchanged.
func TestUntilVMMExits(t *testing.T) {
	p, err := system.StartDetached(system.DetachedSpec{Argv: []string{"sleep", "60"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill(5 * time.Second)
	d := &Engine{handles: newHandleCache()}
	vm := model.VMRecord{ID: "0123456789abcdef0123456789abcdef", Name: "w"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	if wctx, exited := d.untilVMMExits(ctx, vm); wctx != ctx || exited() {
		t.Fatal("with no handles: want the caller's context and no exit")
	}
	d.handles.set(vm.ID, model.VMHandles{PID: p.PID, PIDStart: p.Start})
	wctx, exited := d.untilVMMExits(ctx, vm)
	select {
	case <-wctx.Done():
		t.Fatalf("cancelled while the process lives: %v", wctx.Err())
	case <-time.After(600 * time.Millisecond): // a few watch ticks
	}
	if exited() {
		t.Fatal("exited reported while the process lives")
	}
	if err := p.Kill(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("context not cancelled after the process exited")
	}
	if !exited() {
		t.Error("exited() false after the process exited")
	}
	if ctx.Err() != nil {
		t.Error("the caller's context was cancelled")
	}
}

// TestConsoleTailKeepsPanicLine: the tail of a panicked guest's console
// starts with the panic message, which its stack dump pushed out.
func TestConsoleTailKeepsPanicLine(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	for i := range 40 {
		lines = append(lines, fmt.Sprintf("line %d", i))
	}
	lines[10] = "[    2.8] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"
	path := filepath.Join(dir, "console.log")
	os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	got := consoleTail(path)
	want := "\nlast console output (" + path + "):\n  " + lines[10] + "\n  ...\n  " + strings.Join(lines[25:], "\n  ")
	if got != want {
		t.Errorf("consoleTail:\n got %q\nwant %q", got, want)
	}
	os.WriteFile(path, []byte("a\nb\n"), 0o644)
	if got := consoleTail(path); got != "\nlast console output ("+path+"):\n  a\n  b" {
		t.Errorf("short log: %q", got)
	}
	if got := consoleTail(filepath.Join(dir, "missing")); got != "" {
		t.Errorf("missing log: %q", got)
	}
}
