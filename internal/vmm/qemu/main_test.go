package qemu

import (
	"os"
	"testing"

	"banger/internal/system"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeQEMUEnv); mode != "" {
		os.Exit(fakeQEMUMain(mode))
	}
	os.Exit(system.ReexecInNewNetNS(m))
}
