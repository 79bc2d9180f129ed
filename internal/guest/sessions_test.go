package guest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/system"
)

// forEachShell runs f against the host's sh and against busybox alone.
func forEachShell(t *testing.T, f func(t *testing.T, g *testGuest)) {
	for _, se := range []struct {
		name string
		env  func(*testing.T) shellEnv
	}{{"hostsh", func(*testing.T) shellEnv { return hostShell() }}, {"busybox", busyboxShell}} {
		t.Run(se.name, func(t *testing.T) {
			g := newGuest(t, se.env(t))
			g.c.pollEvery = 5 * time.Millisecond
			f(t, g)
		})
	}
}

func startSession(t *testing.T, g *testGuest, s SessionSpec) int {
	t.Helper()
	pid, err := g.c.StartSession(testCtx(t), s)
	if err != nil {
		t.Fatalf("start session %s: %v", s.ID, err)
	}
	if pid <= 0 {
		t.Fatalf("start session %s: pid %d", s.ID, pid)
	}
	// Never leave a session's processes behind.
	t.Cleanup(func() {
		g.c.StopSession(context.Background(), s.ID, "KILL", 0) //nolint:errcheck
	})
	return pid
}

// waitLog polls the session's log until it holds want.
func waitLog(t *testing.T, g *testGuest, id, stream, want string) {
	t.Helper()
	ctx := testCtx(t)
	for {
		var b bytes.Buffer
		if err := g.c.SessionLogs(ctx, id, stream, 0, &b); err != nil {
			t.Fatalf("logs of %s: %v", id, err)
		}
		if strings.Contains(b.String(), want) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("session %s %s never showed %q; has %q", id, stream, want, b.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func exitCodeOf(t *testing.T, st SessionState) int {
	t.Helper()
	if st.Running || st.ExitCode == nil {
		t.Fatalf("state %+v: want ended with an exit code", st)
	}
	return *st.ExitCode
}

func TestSessionExitCodeAndLogs(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		startSession(t, g, SessionSpec{ID: "s1", Argv: []string{"sh", "-c", "printf 'l1\\nl2\\nl3\\n'; echo e1 >&2; exit 3"}})
		var all bytes.Buffer
		if err := g.c.FollowSessionLogs(ctx, "s1", "stdout", 0, &all); err != nil {
			t.Fatal(err)
		}
		if all.String() != "l1\nl2\nl3\n" {
			t.Errorf("followed stdout %q", all.String())
		}
		st, err := g.c.SessionState(ctx, "s1")
		if err != nil {
			t.Fatal(err)
		}
		if code := exitCodeOf(t, st); code != 3 {
			t.Errorf("exit code %d, want 3", code)
		}
		for _, tc := range []struct {
			stream string
			tail   int
			want   string
		}{{"stdout", 2, "l2\nl3\n"}, {"stdout", 1, "l3\n"}, {"stdout", 10, "l1\nl2\nl3\n"}, {"stdout", 0, "l1\nl2\nl3\n"}, {"stderr", 0, "e1\n"}} {
			var b bytes.Buffer
			if err := g.c.SessionLogs(ctx, "s1", tc.stream, tc.tail, &b); err != nil || b.String() != tc.want {
				t.Errorf("SessionLogs(%s, tail %d) = %q, %v; want %q", tc.stream, tc.tail, b.String(), err, tc.want)
			}
			b.Reset()
			dir := filepath.Join(g.c.SessionsRoot, "s1")
			if err := ReadSessionLogDir(dir, tc.stream, tc.tail, &b); err != nil || b.String() != tc.want {
				t.Errorf("ReadSessionLogDir(%s, tail %d) = %q, %v; want %q", tc.stream, tc.tail, b.String(), err, tc.want)
			}
		}
		hostSt, err := ReadSessionStateDir(filepath.Join(g.c.SessionsRoot, "s1"))
		if err != nil {
			t.Fatal(err)
		}
		if code := exitCodeOf(t, hostSt); code != 3 || hostSt.PID != st.PID {
			t.Errorf("ReadSessionStateDir %+v, guest said %+v", hostSt, st)
		}
		if err := g.c.SessionLogs(ctx, "s1", "stdlog", 0, &bytes.Buffer{}); err == nil {
			t.Error("unknown stream: want an error")
		}
		// Stopping an ended session is a no-op.
		if err := g.c.StopSession(ctx, "s1", "TERM", time.Second); err != nil {
			t.Errorf("stop an ended session: %v", err)
		}
		// The id is taken.
		if _, err := g.c.StartSession(ctx, SessionSpec{ID: "s1", Argv: []string{"true"}}); err == nil {
			t.Error("second session with the same id: want an error")
		}
	})
}

func TestSessionRunningStopTERM(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		// The child in the background checks the whole process group is signalled.
		pid := startSession(t, g, SessionSpec{ID: "srv", Cwd: g.srv.Dir, Argv: []string{"sh", "-c", "sleep 1000 & echo $! >child; echo ready; wait"}})
		waitLog(t, g, "srv", "stdout", "ready")
		st, err := g.c.SessionState(ctx, "srv")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Running || st.PID != pid || st.ExitCode != nil {
			t.Fatalf("state %+v, want running with pid %d", st, pid)
		}
		if p := (system.Process{PID: pid}); !p.Alive() {
			t.Fatalf("session pid %d is not a live process", pid)
		}
		b, err := os.ReadFile(filepath.Join(g.srv.Dir, "child"))
		if err != nil {
			t.Fatal(err)
		}
		child, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err := g.c.StopSession(ctx, "srv", "SIGTERM", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		st, err = g.c.SessionState(ctx, "srv")
		if err != nil {
			t.Fatal(err)
		}
		if code := exitCodeOf(t, st); code != 143 {
			t.Errorf("exit code %d, want 143 (SIGTERM)", code)
		}
		if (system.Process{PID: child}).WaitExit(10 * time.Second); (system.Process{PID: child}).Alive() {
			t.Errorf("the session's background child %d survived the stop", child)
		}
	})
}

func TestSessionStopINTReachesCommand(t *testing.T) {
	// A detached command must not start with SIGINT ignored, as it would
	// under a shell's `&`.
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		startSession(t, g, SessionSpec{ID: "int", Argv: []string{"sleep", "1000"}})
		if err := g.c.StopSession(ctx, "int", "INT", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		st, err := g.c.SessionState(ctx, "int")
		if err != nil {
			t.Fatal(err)
		}
		if code := exitCodeOf(t, st); code != 130 {
			t.Errorf("exit code %d, want 130 (SIGINT)", code)
		}
	})
}

func TestSessionStopEscalatesToKILL(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		startSession(t, g, SessionSpec{ID: "stubborn", Argv: []string{"sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"}})
		waitLog(t, g, "stubborn", "stdout", "ready")
		if err := g.c.StopSession(ctx, "stubborn", "TERM", 20*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		st, err := g.c.SessionState(ctx, "stubborn")
		if err != nil {
			t.Fatal(err)
		}
		if code := exitCodeOf(t, st); code != 137 {
			t.Errorf("exit code %d, want 137 (SIGKILL)", code)
		}
	})
}

func TestSessionStdin(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		startSession(t, g, SessionSpec{ID: "cat", Argv: []string{"cat"}, Stdin: true})
		payload := make([]byte, 200<<10) // several pipe buffers
		rand.Read(payload)
		payload = append(payload, 0, '\n', 0xff)
		if err := g.c.SendToSession(ctx, "cat", bytes.NewReader(payload)); err != nil {
			t.Fatal(err)
		}
		if err := g.c.SendToSession(ctx, "cat", strings.NewReader("second")); err != nil {
			t.Fatal(err)
		}
		want := append(append([]byte{}, payload...), "second"...)
		for {
			var b bytes.Buffer
			if err := g.c.SessionLogs(ctx, "cat", "stdout", 0, &b); err != nil {
				t.Fatal(err)
			}
			if b.Len() >= len(want) {
				if !bytes.Equal(b.Bytes(), want) {
					t.Fatalf("stdout holds %d bytes that differ from the %d sent", b.Len(), len(want))
				}
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("stdout has %d of %d bytes", b.Len(), len(want))
			case <-time.After(5 * time.Millisecond):
			}
		}
		// cat has not seen EOF: it still runs.
		if st, err := g.c.SessionState(ctx, "cat"); err != nil || !st.Running {
			t.Fatalf("state %+v %v, want running", st, err)
		}
		if err := g.c.StopSession(ctx, "cat", "TERM", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		st, _ := g.c.SessionState(ctx, "cat")
		if code := exitCodeOf(t, st); code != 143 {
			t.Errorf("exit code %d, want 143", code)
		}
		err := g.c.SendToSession(ctx, "cat", strings.NewReader("late"))
		if err == nil || !strings.Contains(err.Error(), "ended") {
			t.Errorf("send after the end: %v, want an error saying it ended", err)
		}
		if _, err := os.Lstat(filepath.Join(g.c.SessionsRoot, "cat", "stdin")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stdin FIFO left after the end (%v)", err)
		}
	})
}

func TestSessionWithoutStdin(t *testing.T) {
	g := newGuest(t, hostShell())
	ctx := testCtx(t)
	startSession(t, g, SessionSpec{ID: "nostdin", Argv: []string{"sleep", "1000"}})
	err := g.c.SendToSession(ctx, "nostdin", strings.NewReader("x"))
	if err == nil || !strings.Contains(err.Error(), "no stdin") {
		t.Fatalf("err %v, want an error saying there is no stdin", err)
	}
	if err := g.c.SendToSession(ctx, "nosuch", strings.NewReader("x")); err == nil {
		t.Error("send to a missing session: want an error")
	}
	if _, err := g.c.SessionState(ctx, "nosuch"); err == nil {
		t.Error("state of a missing session: want an error")
	}
}

func TestSessionFollow(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		startSession(t, g, SessionSpec{ID: "f", Stdin: true,
			Argv: []string{"sh", "-c", `echo one; read x; echo "got $x"; echo two`}})
		out := &notifyWriter{}
		seen := make(chan struct{})
		var once bool
		out.on = func(s string) {
			if strings.Contains(s, "one") && !once {
				once = true
				close(seen)
			}
		}
		res := make(chan error, 1)
		go func() { res <- g.c.FollowSessionLogs(ctx, "f", "stdout", 0, out) }()
		<-seen
		if err := g.c.SendToSession(ctx, "f", strings.NewReader("mid\n")); err != nil {
			t.Fatal(err)
		}
		if err := <-res; err != nil {
			t.Fatalf("follow: %v", err)
		}
		if out.String() != "one\ngot mid\ntwo\n" {
			t.Errorf("followed %q", out.String())
		}

		// Cancelling the context ends a follow of a running session.
		startSession(t, g, SessionSpec{ID: "g", Argv: []string{"sh", "-c", "echo a; echo b; echo c; exec sleep 1000"}})
		cctx, cancel := context.WithCancel(ctx)
		out2 := &notifyWriter{}
		out2.on = func(s string) {
			if strings.Contains(s, "c\n") {
				cancel()
			}
		}
		err := g.c.FollowSessionLogs(cctx, "g", "stdout", 2, out2)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("follow after cancel: %v", err)
		}
		if s := out2.String(); s != "b\nc\n" && s != "a\nb\nc\n" {
			t.Errorf("follow with tail 2 printed %q", s)
		}
	})
}

func TestSessionEnvAndCwd(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		cwd := filepath.Join(g.srv.Dir, "a dir")
		os.Mkdir(cwd, 0o755)
		startSession(t, g, SessionSpec{ID: "env", Cwd: cwd, Env: []string{"FOO=it's $x `y`", "BAR="},
			Argv: []string{"sh", "-c", `printf '%s|%s|' "$FOO" "${BAR-unset}"; pwd`}})
		var b bytes.Buffer
		if err := g.c.FollowSessionLogs(ctx, "env", "stdout", 0, &b); err != nil {
			t.Fatal(err)
		}
		if want := "it's $x `y`||" + cwd + "\n"; b.String() != want {
			t.Errorf("got %q, want %q", b.String(), want)
		}
		if _, err := g.c.StartSession(ctx, SessionSpec{ID: "env2", Cwd: "/nonexistent dir", Argv: []string{"true"}}); err == nil ||
			!strings.Contains(err.Error(), "does not exist") {
			t.Errorf("missing cwd: %v", err)
		}
		st, err := g.c.SessionState(ctx, "env")
		if err != nil || exitCodeOf(t, st) != 0 {
			t.Errorf("state %+v %v", st, err)
		}
	})
}

func TestSessionCommandNotFound(t *testing.T) {
	g := newGuest(t, hostShell())
	ctx := testCtx(t)
	startSession(t, g, SessionSpec{ID: "nf", Argv: []string{"/nonexistent/cmd"}})
	var b bytes.Buffer
	if err := g.c.FollowSessionLogs(ctx, "nf", "stderr", 0, &b); err != nil {
		t.Fatal(err)
	}
	st, _ := g.c.SessionState(ctx, "nf")
	if code := exitCodeOf(t, st); code != 127 || !strings.Contains(b.String(), "nonexistent") {
		t.Errorf("exit %d stderr %q, want 127 and a message", code, b.String())
	}
}

func TestSessionInvalidSpec(t *testing.T) {
	g := newGuest(t, hostShell())
	ctx := testCtx(t)
	for _, s := range []SessionSpec{
		{ID: "", Argv: []string{"true"}},
		{ID: "../escape", Argv: []string{"true"}},
		{ID: "..", Argv: []string{"true"}},
		{ID: "ok", Argv: nil},
		{ID: "ok", Argv: []string{"true"}, Env: []string{"NOEQUALS"}},
		{ID: "ok", Argv: []string{"true"}, Env: []string{"BAD-NAME=1"}},
	} {
		if _, err := g.c.StartSession(ctx, s); err == nil {
			t.Errorf("StartSession(%+v): want an error", s)
		}
	}
	if err := g.c.StopSession(ctx, "x", "NOSUCHSIG", time.Second); err == nil {
		t.Error("unknown signal: want an error")
	}
	if ents, _ := os.ReadDir(g.c.SessionsRoot); len(ents) != 0 {
		t.Errorf("invalid specs left %d session dirs", len(ents))
	}
}

func TestReadSessionStateDirLost(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pid"), []byte("4242\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := ReadSessionStateDir(dir)
	if err != nil || st.Running || st.ExitCode != nil || st.PID != 4242 {
		t.Fatalf("state %+v %v, want not running, no exit code, pid 4242", st, err)
	}
	if _, err := ReadSessionStateDir(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing dir: %v", err)
	}
}

func TestTailOffset(t *testing.T) {
	for _, tc := range []struct {
		data string
		n    int
		want string
	}{
		{"", 3, ""},
		{"a\nb\nc\n", 0, "a\nb\nc\n"},
		{"a\nb\nc\n", 1, "c\n"},
		{"a\nb\nc\n", 2, "b\nc\n"},
		{"a\nb\nc\n", 3, "a\nb\nc\n"},
		{"a\nb\nc\n", 9, "a\nb\nc\n"},
		{"a\nb\nc", 1, "c"},
		{"a\nb\nc", 2, "b\nc"},
		{"\n\n\n", 2, "\n\n"},
		{"no newline", 1, "no newline"},
		{strings.Repeat("x", 70000) + "\n" + strings.Repeat("y", 70000) + "\n", 1, strings.Repeat("y", 70000) + "\n"},
	} {
		r := strings.NewReader(tc.data)
		off, err := tailOffset(r, int64(len(tc.data)), tc.n)
		if err != nil || tc.data[off:] != tc.want {
			t.Errorf("tail %d of %q: got %q (%v), want %q", tc.n, tc.data, tc.data[off:], err, tc.want)
		}
	}
}

func TestSessionPaths(t *testing.T) {
	if got := filepath.Join("/work", WorkDiskSessionsDir); got != SessionsDir {
		t.Errorf("work disk dir %s does not match SessionsDir %s", got, SessionsDir)
	}
	if got := SessionLogPath("web-1", "stderr"); got != "/work/.banger/sessions/web-1/stderr.log" {
		t.Errorf("SessionLogPath = %s", got)
	}
}

// Files on a stopped VM's disk are the guest's: a symlink there must not
// make the host read its own files.
func TestOfflineReadersRefuseSymlinks(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "host-secret")
	os.WriteFile(secret, []byte("host only\n"), 0o600)
	os.Symlink(secret, filepath.Join(dir, "stdout.log"))
	var b bytes.Buffer
	err := ReadSessionLogDir(dir, "stdout", 0, &b)
	if err == nil || b.Len() != 0 {
		t.Fatalf("symlinked log followed: %q %v", b.String(), err)
	}
	os.Symlink(secret, filepath.Join(dir, "exit"))
	if _, err := ReadSessionStateDir(dir); err == nil {
		t.Fatal("symlinked exit file followed")
	}
	os.Remove(filepath.Join(dir, "stdout.log"))
	os.WriteFile(filepath.Join(dir, "stdout.log"), []byte("real\n"), 0o644)
	b.Reset()
	if err := ReadSessionLogDir(dir, "stdout", 0, &b); err != nil || b.String() != "real\n" {
		t.Fatalf("regular log: %q %v", b.String(), err)
	}
}

// A command that reads what was sent and exits at once removes its FIFO,
// possibly before the send has returned: the send still succeeded, and the
// command got the data. The sender here holds its stream open until the
// session has ended, so the FIFO is always gone when cat returns.
func TestSessionStdinReadThenExit(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		startSession(t, g, SessionSpec{ID: "r", Argv: []string{"sh", "-c", "read l; echo got $l"}, Stdin: true})
		exitFile := filepath.Join(g.c.SessionsRoot, "r", "exit")
		fifo := filepath.Join(g.c.SessionsRoot, "r", "stdin")
		data := &untilGone{data: []byte("hello\n"), paths: []string{exitFile}, gone: fifo, ctx: ctx}
		if err := g.c.SendToSession(ctx, "r", data); err != nil {
			t.Fatalf("send: %v", err)
		}
		var b bytes.Buffer
		if err := g.c.SessionLogs(ctx, "r", "stdout", 0, &b); err != nil || b.String() != "got hello\n" {
			t.Errorf("stdout %q, %v; want got hello", b.String(), err)
		}
		if _, err := os.Lstat(fifo); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("stdin after the end: %v, want it gone", err)
		}
	})
}

// untilGone yields data, then blocks until every path exists and gone does
// not, then ends.
type untilGone struct {
	data  []byte
	paths []string
	gone  string
	ctx   context.Context
}

func (u *untilGone) Read(p []byte) (int, error) {
	if len(u.data) > 0 {
		n := copy(p, u.data)
		u.data = u.data[n:]
		return n, nil
	}
	for {
		ready := true
		for _, f := range u.paths {
			if _, err := os.Stat(f); err != nil {
				ready = false
			}
		}
		if _, err := os.Lstat(u.gone); err == nil {
			ready = false
		}
		if ready {
			return 0, io.EOF
		}
		select {
		case <-u.ctx.Done():
			return 0, u.ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// A clone's copy of a session running in its source is ended (no exit code
// written: the runner goes first) and its directory, logs kept, moved to
// the clone's new id; an ended session is only moved.
func TestForkSession(t *testing.T) {
	forEachShell(t, func(t *testing.T, g *testGuest) {
		ctx := testCtx(t)
		pid := startSession(t, g, SessionSpec{ID: "src1", Cwd: g.srv.Dir, Argv: []string{"sh", "-c", "echo before; sleep 1000"}})
		waitLog(t, g, "src1", "stdout", "before")
		if err := g.c.ForkSession(ctx, "src1", "clone1"); err != nil {
			t.Fatal(err)
		}
		p := system.Process{PID: pid}
		if p.WaitExit(10 * time.Second); p.Alive() {
			t.Errorf("forked session's command %d still runs", pid)
		}
		dir := filepath.Join(g.c.SessionsRoot, "clone1")
		if b, err := os.ReadFile(filepath.Join(dir, "stdout.log")); err != nil || string(b) != "before\n" {
			t.Errorf("forked session's log = %q, %v", b, err)
		}
		time.Sleep(100 * time.Millisecond) // a runner left alive would write exit now
		if _, err := os.Stat(filepath.Join(dir, "exit")); err == nil {
			t.Error("the forked session wrote an exit code (its runner outlived the fork)")
		}
		if _, err := os.Stat(filepath.Join(g.c.SessionsRoot, "src1")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old session dir still there: %v", err)
		}
		// Ended already: moved, nothing signalled.
		startSession(t, g, SessionSpec{ID: "done1", Cwd: g.srv.Dir, Argv: []string{"true"}})
		for {
			st, err := g.c.SessionState(ctx, "done1")
			if err != nil {
				t.Fatal(err)
			}
			if !st.Running {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := g.c.ForkSession(ctx, "done1", "clone2"); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(g.c.SessionsRoot, "clone2", "exit")); err != nil || strings.TrimSpace(string(b)) != "0" {
			t.Errorf("ended session's exit after the fork = %q, %v", b, err)
		}
		if err := g.c.ForkSession(ctx, "nosuch", "clone3"); err != nil {
			t.Errorf("ForkSession of a session the clone lacks: %v", err)
		}
		if err := g.c.ForkSession(ctx, "../x", "clone4"); err == nil {
			t.Error("ForkSession accepted a bad id")
		}
	})
}

// A log still being written: --tail 1 prints one line, the last one when
// the log was measured, however many lines are written meanwhile (it
// printed several when the copy ran on to the end of the file).
func TestReadSessionLogDirTailWhileWritten(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, "tick 0")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			fmt.Fprintf(f, "tick %d\n", i)
		}
	}()
	defer func() { close(stop); <-done }()
	for i := 0; i < 300; i++ {
		var b bytes.Buffer
		if err := ReadSessionLogDir(dir, "stdout", 1, &b); err != nil {
			t.Fatal(err)
		}
		// One line; as with tail(1), a line being written may show in
		// part (the kernel grows the file a page at a time).
		out := b.String()
		if out == "" || strings.Contains(strings.TrimSuffix(out, "\n"), "\n") {
			t.Fatalf("tail 1 of a log being written printed %q", out)
		}
	}
}
