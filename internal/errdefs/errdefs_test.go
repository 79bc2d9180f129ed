package errdefs

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
)

func TestKindsSurviveWrapping(t *testing.T) {
	base := NotFound("vm %q", "web")
	wrapped := fmt.Errorf("starting: %w", fmt.Errorf("loading: %w", base))
	if !errors.Is(wrapped, ErrNotFound) {
		t.Fatalf("kind lost through wrapping: %v", wrapped)
	}
	if errors.Is(wrapped, ErrConflict) {
		t.Fatalf("wrong kind matched")
	}
	if got := wrapped.Error(); got != `starting: loading: vm "web"` {
		t.Fatalf("message = %q: the kind must not repeat itself", got)
	}
	if Kind(wrapped) != ErrNotFound {
		t.Fatalf("Kind = %v", Kind(wrapped))
	}
}

func TestNewKeepsCause(t *testing.T) {
	err := Conflict("removing: %w", fs.ErrPermission)
	if !errors.Is(err, fs.ErrPermission) || !errors.Is(err, ErrConflict) {
		t.Fatalf("cause or kind lost: %v", err)
	}
	if Kind(errors.New("plain")) != nil {
		t.Fatal("a plain error has no kind")
	}
}
