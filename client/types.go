package client

import (
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
)

// The wire types, under names an importing module can use: they are aliases,
// so values move between this package and banger's own code unchanged.
type (
	// VersionResponse is the daemon's answer to Version.
	VersionResponse = api.VersionResponse

	// VM is a VM as the API shows it: its record plus live facts.
	VM = api.VM
	// VMRecord is what a VM is: identity, intent and durable runtime.
	VMRecord = model.VMRecord
	// VMSpec is the machine a user asked for.
	VMSpec = model.VMSpec
	// VMRuntime is the durable part of a VM's runtime (state, paths, addresses).
	VMRuntime = model.VMRuntime
	// VMState is a VM's lifecycle state.
	VMState = model.VMState
	// LiveFacts are what is currently true about a VM on the host.
	LiveFacts = api.LiveFacts
	// VMHandles are the host objects a running VM holds.
	VMHandles = model.VMHandles

	// CreateVMRequest asks for a new VM record (CreateVM).
	CreateVMRequest = api.CreateVMRequest
	// StopRequest stops or restarts a VM (StopVM, RestartVM).
	StopRequest = api.StopRequest
	// WaitSSHRequest bounds WaitSSH.
	WaitSSHRequest = api.WaitSSHRequest
	// ExecRequest describes a command to run in a guest (Exec).
	ExecRequest = api.ExecRequest

	// GuestSession is a long-running guest process and where its logs are.
	GuestSession = model.GuestSession
	// SessionStatus is a guest session's status.
	SessionStatus = model.SessionStatus
	// StartSessionRequest starts a guest session (StartSession).
	StartSessionRequest = api.StartSessionRequest
	// StopSessionRequest signals a guest session (StopSession).
	StopSessionRequest = api.StopSessionRequest

	// Image is an image as the API shows it: its record and which VMM boots it.
	Image = api.Image
	// ImageRecord is the stored part of an Image.
	ImageRecord = model.Image
	// ImportImageRequest registers an image from files on the daemon's host.
	ImportImageRequest = api.ImportImageRequest
	// BuildImageRequest builds an image from Debian packages (BuildImage).
	BuildImageRequest = api.BuildImageRequest
	PullImageRequest  = api.PullImageRequest
	SnapshotRequest   = api.SnapshotRequest
	ForkRequest       = api.ForkRequest
	Snapshot          = api.Snapshot
	// CreatePoolRequest asks for a warm pool (CreatePool).
	CreatePoolRequest = api.CreatePoolRequest
	// Pool is a warm pool and its members.
	Pool = api.Pool
	// ClaimRequest takes a VM from a pool (ClaimFromPool).
	ClaimRequest = api.ClaimRequest
	OCIImage     = api.OCIImage
	OCILayer     = api.OCILayer
	// PruneImagesRequest empties the container image caches (PruneImages).
	PruneImagesRequest = api.PruneImagesRequest
	// PruneImagesResult says what PruneImages removed and kept.
	PruneImagesResult = api.PruneImagesResult
	// CacheUsage counts cached files and their disk space.
	CacheUsage  = api.CacheUsage
	Confinement = api.Confinement

	// Event is one entry of the daemon's event log (Events, FollowEvents).
	Event = api.Event
	// VMStats are a running VM's counters (VMStats).
	VMStats = api.VMStats
	// TTLRequest changes a VM's TTL (SetTTL).
	TTLRequest = api.TTLRequest
	// VMOptions are a VM's confinement, network policy and lifetime.
	VMOptions = model.VMOptions
	// TTLAction is what happens to a VM when its TTL expires.
	TTLAction = model.TTLAction

	// DoctorReport is the daemon's host check (Doctor).
	DoctorReport = api.DoctorReport
	// DoctorCheck is one host check.
	DoctorCheck = api.DoctorCheck
	// HostObject is a kernel or filesystem object banger owns.
	HostObject = api.HostObject
	// GCResponse lists what GC removed, or would remove.
	GCResponse = api.GCResponse
	// ImageCaches is what the container image caches hold (in GCResponse).
	ImageCaches = api.ImageCaches
)

// VM states.
const (
	StateCreated  = model.StateCreated
	StateStarting = model.StateStarting
	StateRunning  = model.StateRunning
	StateStopping = model.StateStopping
	StateStopped  = model.StateStopped
	StateError    = model.StateError
	StateDeleting = model.StateDeleting
	// StateSuspended: memory and devices saved, no VMM (vm suspend).
	StateSuspended  = model.StateSuspended
	StateSuspending = model.StateSuspending
	StateResuming   = model.StateResuming
)

// TTL actions: delete (the default) or stop the VM when its TTL expires.
const (
	TTLDelete = model.TTLDelete
	TTLStop   = model.TTLStop
	// TTLSuspend suspends the VM when its TTL expires.
	TTLSuspend = model.TTLSuspend
)

// Guest session statuses.
const (
	SessionRunning = model.SessionRunning
	SessionExited  = model.SessionExited
	SessionFailed  = model.SessionFailed
	SessionLost    = model.SessionLost
)

// MaxBodyBytes is the largest request body the daemon reads, and so the most
// SendSession can send at once.
const MaxBodyBytes = api.MaxBodyBytes

// ClientVersion is the version of banger this client was built from. The
// daemon reports its own in Version and on every response (DaemonVersion).
func ClientVersion() string { return api.Version }

// ImageNameFromRef is the image name banger gives a container image
// reference when none is chosen ("docker.io/library/python:3.12-slim" gives
// "python-3-12-slim").
func ImageNameFromRef(ref string) string { return model.ImageNameFromRef(ref) }

// ValidateUser checks a guest user for ExecRequest.User and
// StartSessionRequest.User as the daemon does (a user name or a numeric
// uid), so that a caller can refuse one before making anything.
func ValidateUser(u string) error { return model.ValidateUser(u) }
