// Package model holds banger's plain data types: what a VM is (VMRecord, stored
// in SQLite) and what is currently true about it on the host (VMHandles, never
// stored). It imports only the standard library.
package model

import "time"

// VMState is the lifecycle state of a VM as stored. States are strings so the
// store stays readable and stable across releases.
type VMState string

// The VM states. Transitional states (starting, stopping, deleting) are written
// before the first side effect so startup reconcile knows what was half done.
const (
	StateCreated  VMState = "created"
	StateStarting VMState = "starting"
	StateRunning  VMState = "running"
	StateStopping VMState = "stopping"
	StateStopped  VMState = "stopped"
	StateError    VMState = "error"
	StateDeleting VMState = "deleting"
	// Suspended: memory and device state saved in the VM's directory, no
	// VMM running; the VM keeps its tap, IP, DNS name and forwards.
	StateSuspended  VMState = "suspended"
	StateSuspending VMState = "suspending"
	StateResuming   VMState = "resuming"
)

// Transitional reports whether s is a state a VM is only in while an operation runs.
func (s VMState) Transitional() bool {
	switch s {
	case StateStarting, StateStopping, StateDeleting, StateSuspending, StateResuming:
		return true
	}
	return false
}

// VMSpec is the machine a user asked for.
type VMSpec struct {
	VCPUs         int   `json:"vcpus"`
	MemoryMiB     int   `json:"memory_mib"`
	DiskSizeBytes int64 `json:"disk_size_bytes"`
	WorkDiskBytes int64 `json:"work_disk_bytes"`
	// Options are the VM's confinement and network policy choices.
	Options VMOptions `json:"options"`
}

// VMOptions are per-VM choices beyond size: confinement and the guest
// network policy.
type VMOptions struct {
	// Unconfined runs the VMM as root with no jail or cgroup: only when
	// asked explicitly (vm create --unconfined), logged and shown.
	Unconfined bool `json:"unconfined,omitempty"`
	// CPUQuota caps the VMM at this percent of one CPU (0 = no cap).
	CPUQuota int `json:"cpu_quota,omitempty"`
	// From is the snapshot the VM was made from: its first start restores
	// the snapshot's state instead of booting.
	From string    `json:"from,omitempty"`
	Net  NetPolicy `json:"net"`
	// Pool is the warm pool the VM is a member of: restored from the
	// pool's snapshot and kept paused until a claim takes it (and clears
	// this). Empty for every other VM.
	Pool string `json:"pool,omitempty"`

	// Lifetime: the VM is stopped or deleted (TTLAction) at ExpiresAt, and
	// stopped after IdleTimeoutSeconds without exec, ssh, session or
	// forwarded-connection activity. Zero values mean no limit.
	ExpiresAt          time.Time `json:"expires_at,omitzero"`
	TTLAction          TTLAction `json:"ttl_action,omitempty"`
	IdleTimeoutSeconds int64     `json:"idle_timeout_seconds,omitempty"`
}

// Pool is a warm pool: Size VMs restored from Snapshot and kept paused,
// each claimed in about the time of a resume and replaced in the background.
type Pool struct {
	Name      string    `json:"name"`
	Snapshot  string    `json:"snapshot"`
	Size      int       `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// TTLAction is what happens to a VM when its TTL expires.
type TTLAction string

// The TTL actions: delete (the default), stop, or suspend (memory and
// device state saved, no VMM).
const (
	TTLDelete  TTLAction = "delete"
	TTLStop    TTLAction = "stop"
	TTLSuspend TTLAction = "suspend"
)

// NetPolicy is what a VM's guest may reach.
type NetPolicy struct {
	Isolated    bool     `json:"isolated,omitempty"`     // no traffic with other VMs, both ways
	AllowHost   []uint16 `json:"allow_host,omitempty"`   // host TCP ports the guest may open
	EgressAllow []string `json:"egress_allow,omitempty"` // CIDRs beyond the host (with egress NAT)
	EgressDeny  []string `json:"egress_deny,omitempty"`
}

// VMRuntime is the durable part of a VM's runtime: its state and every path or
// address derived deterministically from its id. It lives in the vms row.
type VMRuntime struct {
	State          VMState `json:"state"`
	VMM            string  `json:"vmm"`   // "firecracker" or "qemu"
	Accel          string  `json:"accel"` // "kvm" or "tcg"
	RootDiskMethod string  `json:"root_disk_method"`
	GuestIP        string  `json:"guest_ip"`
	GuestMAC       string  `json:"guest_mac"`
	APISockPath    string  `json:"api_sock_path"`
	VSockPath      string  `json:"vsock_path"`
	VSockCID       uint32  `json:"vsock_cid"`
	LogPath        string  `json:"log_path"`
	MetricsPath    string  `json:"metrics_path"`
	DNSName        string  `json:"dns_name"`
	VMDir          string  `json:"vm_dir"`
	SystemOverlay  string  `json:"system_overlay"`
	WorkDiskPath   string  `json:"work_disk_path"`
	LastError      string  `json:"last_error,omitempty"`
	// UID is the VM's own unprivileged user (and group) id its VMM runs as,
	// allocated at create from the configured range and released at delete;
	// 0 for a VM that runs unconfined.
	UID int `json:"uid,omitempty"`
}

// VMRecord is what a VM IS: identity, intent and durable runtime.
type VMRecord struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Image     string    `json:"image"`
	Spec      VMSpec    `json:"spec"`
	Runtime   VMRuntime `json:"runtime"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// VMHandles is what is CURRENTLY TRUE about a running VM on this host. It never
// touches SQLite: the daemon keeps it in memory and in a handles.json scratch
// file in the VM's directory, and rebuilds it from the OS at startup.
type VMHandles struct {
	PID       int    `json:"pid,omitempty"`
	PIDStart  uint64 `json:"pid_start,omitempty"` // start time in clock ticks since boot (/proc/PID/stat field 22)
	TapDevice string `json:"tap_device,omitempty"`
	// RootHandles is filled by the storage package as it activates the root
	// disk; its fields appear inline in JSON.
	RootHandles
}

// RootHandles records the kernel objects behind an active dm root disk
// (empty for the copy method), so they can be torn down later, even by a
// daemon that restarted.
type RootHandles struct {
	BaseLoop string `json:"base_loop,omitempty"` // read-only loop over the image's rootfs
	COWLoop  string `json:"cow_loop,omitempty"`  // loop over the VM's root.cow
	DMName   string `json:"dm_name,omitempty"`   // storage.DMName(vmID)
	DMDev    string `json:"dm_dev,omitempty"`    // /dev/mapper/<DMName>
}

// IsZero reports whether h records nothing to tear down.
func (h RootHandles) IsZero() bool { return h == RootHandles{} }

// IsZero reports whether h records nothing.
func (h VMHandles) IsZero() bool { return h == VMHandles{} }

// Image is a bootable guest image: a kernel, an optional initrd and a root
// filesystem image shared read-only by every VM made from it.
type Image struct {
	Name       string    `json:"name"`
	KernelPath string    `json:"kernel_path"`
	VMLinux    string    `json:"vmlinux_path,omitempty"` // uncompressed kernel for Firecracker, when available
	InitrdPath string    `json:"initrd_path,omitempty"`
	RootfsPath string    `json:"rootfs_path"`
	BootArgs   string    `json:"boot_args,omitempty"`
	Default    bool      `json:"default"`
	CreatedAt  time.Time `json:"created_at"`
}

// SessionStatus is the status of a guest session.
type SessionStatus string

// Guest session statuses.
const (
	SessionRunning SessionStatus = "running"
	SessionExited  SessionStatus = "exited"
	SessionFailed  SessionStatus = "failed"
	SessionLost    SessionStatus = "lost"
	// SessionForked: running in the source when the VM was cloned from it;
	// it goes on only in the source, and the clone keeps its logs up to the
	// fork.
	SessionForked SessionStatus = "forked"
)

// GuestSession is a long-running guest process whose logs live on the VM's
// work disk, so they can be read while the VM runs and after it stopped.
type GuestSession struct {
	ID         string        `json:"id"`
	VMID       string        `json:"vm_id"`
	Name       string        `json:"name"`
	Command    []string      `json:"command"`
	Cwd        string        `json:"cwd,omitempty"`
	Env        []string      `json:"env,omitempty"`
	Stdin      bool          `json:"stdin"`
	Status     SessionStatus `json:"status"`
	ExitCode   *int          `json:"exit_code,omitempty"`
	StartedAt  time.Time     `json:"started_at"`
	EndedAt    *time.Time    `json:"ended_at,omitempty"`
	StdoutPath string        `json:"stdout_path"` // guest path, on the work disk
	StderrPath string        `json:"stderr_path"`
}
