package storage

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// WithImageMounted mounts the ext4 image read-only on a fresh temporary
// directory, calls fn with it, then unmounts and removes the directory
// whatever fn returned. The journal is not replayed (noload), so an image
// left dirty is not written to. It needs root.
func (m *Manager) WithImageMounted(ctx context.Context, image string, fn func(dir string) error) (err error) {
	if _, err := os.Stat(image); err != nil {
		return fmt.Errorf("mounting image: %w", err)
	}
	dir, err := os.MkdirTemp("", "banger-mnt-")
	if err != nil {
		return fmt.Errorf("mounting image %s: %w", image, err)
	}
	// mount -o loop sets autoclear on the loop device, so the unmount frees it.
	if _, err := m.Runner.Run(ctx, "mount", "-o", "ro,loop,noload,nosuid,nodev,noexec", image, dir); err != nil {
		os.Remove(dir)
		return fmt.Errorf("mounting image %s: %w", image, err)
	}
	defer func() {
		uctx := context.WithoutCancel(ctx)
		uerr := m.retryBusy(uctx, "unmounting "+dir, func() error {
			_, err := m.Runner.Run(uctx, "umount", dir)
			return err
		})
		if uerr == nil {
			// Remove, not RemoveAll: if the unmount somehow did not happen
			// this fails instead of deleting the image's contents.
			if rerr := os.Remove(dir); rerr != nil {
				uerr = rerr
			}
		}
		if uerr != nil {
			err = errors.Join(err, fmt.Errorf("image %s: %w", image, uerr))
		}
	}()
	return fn(dir)
}
