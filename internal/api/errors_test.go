package api

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestHTTPStatusMapping(t *testing.T) {
	cases := map[Code]int{
		CodeNotFound: http.StatusNotFound, CodeAlreadyExists: http.StatusConflict, CodeConflict: http.StatusConflict,
		CodeInvalidArgument: http.StatusBadRequest, CodeInternal: http.StatusInternalServerError,
		CodeUnavailable: http.StatusServiceUnavailable, "something-else": http.StatusInternalServerError,
	}
	for c, want := range cases {
		if got := HTTPStatus(c); got != want {
			t.Errorf("HTTPStatus(%s) = %d, want %d", c, got, want)
		}
	}
}

func TestTypedErrorsThroughWrapping(t *testing.T) {
	err := fmt.Errorf("deleting: %w", Errorf(CodeNotFound, "vm %q not found", "x"))
	if !IsNotFound(err) || IsConflict(err) || CodeOf(err) != CodeNotFound {
		t.Fatalf("wrapped not_found misclassified: %v", CodeOf(err))
	}
	if CodeOf(errors.New("plain")) != CodeInternal {
		t.Fatal("plain error is not internal")
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytesBuffer
	fw := NewFrameWriter(&buf)
	big := make([]byte, MaxFrame+10)
	fw.StreamWriter(FrameStdout).Write(big)
	fw.WriteFrame(FrameExit, ExitPayload(-3))
	fw.WriteFrame(FrameResize, ResizePayload(120, 40))
	total := 0
	for range 2 {
		ft, p, err := ReadFrame(&buf)
		if err != nil || ft != FrameStdout {
			t.Fatalf("frame %v %v", ft, err)
		}
		total += len(p)
	}
	if total != len(big) {
		t.Fatalf("split frames carried %d bytes, want %d", total, len(big))
	}
	ft, p, _ := ReadFrame(&buf)
	if code, _ := ParseExit(p); ft != FrameExit || code != -3 {
		t.Fatalf("exit frame %v %d", ft, code)
	}
	_, p, _ = ReadFrame(&buf)
	if c, r, _ := ParseResize(p); c != 120 || r != 40 {
		t.Fatalf("resize %d %d", c, r)
	}
	if _, _, err := ReadFrame(&buf); err == nil {
		t.Fatal("read past the end")
	}
}

type bytesBuffer struct {
	b []byte
	r int
}

func (b *bytesBuffer) Write(p []byte) (int, error) { b.b = append(b.b, p...); return len(p), nil }
func (b *bytesBuffer) Read(p []byte) (int, error) {
	if b.r >= len(b.b) {
		return 0, errors.New("EOF")
	}
	n := copy(p, b.b[b.r:])
	b.r += n
	return n, nil
}
