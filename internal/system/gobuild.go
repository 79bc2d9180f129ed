package system

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GoBuild runs "go build -o out pkg" from the module root, so tests can build
// helper binaries (such as the Firecracker double) once per run. It fails
// with ErrNoTool when the go command is not installed.
//
// Test binaries pass the build tag "bangertest", which compiles in the test
// hooks (failpoints, stand-in guests) that production builds do not have.
func GoBuild(ctx context.Context, pkg, out string, tags ...string) error {
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
	args := []string{"-C", root, "build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	if _, err := (ExecRunner{}).Run(ctx, goBin, append(args, pkg)...); err != nil {
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
