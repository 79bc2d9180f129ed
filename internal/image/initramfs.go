package image

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// initramfsModules are loaded by the initramfs's init, in this order (plain
// insmod, no modules.dep): virtio transports (mmio for microvm and
// Firecracker, pci for q35/pc), the block and net drivers, the ACPI power
// button with evdev so acpid sees it, vsock for host-guest sockets, and
// virtio_console for the guest agent's virtio-serial port (Debian's cloud
// kernel has CONFIG_VIRTIO_CONSOLE=m). Paths are relative to
// lib/modules/<version>/kernel.
var initramfsModules = []string{
	"drivers/virtio/virtio_ring",
	"drivers/virtio/virtio",
	"drivers/virtio/virtio_mmio",
	"drivers/virtio/virtio_pci_legacy_dev",
	"drivers/virtio/virtio_pci_modern_dev",
	"drivers/virtio/virtio_pci",
	"drivers/block/virtio_blk",
	"net/core/failover",
	"drivers/net/net_failover",
	"drivers/net/virtio_net",
	"drivers/char/virtio_console",
	"drivers/acpi/button",
	"drivers/input/evdev",
	"net/vmw_vsock/vsock",
	"net/vmw_vsock/vmw_vsock_virtio_transport_common",
	"net/vmw_vsock/vmw_vsock_virtio_transport",
}

// initramfsApplets are the busybox applets guest/initramfs/init uses.
var initramfsApplets = []string{"sh", "mount", "umount", "insmod", "usleep", "mkdir", "cat", "ls", "switch_root"}

// buildInitramfs assembles the generic initramfs (busybox, the modules, init)
// under work and writes it to out. It returns the modules it did not find,
// which a kernel may have built in.
func buildInitramfs(work, busybox, modules, out string) (missing []string, err error) {
	root := filepath.Join(work, "initramfs")
	for _, d := range []string{"bin", "dev", "proc", "sys", "newroot", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, fmt.Errorf("building initramfs: %w", err)
		}
	}
	if err := copyFile(busybox, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return nil, fmt.Errorf("building initramfs: copying busybox: %w", err)
	}
	for _, a := range initramfsApplets {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", a)); err != nil {
			return nil, fmt.Errorf("building initramfs: %w", err)
		}
	}
	var order []string
	for _, m := range initramfsModules {
		name := filepath.Base(m)
		src := filepath.Join(modules, filepath.FromSlash(m)+".ko")
		if _, err := os.Stat(src); err != nil {
			missing = append(missing, name)
			continue
		}
		if err := copyFile(src, filepath.Join(root, "lib", "modules", name+".ko"), 0o644); err != nil {
			return nil, fmt.Errorf("building initramfs: %w", err)
		}
		order = append(order, name)
	}
	if err := os.WriteFile(filepath.Join(root, "lib", "modules", "order"), []byte(strings.Join(order, "\n")+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("building initramfs: %w", err)
	}
	if err := installGuestFiles("initramfs", root); err != nil {
		return nil, fmt.Errorf("building initramfs: %w", err)
	}
	// The kernel opens /dev/console before /init runs; without the node init
	// starts with no stdout and its error messages are lost.
	console := cpioNode{name: "dev/console", mode: sIFCHR | 0o600, major: 5, minor: 1}
	if err := writeInitramfs(root, out, []cpioNode{console}); err != nil {
		return nil, err
	}
	return missing, nil
}
