package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/system"
)

func sampleHandles() model.VMHandles {
	return model.VMHandles{PID: 4242, PIDStart: 987654, TapDevice: "bgr0123456789ab", RootHandles: model.RootHandles{BaseLoop: "/dev/loop3", COWLoop: "/dev/loop4",
		DMName: "banger-0123456789abcdef0123456789abcdef", DMDev: "/dev/mapper/banger-0123456789abcdef0123456789abcdef"}}
}

func TestHandlesFileRoundTrip(t *testing.T) {
	p := filepath.Join(t.TempDir(), "handles.json")
	h := sampleHandles()
	if err := writeHandlesFile(p, h); err != nil {
		t.Fatal(err)
	}
	got, err := readHandlesFile(p)
	if err != nil || got != h {
		t.Fatalf("round trip: got %+v err %v, want %+v", got, err, h)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	// Overwrite leaves no temp files behind.
	h.PID = 1
	if err := writeHandlesFile(p, h); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Fatalf("stray files: %v", ents)
	}
}

func TestHandlesFileMissing(t *testing.T) {
	h, err := readHandlesFile(filepath.Join(t.TempDir(), "nope.json"))
	if err != nil || !h.IsZero() {
		t.Fatalf("missing file: %+v %v", h, err)
	}
}

// Every truncation of a valid file is either rejected as corrupt or, where
// the prefix happens to be valid JSON, never invents handles.
func TestHandlesFileTruncatedAtEveryByte(t *testing.T) {
	full, _ := json.MarshalIndent(sampleHandles(), "", "  ")
	p := filepath.Join(t.TempDir(), "handles.json")
	for n := 0; n < len(full); n++ {
		os.WriteFile(p, full[:n], 0o600)
		h, err := readHandlesFile(p)
		if err == nil {
			t.Fatalf("truncated at %d accepted: %+v", n, h)
		}
		if !errors.Is(err, errCorruptHandles) {
			t.Fatalf("truncated at %d: error %v is not errCorruptHandles", n, err)
		}
		if !h.IsZero() {
			t.Fatalf("truncated at %d returned handles %+v", n, h)
		}
	}
	os.WriteFile(p, []byte("\x00\xff garbage"), 0o600)
	if _, err := readHandlesFile(p); !errors.Is(err, errCorruptHandles) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestHandleCacheConcurrent(t *testing.T) {
	c := newHandleCache()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("vm%d", i)
			for j := range 500 {
				c.set(id, model.VMHandles{PID: j})
				if h, ok := c.get(id); !ok || h.PID != j {
					t.Errorf("%s: got %+v", id, h)
					return
				}
				if j%3 == 0 {
					c.delete(id)
				}
			}
			c.set(id, model.VMHandles{PID: 1})
		}()
	}
	wg.Wait()
	if c.len() != 16 {
		t.Fatalf("cache has %d entries", c.len())
	}
}

type fakeFinder struct {
	p  system.Process
	ok bool
}

func (f fakeFinder) find(model.VMRecord) (system.Process, bool) { return f.p, f.ok }

func TestRediscoverPrefersOS(t *testing.T) {
	vm := model.VMRecord{Runtime: model.VMRuntime{VMDir: t.TempDir()}}
	scratch := sampleHandles()
	writeHandlesFile(handlesPath(vm), scratch)
	h, err := rediscover(vm, fakeFinder{p: system.Process{PID: 777, Start: 555}, ok: true}.find)
	if err != nil {
		t.Fatal(err)
	}
	if h.PID != 777 || h.PIDStart != 555 {
		t.Fatalf("OS not preferred: %+v", h)
	}
	if h.TapDevice != scratch.TapDevice || h.DMName != scratch.DMName || h.COWLoop != scratch.COWLoop {
		t.Fatalf("kernel objects lost: %+v", h)
	}
}

func TestRediscoverDeadProcessKeepsScratch(t *testing.T) {
	vm := model.VMRecord{Runtime: model.VMRuntime{VMDir: t.TempDir()}}
	scratch := sampleHandles()
	writeHandlesFile(handlesPath(vm), scratch)
	h, err := rediscover(vm, fakeFinder{}.find)
	if err != nil {
		t.Fatal(err)
	}
	want := scratch
	want.PID, want.PIDStart = 0, 0
	if h != want {
		t.Fatalf("got %+v want %+v", h, want)
	}
}

func TestRediscoverCorruptScratchStillAsksOS(t *testing.T) {
	vm := model.VMRecord{Runtime: model.VMRuntime{VMDir: t.TempDir()}}
	os.WriteFile(handlesPath(vm), []byte("{\"pid\": 12"), 0o600)
	h, err := rediscover(vm, fakeFinder{p: system.Process{PID: 9, Start: 1}, ok: true}.find)
	if !errors.Is(err, errCorruptHandles) || h.PID != 9 {
		t.Fatalf("got %+v, %v", h, err)
	}
}
