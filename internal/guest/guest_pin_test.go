package guest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPinHostKey(t *testing.T) {
	file := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(file, []byte("[10.0.0.9]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"), 0o600)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPz4ItKw9cW2PZGPvZP2wdBy0lXYFm1LIoQqf+xPbGVZ"
	if err := PinHostKey(file, "172.30.0.7:22", key); err != nil {
		t.Fatal(err)
	}
	pins, err := readPins(file)
	if err != nil || len(pins) != 1 {
		t.Fatalf("pins after PinHostKey: %v, %v; want exactly the new one", pins, err)
	}
	if got := strings.TrimSpace(string(pins[0].Marshal())); got == "" || pins[0].Type() != "ssh-ed25519" {
		t.Fatalf("pinned key type %s", pins[0].Type())
	}
	b, _ := os.ReadFile(file)
	if !strings.Contains(string(b), "172.30.0.7 ") || !strings.Contains(string(b), "IPz4ItKw9cW2PZGPvZP2wdBy0lXYFm1LIoQqf") {
		t.Errorf("pin file %q", b)
	}
	if err := PinHostKey(file, "172.30.0.7:22", "not a key"); err == nil {
		t.Error("PinHostKey accepted garbage")
	}
}
