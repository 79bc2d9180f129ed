package fcdouble

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// shortDir is a temp dir with a short path: unix socket paths are limited to 108 bytes.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fcd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startDouble serves a fresh double VM on a socket in its own directory.
func startDouble(t *testing.T, cfg Config) (vm *VM, sock, dir string) {
	t.Helper()
	dir = shortDir(t)
	sock = filepath.Join(dir, "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ID == "" {
		cfg.ID = "test-vm"
	}
	vm = NewVM(cfg)
	go serveHTTP(ln, defaultMaxPayload, vm.Handle)
	t.Cleanup(func() { ln.Close() })
	return vm, sock, dir
}

type rawResponse struct {
	statusLine string
	status     int
	headers    map[string]string
	body       string
}

// readResponse parses one HTTP response by hand, so the status line is seen
// exactly as sent.
func readResponse(t *testing.T, br *bufio.Reader) rawResponse {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read status line: %v", err)
	}
	r := rawResponse{statusLine: strings.TrimSuffix(line, "\r\n"), headers: map[string]string{}}
	parts := strings.SplitN(r.statusLine, " ", 3)
	if len(parts) < 2 {
		t.Fatalf("bad status line %q", line)
	}
	r.status, _ = strconv.Atoi(parts[1])
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read header: %v", err)
		}
		h = strings.TrimSuffix(h, "\r\n")
		if h == "" {
			break
		}
		k, v, _ := strings.Cut(h, ": ")
		r.headers[k] = v
	}
	if cl, ok := r.headers["Content-Length"]; ok {
		n, _ := strconv.Atoi(cl)
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			t.Fatalf("read body: %v", err)
		}
		r.body = string(b)
	}
	return r
}

// rawCall sends raw bytes on a new connection and reads one response.
func rawCall(t *testing.T, sock, raw string) rawResponse {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	return readResponse(t, bufio.NewReader(c))
}

// call sends a well-formed request the way banger's driver does.
func call(t *testing.T, sock, method, path, body string) rawResponse {
	t.Helper()
	raw := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n", method, path)
	if body != "" {
		raw += fmt.Sprintf("Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	return rawCall(t, sock, raw+"\r\n"+body)
}

// fault returns the fault_message of a 400 answer, failing on anything else.
func faultOf(t *testing.T, r rawResponse) string {
	t.Helper()
	if r.status != 400 {
		t.Fatalf("status %d (%s), want 400", r.status, r.body)
	}
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if err := json.Unmarshal([]byte(r.body), &f); err != nil || f.FaultMessage == "" {
		t.Fatalf("400 body %q is not a fault_message", r.body)
	}
	return f.FaultMessage
}

func mustNoContent(t *testing.T, r rawResponse, what string) {
	t.Helper()
	if r.status != 204 {
		t.Fatalf("%s: status %d %s, want 204", what, r.status, r.body)
	}
}

// bootable configures a minimal bootable VM: kernel and a root drive.
func bootable(t *testing.T, sock, dir string) {
	t.Helper()
	kernel := filepath.Join(dir, "vmlinux")
	root := filepath.Join(dir, "root.img")
	for _, f := range []string{kernel, root} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustNoContent(t, call(t, sock, "PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0 reboot=k panic=1"}`), "boot-source")
	mustNoContent(t, call(t, sock, "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"`+root+`","is_root_device":true}`), "rootfs")
}

func start(t *testing.T, sock string) {
	t.Helper()
	mustNoContent(t, call(t, sock, "PUT", "/actions", `{"action_type":"InstanceStart"}`), "InstanceStart")
}
