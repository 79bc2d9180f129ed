// Package errdefs holds the few kinds of error banger's packages return, so
// that a caller anywhere up the stack asks errors.Is(err, errdefs.ErrNotFound)
// instead of reading messages, and exactly one place (the local API) maps a
// kind to a wire code and an HTTP status. It imports only the standard
// library.
package errdefs

import (
	"errors"
	"fmt"
)

// The kinds. Each is a sentinel: wrap it (with %w or New) and test it with
// errors.Is.
var (
	ErrNotFound        = errors.New("not found")
	ErrAlreadyExists   = errors.New("already exists")
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrConflict: the request is well formed but the object's state does
	// not allow it now (image in use, VM not running, being deleted).
	ErrConflict = errors.New("conflict")
	// ErrUnavailable: something the request needs does not answer now (a
	// guest's SSH, a VMM that stopped while waited for).
	ErrUnavailable = errors.New("unavailable")
	// ErrNoSpace: the state disk is full; the operation recorded what it
	// could and can be retried once space is freed.
	ErrNoSpace = errors.New("no space left on the state disk")
)

// kindError is an error of a kind with its own message. Its message is the
// formatted text only: the kind classifies, it does not repeat itself.
type kindError struct {
	kind error
	err  error
}

func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }

// New returns an error of kind with a formatted message; %w verbs in format
// wrap as with fmt.Errorf, so both the kind and any wrapped cause are seen
// by errors.Is and errors.As.
func New(kind error, format string, args ...any) error {
	return &kindError{kind: kind, err: fmt.Errorf(format, args...)}
}

// NotFound, AlreadyExists, Invalid, Conflict and Unavailable are New with
// their kind.
func NotFound(format string, args ...any) error { return New(ErrNotFound, format, args...) }

// AlreadyExists is New(ErrAlreadyExists, ...).
func AlreadyExists(format string, args ...any) error { return New(ErrAlreadyExists, format, args...) }

// Invalid is New(ErrInvalidArgument, ...).
func Invalid(format string, args ...any) error { return New(ErrInvalidArgument, format, args...) }

// Conflict is New(ErrConflict, ...).
func Conflict(format string, args ...any) error { return New(ErrConflict, format, args...) }

// Unavailable is New(ErrUnavailable, ...).
func Unavailable(format string, args ...any) error { return New(ErrUnavailable, format, args...) }

// Kind returns the first kind err carries, or nil.
func Kind(err error) error {
	for _, k := range []error{ErrNotFound, ErrAlreadyExists, ErrInvalidArgument, ErrConflict, ErrUnavailable, ErrNoSpace} {
		if errors.Is(err, k) {
			return k
		}
	}
	return nil
}
