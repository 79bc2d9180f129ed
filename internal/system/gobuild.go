package system

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// GoBuild runs "go build -o out pkg" from the module root, so tests can build
// helper binaries (such as the Firecracker double) once per run. It fails
// with ErrNoTool when the go command is not installed.
func GoBuild(ctx context.Context, pkg, out string) error {
	goBin, err := LookPath("go")
	if err != nil {
		return &CommandError{Argv: []string{"go", "build"}, ExitCode: -1, Err: err, Kind: ErrNoTool}
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	// Run from the module root: ExecRunner has no working directory, so go's
	// -C flag selects it.
	if _, err := (ExecRunner{}).Run(ctx, goBin, "-C", root, "build", "-o", out, pkg); err != nil {
		return fmt.Errorf("go build %s: %w", pkg, err)
	}
	return nil
}

// moduleRoot walks up from the working directory to the directory holding go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("module root: no go.mod above the working directory")
		}
		dir = parent
	}
}
