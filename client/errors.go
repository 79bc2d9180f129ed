package client

import (
	"errors"

	"github.com/banger-dev/banger/internal/api"
)

// Error is an error the daemon answered with: a code and a message. Use the
// Is* functions rather than comparing codes.
type Error = api.Error

// ErrorCode classifies an Error.
type ErrorCode = api.Code

// Error codes of the daemon's error envelope.
const (
	CodeNotFound        = api.CodeNotFound
	CodeAlreadyExists   = api.CodeAlreadyExists
	CodeInvalidArgument = api.CodeInvalidArgument
	CodeConflict        = api.CodeConflict
	CodeInternal        = api.CodeInternal
	CodeUnavailable     = api.CodeUnavailable
	// CodeNoSpace: the daemon's state disk is full (HTTP 507); what could be
	// recorded was, and the request can be retried once space is freed.
	CodeNoSpace = api.CodeNoSpace
	// CodePermissionDenied answers a caller that is neither root, the
	// daemon's user nor a member of its group (HTTP 403).
	CodePermissionDenied = api.CodePermissionDenied
)

// ErrDaemonUnreachable wraps every failure to reach the daemon's socket at
// all (no daemon, wrong path, no permission on the socket file), as opposed
// to an error the daemon answered with.
var ErrDaemonUnreachable = errors.New("daemon unreachable")

// CodeOf returns the code of the daemon error in err's chain, or
// CodeInternal when there is none.
func CodeOf(err error) ErrorCode { return api.CodeOf(err) }

// IsNotFound reports whether the daemon answered that the object does not exist.
func IsNotFound(err error) bool { return CodeOf(err) == CodeNotFound }

// IsAlreadyExists reports whether the daemon refused to make an object whose name is taken.
func IsAlreadyExists(err error) bool { return CodeOf(err) == CodeAlreadyExists }

// IsConflict reports whether the request does not fit the object's current
// state (a VM not running, an image in use, a port taken).
func IsConflict(err error) bool { return CodeOf(err) == CodeConflict }

// IsInvalidArgument reports whether the daemon refused the request itself
// (a bad name, size, body or query parameter).
func IsInvalidArgument(err error) bool { return CodeOf(err) == CodeInvalidArgument }

// IsUnavailable reports whether something the daemon waited on did not
// answer in time (a guest's SSH); retrying later may work.
func IsUnavailable(err error) bool { return CodeOf(err) == CodeUnavailable }

// IsPermissionDenied reports whether the daemon refused the caller.
func IsPermissionDenied(err error) bool { return CodeOf(err) == CodePermissionDenied }
