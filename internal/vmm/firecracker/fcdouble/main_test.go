package fcdouble

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMainArgumentErrors(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	cases := map[string][]string{
		"flag=value":          {"--api-sock=" + sock},
		"unknown flag":        {"--api-sock", sock, "--frobnicate"},
		"duplicate flag":      {"--api-sock", sock, "--id", "a", "--id", "b"},
		"missing value":       {"--api-sock"},
		"no-api alone":        {"--no-api"},
		"seccomp both ways":   {"--seccomp-filter", "/f", "--no-seccomp"},
		"positional argument": {"extra"},
	}
	for name, args := range cases {
		var stderr bytes.Buffer
		if code := Main(context.Background(), args, &bytes.Buffer{}, &stderr); code != exitArgParsing {
			t.Errorf("%s: exit %d, want %d", name, code, exitArgParsing)
		}
		if !strings.HasPrefix(stderr.String(), "Arguments parsing error: ") {
			t.Errorf("%s: stderr %q", name, stderr.String())
		}
	}
	if code := Main(context.Background(), []string{"--api-sock", sock, "--level", "loud"}, &bytes.Buffer{}, &bytes.Buffer{}); code != exitBadLevel {
		t.Errorf("bad --level: exit %d", code)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("an argument error still created the API socket")
	}
}

func TestMainVersion(t *testing.T) {
	var out bytes.Buffer
	if code := Main(context.Background(), []string{"--version"}, &out, &bytes.Buffer{}); code != 0 || out.String() != "Firecracker v1.16.1\n" {
		t.Fatalf("--version: exit %d, output %q", code, out.String())
	}
}

func TestMainRefusesExistingSocketAndKeepsIt(t *testing.T) {
	sock := filepath.Join(shortDir(t), "api.sock")
	os.WriteFile(sock, nil, 0o644)
	var out bytes.Buffer
	if code := Main(context.Background(), []string{"--api-sock", sock}, &out, &bytes.Buffer{}); code != exitGeneric {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(out.String(), "Failed to open the API socket at: "+sock+". Check that it is not already used.") {
		t.Fatalf("log %q", out.String())
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatal("the existing path was removed")
	}
}

func TestMainServesAPIAndExitsZeroOnCtrlAltDel(t *testing.T) {
	t.Setenv(EnvCADDelay, "1ms")
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	out := &lockedWriter{w: &bytes.Buffer{}}
	done := make(chan int, 1)
	go func() { done <- Main(context.Background(), []string{"--api-sock", sock, "--id", "vm1"}, out, out) }()
	waitSocket(t, sock)
	if r := call(t, sock, "GET", "/", ""); !strings.Contains(r.body, `"id":"vm1"`) {
		t.Fatalf("GET /: %s", r.body)
	}
	bootable(t, sock, dir)
	start(t, sock)
	mustNoContent(t, call(t, sock, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`), "ctrl-alt-del")
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after Ctrl-Alt-Del", code)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("API socket unlinked at exit: %v", err)
	}
}

func TestMainBootsConfigFileWithoutAPI(t *testing.T) {
	dir := shortDir(t)
	kernel, root := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "root.img")
	os.WriteFile(kernel, nil, 0o644)
	os.WriteFile(root, nil, 0o644)
	cfg := filepath.Join(dir, "vm.json")
	os.WriteFile(cfg, []byte(`{
	  "boot-source": {"kernel_image_path": "`+kernel+`", "boot_args": "console=ttyS0 from-config"},
	  "drives": [{"drive_id": "rootfs", "path_on_host": "`+root+`", "is_root_device": true, "is_read_only": false}],
	  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
	}`), 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stands for SIGHUP: Main returns once booted
	var out bytes.Buffer
	if code := Main(ctx, []string{"--no-api", "--config-file", cfg}, &out, &out); code != exitSIGHUP {
		t.Fatalf("exit %d, want %d; output:\n%s", code, exitSIGHUP, out.String())
	}
	if !strings.Contains(out.String(), "from-config") || !strings.Contains(out.String(), "fc-double: guest running") {
		t.Fatalf("config file did not boot:\n%s", out.String())
	}
	os.WriteFile(cfg, []byte(`{"boot-source": {"kernel_image_path": "`+dir+`/none"}, "drives": []}`), 0o644)
	if code := Main(context.Background(), []string{"--no-api", "--config-file", cfg}, &out, &out); code != exitGeneric {
		t.Fatalf("bad config file: exit %d, want 1", code)
	}
}

// waitSocket polls until the API socket of a Main running in a goroutine accepts.
func waitSocket(t *testing.T, sock string) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			return
		}
		if i == 1000 {
			t.Fatalf("API socket never came up: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
