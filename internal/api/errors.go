package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Code classifies an error on the wire.
type Code string

// Error codes of the JSON error envelope.
const (
	CodeNotFound        Code = "not_found"
	CodeAlreadyExists   Code = "already_exists"
	CodeInvalidArgument Code = "invalid_argument"
	CodeConflict        Code = "conflict"
	CodeInternal        Code = "internal"
	CodeUnavailable     Code = "unavailable"
	// CodeNoSpace: the daemon's state disk is full; what could be recorded
	// was, and the request can be retried once space is freed.
	CodeNoSpace Code = "no_space"
	// CodePermissionDenied: the caller is not root, the daemon's user or a
	// member of the socket's group.
	CodePermissionDenied Code = "permission_denied"
)

// Error is an error with a wire code. The daemon returns these; the client
// turns error envelopes back into them.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// ErrorEnvelope is the body of every error response.
type ErrorEnvelope struct {
	Error *Error `json:"error"`
}

// Errorf makes an *Error with code.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// HTTPStatus maps an error code to its HTTP status. It is the only place
// that does.
func HTTPStatus(c Code) int {
	switch c {
	case CodeNotFound:
		return http.StatusNotFound
	case CodeAlreadyExists, CodeConflict:
		return http.StatusConflict
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeNoSpace:
		return http.StatusInsufficientStorage
	case CodePermissionDenied:
		return http.StatusForbidden
	default:
		return http.StatusInternalServerError
	}
}

// CodeOf returns the wire code of err (CodeInternal when it has none).
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsNotFound reports whether err carries CodeNotFound.
func IsNotFound(err error) bool { return CodeOf(err) == CodeNotFound }

// IsAlreadyExists reports whether err carries CodeAlreadyExists.
func IsAlreadyExists(err error) bool { return CodeOf(err) == CodeAlreadyExists }

// IsInvalidArgument reports whether err carries CodeInvalidArgument.
func IsInvalidArgument(err error) bool { return CodeOf(err) == CodeInvalidArgument }

// IsUnavailable reports whether err carries CodeUnavailable.
func IsUnavailable(err error) bool { return CodeOf(err) == CodeUnavailable }

// IsConflict reports whether err carries CodeConflict.
func IsConflict(err error) bool { return CodeOf(err) == CodeConflict }
