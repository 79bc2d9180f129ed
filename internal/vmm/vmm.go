// Package vmm holds what every VMM driver (Firecracker, QEMU) is given to run a
// VM. Drivers live in subpackages; the daemon declares the interface it needs.
package vmm

// Machine is everything a driver needs to launch one VM. All paths are absolute
// and owned by the daemon; drivers never derive paths of their own.
type Machine struct {
	ID        string // VM id: lowercase hex, no hyphens; used as the VMM's instance id
	Name      string // VM name (guest hostname)
	VCPUs     int
	MemoryMiB int

	Binary string // VMM executable (firecracker or qemu-system-x86_64)
	Accel  string // qemu only: "kvm" or "tcg"

	Kernel   string // kernel image (vmlinux for Firecracker)
	Initrd   string // optional
	BootArgs string // extra kernel arguments from the image; the driver adds console, ip= etc.

	RootDisk string // path of the root block device or file (read-write)
	WorkDisk string // path of the work disk image (read-write)

	TapDevice string // host tap name ("" = no network)
	GuestMAC  string // aa:bb:cc:dd:ee:ff
	GuestIP   string // e.g. 172.30.0.2
	GatewayIP string // host side of the bridge, e.g. 172.30.0.1
	Netmask   string // e.g. 255.255.255.0
	DNS       string // resolver for the guest, "" = none

	APISock     string // Firecracker API socket, or QEMU's QMP socket
	VSockPath   string // Firecracker hybrid vsock UDS
	VSockCID    uint32
	ConsoleLog  string // guest serial console output
	LogPath     string // VMM's own log (Firecracker logger)
	MetricsPath string // Firecracker metrics
}

// KernelIPArg renders the kernel ip= argument for m's static address
// (ip=<client>::<gw>:<mask>:<hostname>:eth0:off), or "" without networking.
func (m Machine) KernelIPArg() string {
	if m.GuestIP == "" {
		return ""
	}
	return "ip=" + m.GuestIP + "::" + m.GatewayIP + ":" + m.Netmask + ":" + m.Name + ":eth0:off"
}
