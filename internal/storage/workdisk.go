package storage

import (
	"context"
	"fmt"
	"os"
)

// DefaultWorkDiskSize is the work disk size used when none is given: 4 GiB,
// sparse, so it costs only what the guest writes.
const DefaultWorkDiskSize int64 = 4 << 30

// CreateWorkDisk makes a sparse ext4 image of sizeBytes (0 means
// DefaultWorkDiskSize) at path without mounting anything, labelled "work"
// with a root-owned top directory. A non-empty seedDir is copied in (mkfs
// -d). It refuses to replace an existing file (fs.ErrExist): a work disk
// holds the user's data. On failure it removes the file.
func (m *Manager) CreateWorkDisk(ctx context.Context, path string, sizeBytes int64, seedDir string) error {
	if sizeBytes < 0 {
		return fmt.Errorf("creating work disk %s: negative size %d", path, sizeBytes)
	}
	if sizeBytes == 0 {
		sizeBytes = DefaultWorkDiskSize
	}
	if seedDir != "" {
		if st, err := os.Stat(seedDir); err != nil {
			return fmt.Errorf("creating work disk %s: seed: %w", path, err)
		} else if !st.IsDir() {
			return fmt.Errorf("creating work disk %s: seed %s is not a directory", path, seedDir)
		}
	}
	// Make a partial file ourselves (O_EXCL) rather than let mkfs create it
	// (mkfs -F would happily overwrite a disk that is already there), and
	// rename it into place only once mkfs succeeded: a crash mid-format
	// leaves a .partial to redo, never a work.ext4 of zeros that a later
	// start would take as made.
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("creating work disk %s: %w", path, os.ErrExist)
	}
	partial := path + ".partial"
	os.Remove(partial)
	if err := createSparse(partial, roundUp(sizeBytes, copyBlock)); err != nil {
		return fmt.Errorf("creating work disk %s: %w", path, err)
	}
	args := []string{"-q", "-F", "-L", "work"}
	if seedDir != "" {
		args = append(args, "-d", seedDir)
	}
	// The file is a fresh hole, which reads as zeros, so mkfs need not
	// zero the journal: that would allocate 64 MiB of a 4 GiB disk.
	args = append(args, "-E", "root_owner=0:0,lazy_journal_init=1", partial)
	if _, err := m.Runner.Run(ctx, "mkfs.ext4", args...); err != nil {
		os.Remove(partial)
		return fmt.Errorf("creating work disk %s: %w", path, err)
	}
	// A hard link never replaces a disk that appeared meanwhile.
	err := os.Link(partial, path)
	os.Remove(partial)
	if err != nil {
		return fmt.Errorf("creating work disk %s: %w", path, err)
	}
	return nil
}
