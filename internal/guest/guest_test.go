package guest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/guest/guesttest"
	"github.com/banger-dev/banger/internal/system"
	"golang.org/x/sys/unix"
)

// testCtx bounds a test that waits for events, so a bug hangs no longer than this.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type testGuest struct {
	srv    *guesttest.Server
	c      *Client
	key    ssh.Signer
	pinned string
}

// shellEnv chooses what runs the guest's shell commands: the host's /bin/sh
// and tools, or busybox alone on PATH, as in the guest image.
type shellEnv struct {
	name  string
	env   []string
	shell []string
}

func hostShell() shellEnv { return shellEnv{name: "hostsh"} }

// busyboxShell puts only busybox applets on PATH, so scripts meet the
// guest's ash and tools. It skips when busybox is not installed.
func busyboxShell(t *testing.T) shellEnv {
	bb, err := system.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed: cannot test scripts against ash")
	}
	dir := t.TempDir()
	for _, applet := range []string{"sh", "setsid", "mkfifo", "cat", "kill", "mv", "rm", "mkdir",
		"printf", "echo", "head", "tail", "sleep", "stty", "pwd", "test", "[", "true", "false", "env"} {
		if err := os.Symlink(bb, filepath.Join(dir, applet)); err != nil {
			t.Fatal(err)
		}
	}
	return shellEnv{
		name:  "busybox",
		env:   []string{"PATH=" + dir, "HOME=/"},
		shell: []string{filepath.Join(dir, "sh"), "-c"},
	}
}

func newGuest(t *testing.T, se shellEnv) *testGuest {
	t.Helper()
	key := guesttest.NewSigner(t)
	srv := guesttest.Start(t, guesttest.Options{ClientKey: key.PublicKey(), Env: se.env, Shell: se.shell})
	g := &testGuest{srv: srv, key: key, pinned: filepath.Join(t.TempDir(), "known_hosts")}
	g.c = g.dial(t)
	return g
}

func (g *testGuest) dial(t *testing.T) *Client {
	t.Helper()
	c, err := Dial(testCtx(t), Config{Addr: g.srv.Addr, Signer: g.key, KnownHostsFile: g.pinned})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SessionsRoot = filepath.Join(g.srv.Dir, "sessions")
	return c
}

func TestRunArgvRoundTrip(t *testing.T) {
	args := []string{
		"plain", "", " ", "a b  c", "it's", "''", `"double"`, `$HOME`, "${HOME}", "`id`", "$(echo hi)",
		"a\nb", "\n", "tab\there", "ünïcödé ✓ 日本", "-n", "-e", "--", "*", "?", "[a]", "~", "{a,b}",
		`back\slash`, `\`, `\\n`, ";", "&&", "|", ">x", "<y", "!", "#comment", "%s", "a=b", "\x01\x7f\xff",
	}
	for _, se := range []shellEnv{hostShell(), busyboxShell(t)} {
		t.Run(se.name, func(t *testing.T) {
			g := newGuest(t, se)
			var out, errOut bytes.Buffer
			code, err := g.c.Run(testCtx(t), append([]string{"printf", `%s\0`}, args...), nil, &out, &errOut)
			if err != nil || code != 0 {
				t.Fatalf("run: code %d, err %v, stderr %q", code, err, errOut.String())
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\x00"), "\x00")
			if len(got) != len(args) {
				t.Fatalf("got %d args %q, want %d", len(got), got, len(args))
			}
			for i := range args {
				if got[i] != args[i] {
					t.Errorf("arg %d: got %q, want %q", i, got[i], args[i])
				}
			}
			if _, err := g.c.Run(testCtx(t), []string{"echo", "a\x00b"}, nil, nil, nil); err == nil {
				t.Error("argv with a NUL byte: want an error")
			}
		})
	}
}

func TestRunStreamsAndExitCodes(t *testing.T) {
	g := newGuest(t, hostShell())
	ctx := testCtx(t)
	var out, errOut bytes.Buffer
	code, err := g.c.RunScript(ctx, "echo to-out; echo to-err >&2; echo more-out", nil, &out, &errOut)
	if err != nil || code != 0 {
		t.Fatalf("code %d err %v", code, err)
	}
	if out.String() != "to-out\nmore-out\n" || errOut.String() != "to-err\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
	}
	for _, tc := range []struct {
		script string
		want   int
	}{{"exit 0", 0}, {"exit 1", 1}, {"exit 42", 42}, {"kill -KILL $$", 137}, {"kill -TERM $$", 143}} {
		code, err := g.c.Run(ctx, []string{"sh", "-c", tc.script}, nil, nil, nil)
		if err != nil || code != tc.want {
			t.Errorf("%q: code %d err %v, want %d", tc.script, code, err, tc.want)
		}
	}
	out.Reset()
	code, err = g.c.Run(ctx, []string{"cat"}, strings.NewReader("from stdin"), &out, nil)
	if err != nil || code != 0 || out.String() != "from stdin" {
		t.Errorf("cat: code %d err %v out %q", code, err, out.String())
	}
}

func TestOutput(t *testing.T) {
	g := newGuest(t, hostShell())
	out, err := g.c.Output(testCtx(t), "echo hello")
	if err != nil || string(out) != "hello\n" {
		t.Fatalf("out %q err %v", out, err)
	}
	_, err = g.c.Output(testCtx(t), "echo oops >&2; exit 3")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || !strings.Contains(ee.Stderr, "oops") || !strings.Contains(err.Error(), "oops") {
		t.Fatalf("err %v, want ExitError code 3 with stderr", err)
	}
}

// notifyWriter is a goroutine-safe buffer that calls on with its content
// after each write.
type notifyWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
	on  func(string)
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	s := w.buf.String()
	w.mu.Unlock()
	if w.on != nil {
		w.on(s)
	}
	return len(p), nil
}

func (w *notifyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func TestRunCancelSendsSIGINT(t *testing.T) {
	g := newGuest(t, hostShell())
	ctx, cancel := context.WithCancel(testCtx(t))
	var once sync.Once
	out := &notifyWriter{on: func(s string) {
		if strings.Contains(s, "started") {
			once.Do(cancel)
		}
	}}
	code, err := g.c.Run(ctx, []string{"sh", "-c", "echo started; exec sleep 1000"}, nil, out, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if code != 130 {
		t.Errorf("code %d, want 130 (SIGINT)", code)
	}
}

func TestRunCancelClosesAfterGrace(t *testing.T) {
	g := newGuest(t, hostShell())
	g.c.cancelGrace = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(testCtx(t))
	var once sync.Once
	out := &notifyWriter{on: func(s string) {
		if strings.Contains(s, "started") {
			once.Do(cancel)
		}
	}}
	_, err := g.c.Run(ctx, []string{"sh", "-c", "trap '' INT; echo started; sleep 1000"}, nil, out, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
}

func TestUploadFile(t *testing.T) {
	g := newGuest(t, hostShell())
	data := make([]byte, 1<<20)
	rand.Read(data)
	dst := filepath.Join(g.srv.Dir, "up.bin")
	if err := os.WriteFile(dst, []byte("old content"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := g.c.UploadFile(testCtx(t), dst, 0o751, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("uploaded %d bytes differ from the %d sent", len(got), len(data))
	}
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o751 {
		t.Errorf("mode %v, want 0751", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(g.srv.Dir)
	if len(ents) != 1 {
		t.Errorf("guest dir holds %d entries, want only the file (no temp left)", len(ents))
	}
}

func TestUploadFallsBackToSFTPServerBinary(t *testing.T) {
	key := guesttest.NewSigner(t)
	srv := guesttest.Start(t, guesttest.Options{ClientKey: key.PublicKey(), NoSFTPSubsystem: true})
	c, err := Dial(testCtx(t), Config{Addr: srv.Addr, Signer: key, KnownHostsFile: filepath.Join(t.TempDir(), "kh")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SFTPServer = "/nonexistent/sftp-server"
	err = c.UploadFile(testCtx(t), filepath.Join(srv.Dir, "f"), 0o644, strings.NewReader("x"))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/sftp-server") {
		t.Fatalf("err %v, want a failure naming the sftp-server path", err)
	}
	for _, p := range []string{"/usr/lib/openssh/sftp-server", "/usr/lib/sftp-server", "/usr/libexec/sftp-server"} {
		if _, err := os.Stat(p); err == nil {
			c.SFTPServer = p
			if err := c.UploadFile(testCtx(t), filepath.Join(srv.Dir, "f"), 0o644, strings.NewReader("x")); err != nil {
				t.Fatalf("upload through %s: %v", p, err)
			}
			if b, _ := os.ReadFile(filepath.Join(srv.Dir, "f")); string(b) != "x" {
				t.Fatalf("uploaded %q", b)
			}
			return
		}
	}
	t.Log("no sftp-server binary on this host: fallback success path not exercised")
}

// treeString renders a tree as sorted lines of path, mode and content or link target.
func treeString(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			b.WriteString(rel + " link " + l + "\n")
		case fi.IsDir():
			b.WriteString(rel + " dir " + fi.Mode().Perm().String() + "\n")
		default:
			data, _ := os.ReadFile(p)
			b.WriteString(rel + " file " + fi.Mode().String() + " " + string(data) + "\n")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func makeTree(t *testing.T, root string) {
	t.Helper()
	files := []struct {
		path string
		mode fs.FileMode
		data string
	}{
		{"x", 0o644, "plain"},
		{"bin", 0o755, "#!/bin/sh\necho hi\n"},
		{"private", 0o600, "secret"},
		{"ro", 0o444, "read only"},
		{"sub/deep", 0o640, "deep"},
		{"sub/empty", 0o644, ""},
		{"rodir/inside", 0o644, "in a read-only dir"},
		{"name with spaces", 0o644, "s"},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.data), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("x", filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "emptydir"), 0o750); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(root, "sub"), 0o700)
	os.Chmod(filepath.Join(root, "rodir"), 0o555)
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "rodir"), 0o755) })
}

func TestCopyToAndFrom(t *testing.T) {
	g := newGuest(t, hostShell())
	ctx := testCtx(t)
	src := filepath.Join(t.TempDir(), "tree")
	if err := os.Mkdir(src, 0o751); err != nil {
		t.Fatal(err)
	}
	makeTree(t, src)
	want := treeString(t, src)

	guestDst := filepath.Join(g.srv.Dir, "copied")
	if err := g.c.CopyTo(ctx, src, guestDst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(guestDst, "rodir"), 0o755) })
	if got := treeString(t, guestDst); got != want {
		t.Errorf("guest tree:\n%s\nwant:\n%s", got, want)
	}

	back := filepath.Join(t.TempDir(), "back")
	if err := g.c.CopyFrom(ctx, guestDst, back); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(back, "rodir"), 0o755) })
	if got := treeString(t, back); got != want {
		t.Errorf("tree copied back:\n%s\nwant:\n%s", got, want)
	}

	// Into an existing directory, the copy lands under the source's name.
	into := filepath.Join(g.srv.Dir, "into")
	os.Mkdir(into, 0o755)
	if err := g.c.CopyTo(ctx, filepath.Join(src, "bin"), into); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(into, "bin")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("copy of a file into a dir: %v %v", fi, err)
	}
	hostInto := t.TempDir()
	if err := g.c.CopyFrom(ctx, filepath.Join(guestDst, "sub", "deep"), hostInto); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(hostInto, "deep")); err != nil || string(b) != "deep" {
		t.Errorf("copy from guest into a dir: %q %v", b, err)
	}
}

func TestHostKeyPinning(t *testing.T) {
	g := newGuest(t, hostShell())
	data, err := os.ReadFile(g.pinned)
	if err != nil {
		t.Fatalf("first contact wrote no pin: %v", err)
	}
	if !strings.Contains(string(data), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(g.srv.HostKey.PublicKey())))) {
		t.Fatalf("pin file %q does not hold the server's key", data)
	}
	if fi, _ := os.Stat(g.pinned); fi.Mode().Perm() != 0o600 {
		t.Errorf("pin file mode %v", fi.Mode().Perm())
	}
	g.dial(t) // second contact, same key

	other := guesttest.Start(t, guesttest.Options{ClientKey: g.key.PublicKey()})
	_, err = Dial(testCtx(t), Config{Addr: other.Addr, Signer: g.key, KnownHostsFile: g.pinned})
	if !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("swapped host key: err %v, want ErrHostKeyChanged", err)
	}
	msg := err.Error()
	for _, want := range []string{other.Addr, ssh.FingerprintSHA256(other.HostKey.PublicKey()), ssh.FingerprintSHA256(g.srv.HostKey.PublicKey())} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %q", msg, want)
		}
	}
	// DialRetry gives up at once on a changed key.
	_, err = DialRetry(testCtx(t), Config{Addr: other.Addr, Signer: g.key, KnownHostsFile: g.pinned}, time.Hour)
	if !errors.Is(err, ErrHostKeyChanged) {
		t.Fatalf("DialRetry: err %v, want ErrHostKeyChanged", err)
	}
	if after, _ := os.ReadFile(g.pinned); !bytes.Equal(after, data) {
		t.Error("pin file changed after a mismatch")
	}
}

// A first contact asks for ed25519 before Go's usual order (RSA and ECDSA
// first): a server with keys of several types has its ed25519 key pinned.
// A server without one still gets a pin.
func TestFirstContactPrefersEd25519(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ssh.NewSignerFromKey(ecKey)
	rs, _ := ssh.NewSignerFromKey(rsaKey)
	client := guesttest.NewSigner(t)
	for _, tc := range []struct {
		name string
		opts guesttest.Options
		want ssh.Signer
	}{
		{"ed25519, ecdsa and rsa", guesttest.Options{MoreHostKeys: []ssh.Signer{ec, rs}}, nil},
		{"rsa and ecdsa only", guesttest.Options{HostKey: rs, MoreHostKeys: []ssh.Signer{ec}}, ec},
		{"rsa only", guesttest.Options{HostKey: rs}, rs},
	} {
		tc.opts.ClientKey = client.PublicKey()
		srv := guesttest.Start(t, tc.opts)
		want := tc.want
		if want == nil {
			want = srv.HostKey
		}
		pins := filepath.Join(t.TempDir(), "known_hosts")
		c, err := Dial(testCtx(t), Config{Addr: srv.Addr, Signer: client, KnownHostsFile: pins})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		c.Close()
		got, err := readPins(pins)
		if err != nil || len(got) != 1 || !bytes.Equal(got[0].Marshal(), want.PublicKey().Marshal()) {
			t.Errorf("%s: pinned %v (%v), want the %s key", tc.name, got, err, want.PublicKey().Type())
		}
	}
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestDialRetryWaitsForListener(t *testing.T) {
	key := guesttest.NewSigner(t)
	addr := freeAddr(t)
	failed := make(chan struct{})
	var once sync.Once
	testHookDialFailed = func(error) { once.Do(func() { close(failed) }) }
	t.Cleanup(func() { testHookDialFailed = nil })

	type result struct {
		c   *Client
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := DialRetry(testCtx(t), Config{Addr: addr, Signer: key, KnownHostsFile: filepath.Join(t.TempDir(), "kh")}, 50*time.Second)
		res <- result{c, err}
	}()
	<-failed // the guest is not listening yet
	guesttest.Start(t, guesttest.Options{ClientKey: key.PublicKey(), Addr: addr})
	r := <-res
	if r.err != nil {
		t.Fatalf("DialRetry: %v", r.err)
	}
	defer r.c.Close()
	if out, err := r.c.Output(testCtx(t), "echo up"); err != nil || string(out) != "up\n" {
		t.Errorf("after DialRetry: %q %v", out, err)
	}
}

func TestDialRetryGivesUp(t *testing.T) {
	key := guesttest.NewSigner(t)
	addr := freeAddr(t)
	_, err := DialRetry(testCtx(t), Config{Addr: addr, Signer: key, KnownHostsFile: filepath.Join(t.TempDir(), "kh")}, 300*time.Millisecond)
	if err == nil {
		t.Fatal("DialRetry to a closed port succeeded")
	}
	for _, want := range []string{"300ms", addr, "connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestDialNeedsConfig(t *testing.T) {
	if _, err := Dial(testCtx(t), Config{Addr: "127.0.0.1:1"}); err == nil {
		t.Fatal("Dial without signer and pin file succeeded")
	}
}

func TestInteractive(t *testing.T) {
	g := newGuest(t, hostShell())
	ptm, tty, err := system.OpenPTY()
	if err != nil {
		t.Skipf("no pty available: %v", err)
	}
	defer ptm.Close()
	defer tty.Close()
	if err := system.SetTerminalSize(tty, 30, 100); err != nil {
		t.Fatal(err)
	}
	out := &notifyWriter{}
	code, err := g.c.Interactive(testCtx(t), []string{"sh", "-c", "[ -t 0 ] && echo on-a-tty; stty size; exit 7"}, tty, out, out)
	if err != nil || code != 7 {
		t.Fatalf("code %d err %v out %q", code, err, out.String())
	}
	if s := out.String(); !strings.Contains(s, "on-a-tty") || !strings.Contains(s, "30 100") {
		t.Errorf("output %q: want on-a-tty and the size 30 100", s)
	}
}

func TestKeygen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys", "id_ed25519")
	s1, err := Keygen(p)
	if err != nil {
		t.Fatal(err)
	}
	if s1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Errorf("key type %s", s1.PublicKey().Type())
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	data, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(data), "-----BEGIN OPENSSH PRIVATE KEY-----") {
		t.Errorf("key not in OpenSSH PEM format: %q", data[:40])
	}
	pub, err := os.ReadFile(p + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pk, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil || !bytes.Equal(pk.Marshal(), s1.PublicKey().Marshal()) {
		t.Fatalf("pub file does not match the key: %v", err)
	}
	s2, err := Keygen(p)
	if err != nil || !bytes.Equal(s2.PublicKey().Marshal(), s1.PublicKey().Marshal()) {
		t.Fatalf("second Keygen gave another key (err %v)", err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"":       "''",
		"abc":    "abc",
		"a b":    "'a b'",
		"it's":   `'it'\''s'`,
		"-n":     "-n",
		"$x":     "'$x'",
		"/a/b.c": "/a/b.c",
	} {
		if got := ShellQuote(in); got != want {
			t.Errorf("ShellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestInteractiveFollowsWindowSize(t *testing.T) {
	g := newGuest(t, hostShell())
	ptm, tty, err := system.OpenPTY()
	if err != nil {
		t.Skipf("no pty available: %v", err)
	}
	defer ptm.Close()
	defer tty.Close()
	if err := system.SetTerminalSize(tty, 30, 100); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	resized := make(chan struct{})
	var once, resizedOnce sync.Once
	out := &notifyWriter{}
	out.on = func(s string) {
		if strings.Contains(s, "30 100") {
			once.Do(func() {
				// The user resizes the window: the terminal changes size and
				// the process gets SIGWINCH.
				if err := system.SetTerminalSize(tty, 40, 120); err != nil {
					t.Error(err)
				}
				syscall.Kill(os.Getpid(), syscall.SIGWINCH)
			})
		}
		if strings.Contains(s, "40 120") {
			resizedOnce.Do(func() { close(resized) })
		}
	}
	res := make(chan error, 1)
	go func() {
		_, err := g.c.Interactive(ctx, []string{"sh", "-c", "stty size; while read x; do stty size; done"}, tty, out, out)
		res <- err
	}()
	// Each line typed makes the guest print its terminal size again, until
	// the new size shows.
	for done := false; !done; {
		select {
		case <-resized:
			done = true
		case <-ctx.Done():
			s := out.String()
			t.Fatalf("guest never saw the new size; output ends %q", s[max(0, len(s)-200):])
		case <-time.After(20 * time.Millisecond):
			ptm.Write([]byte("\n"))
		}
	}
	ptm.Write([]byte{4}) // Ctrl-D: EOF for read, the loop ends
	if err := <-res; err != nil {
		t.Fatalf("interactive: %v", err)
	}
}

func TestInteractiveLoginShell(t *testing.T) {
	g := newGuest(t, hostShell())
	ptm, tty, err := system.OpenPTY()
	if err != nil {
		t.Skipf("no pty available: %v", err)
	}
	defer ptm.Close()
	defer tty.Close()
	// Typed ahead: the shell reads it once it starts.
	if _, err := ptm.Write([]byte("echo hi-from-$((6*7)); exit 5\n")); err != nil {
		t.Fatal(err)
	}
	out := &notifyWriter{}
	code, err := g.c.Interactive(testCtx(t), nil, tty, out, out)
	if err != nil || code != 5 {
		t.Fatalf("code %d err %v out %q", code, err, out.String())
	}
	if !strings.Contains(out.String(), "hi-from-42") {
		t.Errorf("shell output %q", out.String())
	}
}

// A session closed before its exec is answered never ran its command: Run
// retries it on a new session of the same connection, and the command runs
// exactly once; a server that keeps closing them gets an error, and nothing ran.
func TestRunRetriesAnUnansweredExec(t *testing.T) {
	for _, tc := range []struct {
		drop    int
		wantErr bool
	}{{drop: 2}, {drop: startAttempts, wantErr: true}} {
		t.Run(fmt.Sprintf("drop=%d", tc.drop), func(t *testing.T) {
			key := guesttest.NewSigner(t)
			srv := guesttest.Start(t, guesttest.Options{ClientKey: key.PublicKey(), DropExecs: tc.drop})
			c, err := Dial(testCtx(t), Config{Addr: srv.Addr, Signer: key, KnownHostsFile: filepath.Join(t.TempDir(), "known_hosts")})
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			log := filepath.Join(t.TempDir(), "ran")
			var out bytes.Buffer
			code, err := c.Run(testCtx(t), []string{"sh", "-c", "echo x >>" + log + "; echo done"}, strings.NewReader("in"), &out, io.Discard)
			b, _ := os.ReadFile(log)
			if tc.wantErr {
				if err == nil || !errors.Is(err, io.EOF) {
					t.Errorf("Run = %d, %v; want an EOF error", code, err)
				}
				if len(b) != 0 {
					t.Errorf("the command ran %d times, want none", strings.Count(string(b), "x"))
				}
				return
			}
			if err != nil || code != 0 || out.String() != "done\n" {
				t.Fatalf("Run = %d, %v, %q", code, err, out.String())
			}
			if n := strings.Count(string(b), "x"); n != 1 {
				t.Errorf("the command ran %d times, want once", n)
			}
			if srv.Accepted() != 1 {
				t.Errorf("%d connections, want the one", srv.Accepted())
			}
		})
	}
}

// A refused connection is asked again every refusedRetry, without growing
// the pause: the guest's SSH server is about to listen (a clone's, which
// restarts with its new host key). Growing pauses (50, 100, 200 ms...)
// made only 4 attempts in half a second.
func TestDialRetryRefusedDoesNotBackOff(t *testing.T) {
	key := guesttest.NewSigner(t)
	addr := freeAddr(t)
	var mu sync.Mutex
	attempts := 0
	testHookDialFailed = func(error) { mu.Lock(); attempts++; mu.Unlock() }
	t.Cleanup(func() { testHookDialFailed = nil })
	if _, err := DialRetry(testCtx(t), Config{Addr: addr, Signer: key, KnownHostsFile: filepath.Join(t.TempDir(), "kh")}, 500*time.Millisecond); err == nil {
		t.Fatal("DialRetry to a closed port succeeded")
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts < 8 {
		t.Errorf("%d attempts in 500ms to a refusing port, want one every %s", attempts, refusedRetry)
	}
}

// A connect that gets no answer (SYNs dropped: here a listener whose
// accept queue is full) is abandoned after firstConnectTimeout and tried
// anew, instead of waiting for the kernel to resend the SYN a second later
// inside one 2 s attempt.
func TestDialRetryAbandonsUnansweredConnect(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
	// Fill the accept queue: later SYNs are dropped.
	for range 3 {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			defer c.Close()
		}
	}
	var mu sync.Mutex
	var errs []error
	testHookDialFailed = func(err error) { mu.Lock(); errs = append(errs, err); mu.Unlock() }
	t.Cleanup(func() { testHookDialFailed = nil })
	key := guesttest.NewSigner(t)
	start := time.Now()
	_, err = DialRetry(testCtx(t), Config{Addr: addr, Signer: key, KnownHostsFile: filepath.Join(t.TempDir(), "kh"), DialTimeout: 2 * time.Second}, 1500*time.Millisecond)
	if err == nil {
		t.Skip("the kernel answered a SYN past a full accept queue (syncookies?): nothing to test")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) < 2 {
		t.Errorf("%d attempts in %s against unanswered SYNs, want the first abandoned after %s: %v", len(errs), time.Since(start).Round(time.Millisecond), firstConnectTimeout, errs)
	}
}
