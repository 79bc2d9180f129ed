package engine

import (
	"bytes"
	"os"
	"testing"

	"github.com/banger-dev/banger/internal/model"
)

// A clone's host key is kept mode 0600 in its directory, replaced whole by
// a newer one, and forgotten when the guest made its own key.
func TestSaveCloneHostKey(t *testing.T) {
	vm := model.VMRecord{Runtime: model.VMRuntime{VMDir: t.TempDir()}}
	for _, key := range [][]byte{[]byte("first key"), []byte("second")} {
		if err := saveCloneHostKey(vm, key); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(cloneHostKeyPath(vm))
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("kept %q (%v), want %q", got, err, key)
		}
		if st, _ := os.Stat(cloneHostKeyPath(vm)); st.Mode().Perm() != 0o600 {
			t.Errorf("mode %v", st.Mode().Perm())
		}
	}
	if err := saveCloneHostKey(vm, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(cloneHostKeyPath(vm)); !os.IsNotExist(err) {
		t.Errorf("a key the guest made left the host's old one: %v", err)
	}
	if err := saveCloneHostKey(vm, nil); err != nil {
		t.Errorf("forgetting twice: %v", err)
	}
	ents, _ := os.ReadDir(vm.Runtime.VMDir)
	if len(ents) != 0 {
		t.Errorf("left %v in the vm dir", ents)
	}
}
