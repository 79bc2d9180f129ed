package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/system"
)

// The socket access test proves that the daemon decides who may call it from
// the kernel's SO_PEERCRED, not from the socket file's mode: the socket is
// made world-writable and a process running as nobody is still refused.

// Environment of the re-executed client process.
const (
	saSocketEnv   = "BANGER_TEST_SA_SOCKET"   // socket to call; set only in the child
	saRequestsEnv = "BANGER_TEST_SA_REQUESTS" // JSON []saRequest
	saResultTag   = "SA-RESULT "              // prefix of the child's result line
)

type saRequest struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Body   string `json:"body,omitempty"`
}

type saResult struct {
	Status int    `json:"status"`
	Code   string `json:"code,omitempty"`
	Msg    string `json:"msg,omitempty"`
	Body   string `json:"body,omitempty"`
	Err    string `json:"err,omitempty"`
}

// saDo sends one request over the unix socket without following redirects.
func saDo(ctx context.Context, sock string, r saRequest) saResult {
	hc := &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://banger"+r.Path, strings.NewReader(r.Body))
	if err != nil {
		return saResult{Err: err.Error()}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return saResult{Err: err.Error()}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	res := saResult{Status: resp.StatusCode, Body: string(b)}
	var env api.ErrorEnvelope
	if json.Unmarshal(b, &env) == nil && env.Error != nil {
		res.Code, res.Msg = string(env.Error.Code), env.Error.Message
	}
	return res
}

// TestSocketAccessClientProcess is not a test of its own: TestSocketAccess
// re-executes the test binary as another user to run it.
func TestSocketAccessClientProcess(t *testing.T) {
	sock := os.Getenv(saSocketEnv)
	if sock == "" {
		t.Skip("helper process of TestSocketAccess; runs only when re-executed by it")
	}
	var reqs []saRequest
	if err := json.Unmarshal([]byte(os.Getenv(saRequestsEnv)), &reqs); err != nil {
		t.Fatalf("bad %s: %v", saRequestsEnv, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var results []saResult
	for _, r := range reqs {
		results = append(results, saDo(ctx, sock, r))
	}
	b, _ := json.Marshal(results)
	os.Stdout.Write(append([]byte("\n"+saResultTag), append(b, '\n')...))
}

func saRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as another uid (setuid) to test SO_PEERCRED checks")
	}
}

// saClientBinary copies the test binary where any user can execute it (go
// test's build directory is private to its owner).
func saClientBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "banger-sa-bin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "daemon.test")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// saDaemon serves a real daemon (default dependencies, no network) in this
// process, with its socket in a directory every user can traverse.
func saDaemon(t *testing.T, group string) (sock string) {
	t.Helper()
	state, err := os.MkdirTemp("", "banger-sa-state")
	if err != nil {
		t.Fatal(err)
	}
	run, err := os.MkdirTemp("/tmp", "bsa") // short: unix socket paths max 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.StateDir, cfg.RunDir = state, run
	cfg.Network = "off"
	cfg.RootDiskMethod = "copy"
	cfg.Group = group
	cfg.Finish()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, cfg, Deps{}, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := d.Listen(); err != nil {
		cancel()
		d.Close()
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- d.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("serve: %v", err)
		}
		d.Close()
		os.RemoveAll(state)
		os.RemoveAll(run)
	})
	if err := os.Chmod(run, 0o755); err != nil {
		t.Fatal(err)
	}
	return cfg.Socket
}

// saRunAs runs the client process as uid:gid (plus groups) against sock.
func saRunAs(t *testing.T, bin, sock string, uid, gid uint32, groups []uint32, reqs []saRequest) []saResult {
	t.Helper()
	rb, _ := json.Marshal(reqs)
	env := []string{"PATH=/usr/bin:/bin", saSocketEnv + "=" + sock, saRequestsEnv + "=" + string(rb)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := system.RunAs(ctx, system.RunAsSpec{
		UID: uid, GID: gid, Groups: groups, Env: env,
		Argv: []string{bin, "-test.run=^TestSocketAccessClientProcess$", "-test.count=1"},
	})
	if err != nil {
		t.Fatalf("client as %d:%d: %v\n%s", uid, gid, err, out)
	}
	_, line, ok := strings.Cut(string(out), "\n"+saResultTag)
	if !ok {
		t.Fatalf("client as %d:%d printed no result:\n%s", uid, gid, out)
	}
	line, _, _ = strings.Cut(line, "\n")
	var res []saResult
	if err := json.Unmarshal([]byte(line), &res); err != nil || len(res) != len(reqs) {
		t.Fatalf("client result %q: %v (want %d results)", line, err, len(reqs))
	}
	return res
}

func saSocketMode(t *testing.T, sock string) (os.FileMode, uint32, uint32) {
	t.Helper()
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return st.Mode().Perm(), sys.Uid, sys.Gid
}

const nobody = 65534

var saHostileRequests = []saRequest{
	{Method: "GET", Path: "/v1/version"},
	{Method: "GET", Path: "/v1/vms"},
	{Method: "POST", Path: "/v1/vms", Body: `{"name":"intruder"}`},
	{Method: "POST", Path: "/v1/daemon/shutdown"},
	{Method: "GET", Path: "/no/such/route"},
}

func TestSocketAccessRefusesOtherUsers(t *testing.T) {
	saRequireRoot(t)
	bin := saClientBinary(t)
	sock := saDaemon(t, "banger-test-nonexistent")

	// Without the group, the daemon makes its socket owner-only...
	if mode, uid, _ := saSocketMode(t, sock); mode != 0o600 || uid != 0 {
		t.Errorf("socket mode %v owner %d, want 0600 owned by root when the group does not exist", mode, uid)
	}
	// ...and the file mode is not what protects it: open it to everyone.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}

	results := saRunAs(t, bin, sock, nobody, nobody, nil, saHostileRequests)
	for i, res := range results {
		r := saHostileRequests[i]
		if res.Err != "" {
			t.Errorf("%s %s as nobody: transport error %s (the socket is 0666: the connection must succeed and be refused by the daemon)", r.Method, r.Path, res.Err)
			continue
		}
		if res.Status != http.StatusForbidden || res.Code != "permission_denied" {
			t.Errorf("%s %s as nobody: status %d code %q body %s, want 403 permission_denied", r.Method, r.Path, res.Status, res.Code, res.Body)
		}
		if !strings.Contains(res.Msg, "uid 65534") || !strings.Contains(res.Msg, "banger-test-nonexistent") {
			t.Errorf("%s %s as nobody: message %q should name the uid and the group", r.Method, r.Path, res.Msg)
		}
	}

	// Root is served, and nobody's requests changed nothing.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res := saDo(ctx, sock, saRequest{Method: "GET", Path: "/v1/version"})
	var v api.VersionResponse
	if res.Status != http.StatusOK || json.Unmarshal([]byte(res.Body), &v) != nil || v.PID != os.Getpid() {
		t.Fatalf("GET /v1/version as root: status %d body %s err %s, want 200 with this process's pid", res.Status, res.Body, res.Err)
	}
	res = saDo(ctx, sock, saRequest{Method: "GET", Path: "/v1/vms"})
	if res.Status != http.StatusOK || strings.TrimSpace(res.Body) != "[]" {
		t.Errorf("GET /v1/vms as root after refused requests: status %d body %s, want 200 []", res.Status, res.Body)
	}
}

func TestSocketAccessGroupMembers(t *testing.T) {
	saRequireRoot(t)
	g, err := user.LookupGroupId(strconv.Itoa(nobody))
	if err != nil {
		t.Skipf("no group with gid %d to act as the banger group: %v", nobody, err)
	}
	bin := saClientBinary(t)
	sock := saDaemon(t, g.Name)
	if mode, uid, gid := saSocketMode(t, sock); mode != 0o660 || uid != 0 || gid != nobody {
		t.Errorf("socket mode %v owner %d:%d, want 0660 root:%d when the group exists", mode, uid, gid, nobody)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	version := []saRequest{{Method: "GET", Path: "/v1/version"}}
	for _, c := range []struct {
		name   string
		gid    uint32
		groups []uint32
		want   int
	}{
		{"primary group", nobody, nil, http.StatusOK},
		{"supplementary group", 4242, []uint32{4343, nobody}, http.StatusOK},
		{"other groups only", 4242, []uint32{4343}, http.StatusForbidden},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := saRunAs(t, bin, sock, 4141, c.gid, c.groups, version)[0]
			if res.Status != c.want {
				t.Errorf("uid 4141 gid %d groups %v: status %d (%s %s), want %d", c.gid, c.groups, res.Status, res.Err, bytes.TrimSpace([]byte(res.Body)), c.want)
			}
			if c.want == http.StatusForbidden && res.Code != "permission_denied" {
				t.Errorf("refusal code %q, want permission_denied", res.Code)
			}
		})
	}
}
