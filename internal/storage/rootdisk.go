package storage

import (
	"context"
	"errors"
	"fmt"
	"github.com/banger-dev/banger/internal/model"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// RootHandles records the kernel objects behind an active dm root disk; it
// is the model's type, so the daemon's handles hold what storage fills.
type RootHandles = model.RootHandles

// File names inside a VM's directory.
const (
	rootImageName = "root.img" // copy method: the VM's own rootfs
	rootCOWName   = "root.cow" // dm method: the snapshot's exception store
)

// sectorSize is the unit of device-mapper tables.
const sectorSize = 512

// CreateRootDisk makes the VM's persistent root disk state in vmDir and
// returns its path. Copy method: vmDir/root.img, a reflink or sparse copy of
// baseRootfs grown (file and ext4) to sizeBytes when that is larger; dm
// method: vmDir/root.cow, a sparse file of sizeBytes that holds the VM's
// changes (the disk the guest sees stays the size of baseRootfs). sizeBytes
// 0 means the size of baseRootfs. It refuses to overwrite an existing disk
// (fs.ErrExist) and removes what it made when it fails.
func (m *Manager) CreateRootDisk(ctx context.Context, vmID, baseRootfs, vmDir string, sizeBytes int64) (string, error) {
	if err := checkVMID(vmID); err != nil {
		return "", fmt.Errorf("creating root disk: %w", err)
	}
	if sizeBytes < 0 {
		return "", fmt.Errorf("creating root disk for vm %q: negative size %d", vmID, sizeBytes)
	}
	st, err := os.Stat(baseRootfs)
	if err != nil {
		return "", fmt.Errorf("creating root disk for vm %q: base rootfs: %w", vmID, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("creating root disk for vm %q: base rootfs %s is not a regular file", vmID, baseRootfs)
	}
	switch m.Method {
	case MethodCopy:
		p, err := m.createRootCopy(ctx, baseRootfs, st.Size(), filepath.Join(vmDir, rootImageName), sizeBytes)
		if err != nil {
			return "", fmt.Errorf("creating root disk for vm %q: %w", vmID, err)
		}
		return p, nil
	case MethodDM:
		if sizeBytes == 0 {
			sizeBytes = st.Size()
		}
		p := filepath.Join(vmDir, rootCOWName)
		if err := createSparse(p, sizeBytes); err != nil {
			return "", fmt.Errorf("creating root disk for vm %q: %w", vmID, err)
		}
		return p, nil
	default:
		return "", fmt.Errorf("creating root disk for vm %q: unknown method %q", vmID, m.Method)
	}
}

// createSparse makes a new sparse file of size bytes, refusing to replace
// an existing one.
func createSparse(p string, size int64) (err error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(p)
		}
	}()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("sizing %s: %w", p, err)
	}
	return nil
}

// createRootCopy copies base to final through a ".partial" file renamed into
// place at the end, so a crash never leaves a half-copied root.img behind
// that looks finished.
func (m *Manager) createRootCopy(ctx context.Context, base string, baseSize int64, final string, size int64) (p string, err error) {
	if size == 0 {
		size = baseSize
	}
	if size < baseSize {
		return "", fmt.Errorf("requested size %d is smaller than the image rootfs %s (%d bytes)", size, base, baseSize)
	}
	size = roundUp(size, copyBlock)
	if _, err := os.Lstat(final); err == nil {
		return "", fmt.Errorf("%s: %w", final, fs.ErrExist)
	}
	tmp := final + ".partial"
	os.Remove(tmp) // left by a crash: never a finished disk

	src, err := os.Open(base)
	if err != nil {
		return "", err
	}
	defer src.Close()
	dst, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	defer func() {
		if dst != nil {
			dst.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	start := time.Now()
	reflinked, err := cloneOrSparseCopy(ctx, dst, src)
	if err != nil {
		return "", fmt.Errorf("copying %s: %w", base, err)
	}
	m.log().Debug("root disk copied", "src", base, "dst", final, "reflink", reflinked, "duration", time.Since(start))
	if size > baseSize {
		if err := dst.Truncate(size); err != nil {
			return "", fmt.Errorf("growing %s: %w", tmp, err)
		}
	}
	if err := dst.Sync(); err != nil {
		return "", fmt.Errorf("syncing %s: %w", tmp, err)
	}
	cerr := dst.Close()
	dst = nil
	if cerr != nil {
		return "", cerr
	}
	if size > baseSize {
		if err := m.growExt4(ctx, tmp); err != nil {
			return "", err
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	if d, derr := os.Open(filepath.Dir(final)); derr == nil {
		d.Sync()
		d.Close()
	}
	return final, nil
}

// growExt4 grows the ext4 filesystem in image to the image's size.
// resize2fs wants a freshly checked filesystem, so check (and repair, it is
// our private copy) first.
func (m *Manager) growExt4(ctx context.Context, image string) error {
	// resize2fs refuses a filesystem that needs checking ("Please run
	// 'e2fsck -f' first"), so try it first: a copy of a never-mounted base
	// image grows without the extra pass over the filesystem.
	_, err := m.Runner.Run(ctx, "resize2fs", image)
	var ce *system.CommandError
	if err == nil {
		return nil
	}
	if !errors.As(err, &ce) || !strings.Contains(ce.Stderr, "e2fsck -f") {
		return fmt.Errorf("growing filesystem in %s: %w", image, err)
	}
	if _, err := m.Runner.Run(ctx, "e2fsck", "-f", "-p", image); err != nil {
		// Exit 1: errors were corrected, the filesystem is now fine.
		if !errors.As(err, &ce) || ce.ExitCode != 1 {
			return fmt.Errorf("checking %s before resize: %w", image, err)
		}
	}
	if _, err := m.Runner.Run(ctx, "resize2fs", image); err != nil {
		return fmt.Errorf("growing filesystem in %s: %w", image, err)
	}
	return nil
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

// ActivateRootDisk makes the block device the VMM gets for diskPath (what
// CreateRootDisk returned). Copy method: diskPath itself, no handles. dm
// method: a read-only loop over baseRootfs, a loop over the COW file and a
// snapshot target named DMName(vmID), set up under a host-wide lock; on
// failure whatever was set up is undone in reverse order. A dm name already
// in use fails with system.ErrExists.
func (m *Manager) ActivateRootDisk(ctx context.Context, vmID, baseRootfs, diskPath string) (device string, h RootHandles, err error) {
	if err := checkVMID(vmID); err != nil {
		return "", RootHandles{}, fmt.Errorf("activating root disk: %w", err)
	}
	if _, err := os.Stat(diskPath); err != nil {
		return "", RootHandles{}, fmt.Errorf("activating root disk for vm %q: %w", vmID, err)
	}
	switch m.Method {
	case MethodCopy:
		return diskPath, RootHandles{}, nil
	case MethodDM:
		h, err := m.activateDM(ctx, vmID, baseRootfs, diskPath)
		if err != nil {
			return "", RootHandles{}, fmt.Errorf("activating root disk for vm %q: %w", vmID, err)
		}
		return h.DMDev, h, nil
	default:
		return "", RootHandles{}, fmt.Errorf("activating root disk for vm %q: unknown method %q", vmID, m.Method)
	}
}

func (m *Manager) activateDM(ctx context.Context, vmID, base, cow string) (h RootHandles, err error) {
	st, err := os.Stat(base)
	if err != nil {
		return RootHandles{}, fmt.Errorf("base rootfs: %w", err)
	}
	sectors := st.Size() / sectorSize // a loop device rounds down too
	if sectors == 0 {
		return RootHandles{}, fmt.Errorf("base rootfs %s is smaller than one sector", base)
	}
	unlock, err := m.lockHost(ctx)
	if err != nil {
		return RootHandles{}, err
	}
	defer unlock()

	// Undo runs even when ctx was cancelled: leaving loops behind is worse.
	undoCtx := context.WithoutCancel(ctx)
	var undo []func() error
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0; i-- {
			if uerr := undo[i](); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undoing: %w", uerr))
			}
		}
	}()

	h.BaseLoop, err = m.attachLoop(ctx, base, true)
	if err != nil {
		return RootHandles{}, err
	}
	baseLoop := h.BaseLoop
	undo = append(undo, func() error { return m.detachLoop(undoCtx, baseLoop) })

	h.COWLoop, err = m.attachLoop(ctx, cow, false)
	if err != nil {
		return RootHandles{}, err
	}
	cowLoop := h.COWLoop
	undo = append(undo, func() error { return m.detachLoop(undoCtx, cowLoop) })

	h.DMName = DMName(vmID)
	// Persistent exception store ("P") so the VM's changes survive a stop;
	// 8-sector (4 KiB) chunks match the guest filesystem's block size.
	table := fmt.Sprintf("0 %d snapshot %s %s P 8", sectors, h.BaseLoop, h.COWLoop)
	if _, err := m.Runner.Run(ctx, "dmsetup", "create", h.DMName, "--table", table); err != nil {
		// The kernel answers EBUSY for a name in use; tell that apart so a
		// caller can tear the stale device down and retry.
		if errors.Is(err, system.ErrBusy) {
			if _, ierr := m.Runner.Run(undoCtx, "dmsetup", "info", h.DMName); ierr == nil {
				return RootHandles{}, fmt.Errorf("creating dm device %s: %w: %w", h.DMName, system.ErrExists, err)
			}
		}
		return RootHandles{}, fmt.Errorf("creating dm device %s: %w", h.DMName, err)
	}
	h.DMDev = "/dev/mapper/" + h.DMName
	m.log().Debug("root disk activated", "vm", vmID, "dm", h.DMName, "base_loop", h.BaseLoop, "cow_loop", h.COWLoop)
	return h, nil
}

// attachLoop binds file to the first free loop device and returns its path.
func (m *Manager) attachLoop(ctx context.Context, file string, readOnly bool) (string, error) {
	args := []string{"--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	args = append(args, file)
	out, err := m.Runner.Run(ctx, "losetup", args...)
	if err != nil {
		return "", fmt.Errorf("attaching loop device to %s: %w", file, err)
	}
	dev := strings.TrimSpace(string(out))
	if !strings.HasPrefix(dev, "/dev/loop") {
		return "", fmt.Errorf("attaching loop device to %s: unexpected losetup output %q", file, dev)
	}
	return dev, nil
}

// detachLoop detaches a loop device; one already detached is success.
func (m *Manager) detachLoop(ctx context.Context, dev string) error {
	return m.retryBusy(ctx, "detaching loop device "+dev, func() error {
		_, err := m.Runner.Run(ctx, "losetup", "--detach", dev)
		return err
	})
}

// DeactivateRootDisk tears down what ActivateRootDisk set up: the dm device,
// then the COW loop, then the base loop. It is idempotent: an object already
// gone counts as removed. A busy object is retried BusyRetries times with
// doubling waits, then reported with system.ErrBusy; on a dm failure the
// loops are left alone, so the same handles can be retried.
func (m *Manager) DeactivateRootDisk(ctx context.Context, h RootHandles) error {
	name := h.DMName
	if name == "" && h.DMDev != "" {
		name = path.Base(h.DMDev)
	}
	if name != "" {
		err := m.retryBusy(ctx, "removing dm device "+name, func() error {
			_, err := m.Runner.Run(ctx, "dmsetup", "remove", name)
			return err
		})
		if err != nil {
			return fmt.Errorf("deactivating root disk: %w", err)
		}
	}
	if h.COWLoop == "" && h.BaseLoop == "" {
		return nil
	}
	// Loops are detached under the setup lock: stale handles (after a host
	// reboot, say) can name a loop that an activation in progress has just
	// bound and not yet put under its dm table.
	unlock, err := m.lockHost(ctx)
	if err != nil {
		return fmt.Errorf("deactivating root disk: %w", err)
	}
	defer unlock()
	var errs []error
	for _, dev := range []string{h.COWLoop, h.BaseLoop} {
		if dev == "" {
			continue
		}
		if err := m.detachLoop(ctx, dev); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deactivating root disk: %w", err)
	}
	return nil
}

// retryBusy runs op until it succeeds, reports the object gone
// (system.ErrNotFound, which counts as success) or fails for a reason other
// than busy. Busy is retried a bounded number of times.
func (m *Manager) retryBusy(ctx context.Context, what string, op func() error) error {
	wait := m.busyBackoff()
	attempts := m.busyRetries()
	var err error
	for i := 1; ; i++ {
		err = op()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, system.ErrNotFound):
			m.log().Debug("already gone", "what", what)
			return nil
		case !errors.Is(err, system.ErrBusy):
			return fmt.Errorf("%s: %w", what, err)
		case i >= attempts:
			return fmt.Errorf("%s: still busy after %d attempts: %w", what, attempts, err)
		}
		m.log().Debug("busy, retrying", "what", what, "attempt", i, "wait", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (last error: %w)", what, ctx.Err(), err)
		case <-t.C:
		}
		wait *= 2
	}
}
