package api

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// FrameType tags one frame of an exec stream. After RouteVMExec answers 101
// Switching Protocols, both sides exchange frames on the raw connection:
// a 1-byte type, a 4-byte big-endian length, then the payload.
type FrameType byte

// Frame types.
const (
	FrameStdin    FrameType = 0 // client -> daemon: bytes for the command's stdin
	FrameStdout   FrameType = 1 // daemon -> client
	FrameStderr   FrameType = 2 // daemon -> client
	FrameExit     FrameType = 3 // daemon -> client: 4-byte exit code; last frame
	FrameError    FrameType = 4 // daemon -> client: JSON Error; last frame
	FrameStdinEOF FrameType = 5 // client -> daemon: stdin closed
	FrameSignal   FrameType = 6 // client -> daemon: signal name ("INT", "TERM")
	FrameResize   FrameType = 7 // client -> daemon: cols, rows as 2 x uint16
)

// MaxFrame bounds a frame's payload.
const MaxFrame = 1 << 20

// UpgradeProtocol names the protocol in the Upgrade header.
const UpgradeProtocol = "banger-exec/1"

// FrameWriter writes frames; it is safe for concurrent use.
type FrameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// NewFrameWriter returns a FrameWriter on w.
func NewFrameWriter(w io.Writer) *FrameWriter { return &FrameWriter{w: w} }

// WriteFrame writes one frame.
func (fw *FrameWriter) WriteFrame(t FrameType, payload []byte) error {
	if len(payload) > MaxFrame {
		return fmt.Errorf("frame too large: %d bytes", len(payload))
	}
	var hdr [5]byte
	hdr[0] = byte(t)
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if _, err := fw.w.Write(hdr[:]); err != nil {
		return err
	}
	if len(payload) > 0 {
		if _, err := fw.w.Write(payload); err != nil {
			return err
		}
	}
	return nil
}

// StreamWriter returns an io.Writer that sends each Write as a frame of type t.
func (fw *FrameWriter) StreamWriter(t FrameType) io.Writer { return frameStream{fw, t} }

type frameStream struct {
	fw *FrameWriter
	t  FrameType
}

func (s frameStream) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += MaxFrame {
		end := min(off+MaxFrame, len(p))
		if err := s.fw.WriteFrame(s.t, p[off:end]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// ExitPayload encodes an exit code.
func ExitPayload(code int) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(int32(code)))
	return b[:]
}

// ResizePayload encodes a terminal size.
func ResizePayload(cols, rows int) []byte {
	var b [4]byte
	binary.BigEndian.PutUint16(b[:2], uint16(cols))
	binary.BigEndian.PutUint16(b[2:], uint16(rows))
	return b[:]
}

// ParseResize decodes a FrameResize payload.
func ParseResize(p []byte) (cols, rows int, err error) {
	if len(p) != 4 {
		return 0, 0, errors.New("bad resize frame")
	}
	return int(binary.BigEndian.Uint16(p[:2])), int(binary.BigEndian.Uint16(p[2:])), nil
}

// ParseExit decodes a FrameExit payload.
func ParseExit(p []byte) (int, error) {
	if len(p) != 4 {
		return 0, errors.New("bad exit frame")
	}
	return int(int32(binary.BigEndian.Uint32(p))), nil
}

// ReadFrame reads one frame from r.
func ReadFrame(r io.Reader) (FrameType, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("frame too large: %d bytes", n)
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	return FrameType(hdr[0]), p, nil
}
