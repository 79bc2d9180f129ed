package engine

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/model"
)

// FuzzReadHandlesFile: whatever bytes a crash, a full disk or a tamperer
// leaves in handles.json, reading it never panics; it either parses (and
// then writes back to the same handles) or is reported corrupt with zero
// handles, never half-read ones.
func FuzzReadHandlesFile(f *testing.F) {
	for _, seed := range []string{
		`{"pid":42,"pid_start":7,"tap_device":"bgr0123456789ab","base_loop":"/dev/loop0","cow_loop":"/dev/loop1","dm_name":"banger-x","dm_dev":"/dev/mapper/banger-x"}`,
		`{}`, ``, `null`, `{"pid":`, `{"pid":-1}`, `[]`, `{"tap_device":"../../etc"}`, "\x00\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "handles.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := readHandlesFile(p)
		if err != nil {
			if !errors.Is(err, errCorruptHandles) {
				t.Fatalf("error %v is not errCorruptHandles", err)
			}
			if !h.IsZero() {
				t.Fatalf("corrupt file gave handles %+v", h)
			}
			return
		}
		if err := writeHandlesFile(p, h); err != nil {
			t.Fatal(err)
		}
		again, err := readHandlesFile(p)
		if err != nil || again != h {
			t.Fatalf("round trip: %+v -> %+v (%v)", h, again, err)
		}
		var m model.VMHandles
		b, _ := json.Marshal(h)
		if json.Unmarshal(b, &m) != nil || m != h {
			t.Fatalf("handles do not survive their own encoding: %+v", h)
		}
	})
}
