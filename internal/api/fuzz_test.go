package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"testing"
)

// requestTypes makes a fresh zero value of every request body type.
var requestTypes = []func() any{
	func() any { return new(CreateVMRequest) },
	func() any { return new(StopRequest) },
	func() any { return new(DeleteRequest) },
	func() any { return new(WaitSSHRequest) },
	func() any { return new(ExecRequest) },
	func() any { return new(ImportImageRequest) },
	func() any { return new(BuildImageRequest) },
	func() any { return new(StartSessionRequest) },
	func() any { return new(StopSessionRequest) },
	func() any { return new(PortRequest) },
}

// FuzzDecodeJSON decodes each input into every request type and checks
// that DecodeJSON never panics, refuses only with invalid_argument (or the
// body cap), and that what it accepts is a single object that the lenient
// encoding/json reads to the same value, and that re-encodes and decodes
// back to the same JSON. Seeds live in testdata/fuzz/FuzzDecodeJSON; plain
// `go test` runs them.
func FuzzDecodeJSON(f *testing.F) {
	for _, v := range []any{
		CreateVMRequest{Name: "web", Image: "debian", VMM: "qemu", VCPUs: 2, MemoryMiB: 1024, DiskSizeBytes: 8 << 30, WorkDiskBytes: 1 << 30, Ports: []string{"8080:80"}},
		ExecRequest{Argv: []string{"sh", "-c", "echo hi"}, TTY: true, Term: "xterm", Cols: 80, Rows: 24, Stdin: true},
		StartSessionRequest{Name: "s", Argv: []string{"sleep", "1"}, Cwd: "/root", Env: []string{"A=b"}, Stdin: true},
		ImportImageRequest{Name: "i", Kernel: "/k", Initrd: "/i", Rootfs: "/r", BootArgs: "console=ttyS0", VMLinux: "/v"},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, newReq := range requestTypes {
			v := newReq()
			err := DecodeJSON(bytes.NewReader(body), v, false)
			if err != nil {
				var mbe *http.MaxBytesError
				if !IsInvalidArgument(err) && !(len(body) > MaxBodyBytes && errors.As(err, &mbe)) {
					t.Fatalf("DecodeJSON(%q into %T) = %v, want invalid_argument", body, v, err)
				}
				continue
			}
			trimmed := bytes.TrimSpace(body)
			if len(trimmed) < 2 || trimmed[0] != '{' || trimmed[len(trimmed)-1] != '}' {
				t.Fatalf("DecodeJSON accepted %q into %T: not a single object", body, v)
			}
			lenient := newReq()
			if err := json.Unmarshal(body, lenient); err != nil || !reflect.DeepEqual(v, lenient) {
				t.Fatalf("DecodeJSON(%q into %T) = %+v, but json.Unmarshal gives %+v, %v", body, v, v, lenient, err)
			}
			b1, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("re-encoding %+v: %v", v, err)
			}
			v2 := newReq()
			if err := DecodeJSON(bytes.NewReader(b1), v2, false); err != nil {
				t.Fatalf("DecodeJSON refuses its own re-encoding %s of %T: %v", b1, v, err)
			}
			// Compare encodings, not values: omitempty turns [] into nil.
			if b2, _ := json.Marshal(v2); !bytes.Equal(b1, b2) {
				t.Fatalf("%T round trip: %s became %s", v, b1, b2)
			}
		}
	})
}
