// Package api owns banger's wire: request and response types, route paths,
// the JSON error envelope and the API version. The daemon serves it over a
// unix socket (internal/localapi); the public client package speaks it. It imports only the standard library and
// internal/model.
package api

import (
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// Version is the version of banger's CLI, daemon and API. Set at build time
// with -ldflags "-X github.com/banger-dev/banger/internal/api.Version=...".
var Version = "0.1.0-dev"

// VersionHeader carries the daemon's version on every response.
const VersionHeader = "Banger-Version"

// MaxBodyBytes caps request bodies.
const MaxBodyBytes = 1 << 20

// Routes. Every route the daemon serves is listed here, as Go 1.22 ServeMux
// patterns, so the whole API is visible in one place.
const (
	RouteVersion = "GET /v1/version"

	RouteVMList     = "GET /v1/vms"
	RouteVMCreate   = "POST /v1/vms"
	RouteVMShow     = "GET /v1/vms/{name}"
	RouteVMDelete   = "DELETE /v1/vms/{name}"
	RouteVMStart    = "POST /v1/vms/{name}/start"
	RouteVMStop     = "POST /v1/vms/{name}/stop"
	RouteVMRestart  = "POST /v1/vms/{name}/restart"
	RouteVMSuspend  = "POST /v1/vms/{name}/suspend"
	RouteVMResume   = "POST /v1/vms/{name}/resume"
	RouteVMSnapshot = "POST /v1/vms/{name}/snapshot"
	RouteVMFork     = "POST /v1/vms/{name}/fork"

	RouteSnapshotList   = "GET /v1/snapshots"
	RouteSnapshotShow   = "GET /v1/snapshots/{name}"
	RouteSnapshotDelete = "DELETE /v1/snapshots/{name}"

	RoutePoolList   = "GET /v1/pools"
	RoutePoolCreate = "POST /v1/pools"
	RoutePoolShow   = "GET /v1/pools/{name}"
	RoutePoolDelete = "DELETE /v1/pools/{name}"
	RoutePoolClaim  = "POST /v1/pools/{name}/claim"

	RouteVMLogs  = "GET /v1/vms/{name}/logs"
	RouteVMExec  = "POST /v1/vms/{name}/exec" // upgrades to the frame protocol (stream.go)
	RouteVMWait  = "POST /v1/vms/{name}/wait-ssh"
	RouteVMStats = "GET /v1/vms/{name}/stats"
	RouteVMTTL   = "POST /v1/vms/{name}/ttl"

	RouteVMPorts      = "GET /v1/vms/{name}/ports"
	RouteVMPortAdd    = "POST /v1/vms/{name}/ports"
	RouteVMPortRemove = "DELETE /v1/vms/{name}/ports/{spec}"

	RouteSessionList  = "GET /v1/vms/{name}/sessions"
	RouteSessionStart = "POST /v1/vms/{name}/sessions"
	RouteSessionLogs  = "GET /v1/vms/{name}/sessions/{session}/logs"
	RouteSessionSend  = "POST /v1/vms/{name}/sessions/{session}/send"
	RouteSessionStop  = "POST /v1/vms/{name}/sessions/{session}/stop"

	RouteImageList   = "GET /v1/images"
	RouteImageImport = "POST /v1/images"
	RouteImageBuild  = "POST /v1/images/build"
	RouteImagePull   = "POST /v1/images/pull" // streams progress lines, as build
	RouteImagePrune  = "POST /v1/images/prune"
	RouteImageShow   = "GET /v1/images/{name}"
	RouteImageDelete = "DELETE /v1/images/{name}"

	RouteEvents = "GET /v1/events" // ?vm=NAME&follow=true: a JSON array, or with follow JSON lines as they happen

	RouteDoctor   = "GET /v1/doctor"
	RouteGC       = "POST /v1/gc"
	RouteShutdown = "POST /v1/daemon/shutdown"
)

// VersionResponse answers RouteVersion.
type VersionResponse struct {
	Version string `json:"version"`
	PID     int    `json:"pid"`
	Socket  string `json:"socket"`
	Config  string `json:"config,omitempty"`
	Ready   bool   `json:"ready"` // startup reconcile finished
}

// CreateVMRequest asks for a new VM record.
type CreateVMRequest struct {
	Name          string   `json:"name,omitempty"`
	Image         string   `json:"image,omitempty"`
	VMM           string   `json:"vmm,omitempty"` // "", "auto", "firecracker", "qemu"
	VCPUs         int      `json:"vcpus,omitempty"`
	MemoryMiB     int      `json:"memory_mib,omitempty"`
	DiskSizeBytes int64    `json:"disk_size_bytes,omitempty"`
	WorkDiskBytes int64    `json:"work_disk_bytes,omitempty"`
	Ports         []string `json:"ports,omitempty"`
	// Unconfined runs the VMM as root with no jail or cgroup (an explicit
	// opt-out, logged and shown).
	Unconfined  bool     `json:"unconfined,omitempty"`
	CPUQuota    int      `json:"cpu_quota,omitempty"` // percent of one CPU
	Isolated    bool     `json:"isolated,omitempty"`
	AllowHost   []uint16 `json:"allow_host,omitempty"`
	EgressAllow []string `json:"egress_allow,omitempty"`
	EgressDeny  []string `json:"egress_deny,omitempty"`
	// Lifetime: deleted (or stopped, TTLAction) TTLSeconds after create,
	// stopped after IdleTimeoutSeconds without activity. 0: no limit.
	TTLSeconds         int64  `json:"ttl_seconds,omitempty"`
	TTLAction          string `json:"ttl_action,omitempty"` // delete (default) or stop
	IdleTimeoutSeconds int64  `json:"idle_timeout_seconds,omitempty"`
	// From makes the VM from a snapshot: its machine, image and disks, and
	// at its first start the snapshot's memory and device state.
	From string `json:"from,omitempty"`
}

// SnapshotRequest names a snapshot to take ("" = generated).
type SnapshotRequest struct {
	As string `json:"as,omitempty"`
}

// ForkRequest asks for Count new VMs from a running VM.
type ForkRequest struct {
	Count int `json:"count,omitempty"` // default 1
}

// Snapshot is a named point in time of a VM.
type Snapshot struct {
	Name       string       `json:"name"`
	SourceVM   string       `json:"source_vm"`
	Image      string       `json:"image"`
	VMM        string       `json:"vmm"`
	VMMVersion string       `json:"vmm_version,omitempty"`
	Spec       model.VMSpec `json:"spec"`
	Size       int64        `json:"size"`
	CreatedAt  string       `json:"created_at"`
	UsedBy     []string     `json:"used_by,omitempty"`
	Pools      []string     `json:"pools,omitempty"`
}

// CreatePoolRequest asks for a warm pool of Size VMs from a snapshot.
type CreatePoolRequest struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot"`
	Size     int    `json:"size"`
}

// Pool is a warm pool: Size VMs restored from Snapshot and kept paused.
type Pool struct {
	Name      string   `json:"name"`
	Snapshot  string   `json:"snapshot"`
	Size      int      `json:"size"`
	Ready     int      `json:"ready"`                // members ready to claim
	Warming   int      `json:"warming"`              // members being made
	Members   []string `json:"members"`              // member VM names, ready ones first
	LastError string   `json:"last_error,omitempty"` // why the last member could not be made
	CreatedAt string   `json:"created_at"`
}

// ClaimRequest takes a VM from a pool; Name renames it ("" keeps the
// member's name).
type ClaimRequest struct {
	Name string `json:"name,omitempty"`
}

// TTLRequest changes a VM's TTL (RouteVMTTL): TTLSeconds from now, or
// added to the current expiry with Add, or no TTL with Clear.
type TTLRequest struct {
	TTLSeconds int64  `json:"ttl_seconds,omitempty"`
	Add        bool   `json:"add,omitempty"`
	Clear      bool   `json:"clear,omitempty"`
	Action     string `json:"action,omitempty"` // delete or stop; "" keeps the current one
}

// Event is one entry of the daemon's event log (RouteEvents).
type Event = model.Event

// VMStats answers RouteVMStats: a running VM's counters, from its cgroup
// (confined) or its VMM process (unconfined), and its tap. Network
// counters are the guest's view.
type VMStats struct {
	Name           string    `json:"name"`
	Time           time.Time `json:"time"`
	Source         string    `json:"source"` // cgroup or process
	CPUSeconds     float64   `json:"cpu_seconds"`
	MemoryBytes    int64     `json:"memory_bytes"`
	DiskReadBytes  int64     `json:"disk_read_bytes"`
	DiskWriteBytes int64     `json:"disk_write_bytes"`
	Tap            string    `json:"tap,omitempty"`
	NetRxBytes     int64     `json:"net_rx_bytes"`
	NetTxBytes     int64     `json:"net_tx_bytes"`
	NetRxPackets   int64     `json:"net_rx_packets"`
	NetTxPackets   int64     `json:"net_tx_packets"`
	// LastActivity is the last exec, ssh, session or forwarded connection
	// (the daemon's start when none since), as the idle timeout counts it.
	LastActivity       time.Time `json:"last_activity"`
	IdleTimeoutSeconds int64     `json:"idle_timeout_seconds,omitempty"`
	ExpiresAt          time.Time `json:"expires_at,omitzero"`
}

// VM is a VM as the API shows it: the durable record plus live facts.
type VM struct {
	model.VMRecord
	Live *LiveFacts `json:"live,omitempty"`
	// Confinement is how the VMM is confined (vm show).
	Confinement *Confinement `json:"confinement,omitempty"`
	// Warnings are one-line notes for the user about this operation (e.g.
	// QEMU running under slow software emulation).
	Warnings []string `json:"warnings,omitempty"`
}

// LiveFacts are what is currently true about a VM on the host.
type LiveFacts struct {
	Alive   bool            `json:"alive"`
	Handles model.VMHandles `json:"handles"`
	Reason  string          `json:"reason,omitempty"` // why not alive, when recorded running
}

// Confinement describes how a VM's VMM is confined.
type Confinement struct {
	Confined         bool            `json:"confined"`
	Reason           string          `json:"reason,omitempty"`
	UID              int             `json:"uid,omitempty"`
	Cgroup           string          `json:"cgroup,omitempty"`
	MemoryLimitBytes int64           `json:"memory_limit_bytes,omitempty"`
	PidsLimit        int64           `json:"pids_limit,omitempty"`
	CPUWeight        int             `json:"cpu_weight,omitempty"`
	CPUQuota         int             `json:"cpu_quota,omitempty"`
	IOWeight         int             `json:"io_weight,omitempty"`
	Jail             string          `json:"jail,omitempty"`
	Seccomp          string          `json:"seccomp,omitempty"`
	Network          model.NetPolicy `json:"network"`
}

// StopRequest stops a VM.
type StopRequest struct {
	Force          bool  `json:"force,omitempty"`
	TimeoutSeconds int64 `json:"timeout_seconds,omitempty"`
}

// DeleteRequest deletes a VM.
type DeleteRequest struct {
	Force bool `json:"force,omitempty"`
}

// WaitSSHRequest waits until the guest answers SSH.
type WaitSSHRequest struct {
	TimeoutSeconds int64 `json:"timeout_seconds,omitempty"`
}

// ExecRequest opens a command in a guest. It is sent as the JSON body of
// RouteVMExec; the connection then carries frames (see stream.go).
type ExecRequest struct {
	Argv []string `json:"argv"`
	TTY  bool     `json:"tty,omitempty"`
	Term string   `json:"term,omitempty"`
	Cols int      `json:"cols,omitempty"`
	Rows int      `json:"rows,omitempty"`
	// Stdin says whether the client will send stdin frames; without it the
	// command's stdin is empty.
	Stdin bool `json:"stdin,omitempty"`
	// User runs the command (or the login shell) as this guest user, a name
	// or uid; empty: the image's USER, root for images not made from a
	// container image.
	User string `json:"user,omitempty"`
}

// ImportImageRequest registers an image from existing files.
type ImportImageRequest struct {
	Name     string `json:"name"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd,omitempty"`
	Rootfs   string `json:"rootfs"`
	BootArgs string `json:"boot_args,omitempty"`
	VMLinux  string `json:"vmlinux,omitempty"`
}

// BuildImageRequest builds an image from Debian packages.
type BuildImageRequest struct {
	Name     string   `json:"name,omitempty"`
	Base     string   `json:"base,omitempty"`
	Packages []string `json:"packages,omitempty"`
}

// Image is an image as the API shows it.
type Image struct {
	model.Image
	QEMUBootable        bool      `json:"qemu_bootable"`
	FirecrackerBootable bool      `json:"firecracker_bootable"`
	Notes               []string  `json:"notes,omitempty"`
	UsedBy              []string  `json:"used_by,omitempty"`
	OCI                 *OCIImage `json:"oci,omitempty"`
}

// PullImageRequest makes an image from a container image: Ref from a
// registry, or Path to an OCI layout directory, OCI archive or docker save
// tarball.
type PullImageRequest struct {
	Name     string `json:"name,omitempty"`
	Ref      string `json:"ref,omitempty"`
	Path     string `json:"path,omitempty"`
	Insecure bool   `json:"insecure,omitempty"`
}

// PruneImagesRequest empties the container image caches: of cached
// layers and root filesystems no registered image was made from, or of
// all of them with All. What a pull in progress uses is always kept.
type PruneImagesRequest struct {
	All bool `json:"all,omitempty"`
}

// CacheUsage counts cached files and the disk space they take.
type CacheUsage struct {
	Count int   `json:"count"`
	Bytes int64 `json:"bytes"`
}

// PruneImagesResult says what image prune removed and what is left.
type PruneImagesResult struct {
	RemovedLayers CacheUsage `json:"removed_layers"`
	RemovedRootfs CacheUsage `json:"removed_rootfs"`
	KeptLayers    CacheUsage `json:"kept_layers"`
	KeptRootfs    CacheUsage `json:"kept_rootfs"`
}

// OCIImage is where an image made from a container image came from.
type OCIImage struct {
	Source     string     `json:"source"`
	Digest     string     `json:"digest"`
	Platform   string     `json:"platform"`
	Layers     []OCILayer `json:"layers"`
	Size       int64      `json:"size"`
	RootfsSize int64      `json:"rootfs_size"`
	Env        []string   `json:"env,omitempty"`
	WorkingDir string     `json:"working_dir,omitempty"`
	User       string     `json:"user,omitempty"`
	Entrypoint []string   `json:"entrypoint,omitempty"`
	Cmd        []string   `json:"cmd,omitempty"`
}

// OCILayer is one layer of an OCI image.
type OCILayer struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// StartSessionRequest starts a guest session.
type StartSessionRequest struct {
	Name  string   `json:"name,omitempty"`
	Argv  []string `json:"argv"`
	Cwd   string   `json:"cwd,omitempty"`
	Env   []string `json:"env,omitempty"`
	Stdin bool     `json:"stdin,omitempty"`
	User  string   `json:"user,omitempty"` // as ExecRequest.User
}

// StopSessionRequest signals a guest session.
type StopSessionRequest struct {
	Signal       string `json:"signal,omitempty"`
	GraceSeconds int64  `json:"grace_seconds,omitempty"`
}

// PortRequest adds a port forward.
type PortRequest struct {
	Spec string `json:"spec"`
}

// DoctorReport answers RouteDoctor.
type DoctorReport struct {
	Checks         []DoctorCheck `json:"checks"`
	RootDiskMethod string        `json:"root_disk_method"`
	DefaultVMM     string        `json:"default_vmm"`
	Objects        []HostObject  `json:"objects"`
}

// DoctorCheck is one host check.
type DoctorCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// HostObject is a kernel or filesystem object banger owns, with its owner.
type HostObject struct {
	Kind   string `json:"kind"` // tap, loop, dm, process, socket, vmdir
	Name   string `json:"name"`
	VM     string `json:"vm,omitempty"` // owning VM name; "" = orphan
	Orphan bool   `json:"orphan"`
	Detail string `json:"detail,omitempty"`
}

// GCResponse lists what gc removed (or would remove with dry_run), and the
// orphans it found but left alone (not proven banger's, or their VM being
// changed), with the reason in Detail.
type GCResponse struct {
	DryRun  bool         `json:"dry_run"`
	Removed []HostObject `json:"removed"`
	Kept    []HostObject `json:"kept,omitempty"`
	Errors  []string     `json:"errors,omitempty"`
	// ImageCaches is what the container image caches hold (gc leaves them
	// to their bounds and to image prune).
	ImageCaches *ImageCaches `json:"image_caches,omitempty"`
}

// ImageCaches is the disk use of the cached layers and root filesystems.
type ImageCaches struct {
	Layers CacheUsage `json:"layers"`
	Rootfs CacheUsage `json:"rootfs"`
}
