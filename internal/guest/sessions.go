package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SessionsDir is the guest directory, on the work disk, that holds one
// directory per guest session. Being on the work disk, a session's logs and
// exit code can be read from the host after the VM stopped.
//
// A session directory holds:
//
//	stdout.log, stderr.log  the command's output
//	stdin                   a FIFO, only for sessions with Stdin, while running
//	pid                     the command's PID, which is also its process group
//	runner.pid              the PID of the sh that waits for it
//	boot_id                 the guest boot the session started in
//	exit                    the exit code (128+signo when killed), once it ended
//	run, cmd                the two scripts that run it
const SessionsDir = "/work/.banger/sessions"

// WorkDiskSessionsDir is SessionsDir relative to the work disk's root, for
// reading sessions from the host with the disk mounted there.
const WorkDiskSessionsDir = ".banger/sessions"

// SessionLogPath returns the guest path of a session's log, stream being
// "stdout" or "stderr", under the default SessionsDir.
func SessionLogPath(id, stream string) string {
	return path.Join(SessionsDir, id, stream+".log")
}

// SessionSpec describes a detached guest command.
type SessionSpec struct {
	ID    string   // directory name under the sessions root: letters, digits, '.', '_', '-'
	Argv  []string // the command, arriving byte for byte
	Cwd   string   // default: the user's home directory
	Env   []string // NAME=value, added to the environment
	Stdin bool     // give the command a stdin FIFO that SendToSession writes to
}

// SessionState is what the guest says about a session. ExitCode is set once
// the command ended; Running false with no ExitCode means the session was lost
// (its runner died, or the guest rebooted under it).
type SessionState struct {
	Running  bool
	PID      int
	ExitCode *int
}

func (c *Client) sessionDir(id string) (string, error) {
	if err := validSessionID(id); err != nil {
		return "", err
	}
	return path.Join(c.SessionsRoot, id), nil
}

func validSessionID(id string) error {
	if id == "" || id == "." || id == ".." || len(id) > 128 {
		return fmt.Errorf("invalid session id %q", id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("invalid session id %q", id)
		}
	}
	return nil
}

func validEnv(kv string) error {
	name, _, ok := strings.Cut(kv, "=")
	if !ok || name == "" {
		return fmt.Errorf("invalid environment entry %q: want NAME=value", kv)
	}
	for i, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r == '_' || i > 0 && r >= '0' && r <= '9') {
			return fmt.Errorf("invalid environment variable name %q", name)
		}
	}
	return nil
}

// sessionScripts renders the launcher, run over SSH, which writes the runner
// (run) and the command wrapper (cmd) into the session directory. Every value
// is embedded with ShellQuote.
//
// The launcher starts the runner with `setsid setsid`: the first setsid makes
// itself a session leader, so the second one must fork, and returns at once.
// This detaches the runner without a shell `&`, which would start it with
// SIGINT and SIGQUIT ignored, a disposition the command would inherit and no
// shell could undo. The runner runs the command in the foreground under its
// own setsid, so the command's PID is its process group (for StopSession)
// and the runner gets its exit status. The command wrapper reports its PID
// through the .ready FIFO, on which the launcher waits.
func sessionScripts(dir string, s SessionSpec) (string, error) {
	argv, err := quoteArgv(s.Argv)
	if err != nil {
		return "", err
	}
	q := ShellQuote

	var w strings.Builder
	w.WriteString("echo $$ >pid.tmp && mv -f pid.tmp pid\necho $$ >&4\nexec 4>&-\n")
	if s.Cwd != "" {
		fmt.Fprintf(&w, "cd %s || exit 127\n", q(s.Cwd))
	} else {
		w.WriteString("cd \"${HOME:-/}\" || cd /\n")
	}
	for _, kv := range s.Env {
		if err := validEnv(kv); err != nil {
			return "", err
		}
		fmt.Fprintf(&w, "export %s\n", q(kv))
	}
	fmt.Fprintf(&w, "%s\n", argv)

	var r strings.Builder
	fmt.Fprintf(&r, "cd %s || exit 1\necho $$ >runner.pid\n", q(dir))
	stdin := "</dev/null"
	if s.Stdin {
		// The runner holds the FIFO open read-write: writers never block on
		// open, and the command never sees EOF while it runs.
		r.WriteString("exec 3<>stdin\n")
		stdin = "<stdin"
	}
	fmt.Fprintf(&r, "setsid sh ./cmd %s >>stdout.log 2>>stderr.log 3>&- 4>.ready\n", stdin)
	r.WriteString("code=$?\necho \"$code\" >exit.tmp && mv -f exit.tmp exit\n")
	if s.Stdin {
		r.WriteString("rm -f stdin\n")
	}

	var l strings.Builder
	fmt.Fprintf(&l, "set -e\numask 022\nmkdir -p %s\nd=%s\n", q(path.Dir(dir)), q(dir))
	l.WriteString("mkdir \"$d\"\ncd \"$d\"\n")
	if s.Cwd != "" {
		fmt.Fprintf(&l, "[ -d %s ] || { echo 'working directory '%s' does not exist' >&2; exit 1; }\n", q(s.Cwd), q(s.Cwd))
	}
	l.WriteString(": >stdout.log\n: >stderr.log\n")
	l.WriteString("cat /proc/sys/kernel/random/boot_id >boot_id 2>/dev/null || :\n")
	fmt.Fprintf(&l, "printf '%%s' %s >cmd\nprintf '%%s' %s >run\n", q(w.String()), q(r.String()))
	if s.Stdin {
		l.WriteString("mkfifo stdin\n")
	}
	l.WriteString("mkfifo .ready\n")
	l.WriteString("setsid setsid sh \"$d/run\" </dev/null >/dev/null 2>&1\n")
	l.WriteString("pid=\nread -r pid <.ready || :\nrm -f .ready\n")
	l.WriteString("[ -n \"$pid\" ] || { echo 'session command did not start' >&2; exit 1; }\necho \"$pid\"\n")
	return l.String(), nil
}

// StartSession starts s detached in the guest and returns its PID at once.
// The session directory must not exist yet.
func (c *Client) StartSession(ctx context.Context, s SessionSpec) (int, error) {
	dir, err := c.sessionDir(s.ID)
	if err != nil {
		return 0, fmt.Errorf("start session in guest %s: %w", c.addr, err)
	}
	launcher, err := sessionScripts(dir, s)
	if err != nil {
		return 0, fmt.Errorf("start session %s in guest %s: %w", s.ID, c.addr, err)
	}
	out, err := c.Output(ctx, launcher)
	if err != nil {
		return 0, fmt.Errorf("start session %s in guest %s: %w", s.ID, c.addr, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("start session %s in guest %s: bad pid %q", s.ID, c.addr, out)
	}
	return pid, nil
}

// stateScript prints pid=, running= and, once the command ended, exit=.
// A session started in another boot of the guest is not running, whatever
// its PID now names.
const stateScript = `cd "$1" 2>/dev/null || { echo "no session directory $1" >&2; exit 2; }
pid=$(cat pid 2>/dev/null) || pid=
boot=$(cat boot_id 2>/dev/null) || boot=
now=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null) || now=
running=0
if [ ! -e exit ] && [ "$boot" = "$now" ]; then
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    running=1
  else
    r=$(cat runner.pid 2>/dev/null) || r=
    if [ -n "$r" ] && kill -0 "$r" 2>/dev/null; then running=1; fi
  fi
fi
echo "pid=$pid"
echo "running=$running"
if [ -e exit ]; then echo "exit=$(cat exit)"; fi
`

// SessionState reports whether the session runs, its PID and, once it ended,
// its exit code.
func (c *Client) SessionState(ctx context.Context, id string) (SessionState, error) {
	dir, err := c.sessionDir(id)
	if err != nil {
		return SessionState{}, fmt.Errorf("session state in guest %s: %w", c.addr, err)
	}
	out, err := c.outputArgs(ctx, stateScript, dir)
	if err != nil {
		return SessionState{}, fmt.Errorf("session %s state in guest %s: %w", id, c.addr, err)
	}
	st, err := parseState(out)
	if err != nil {
		return SessionState{}, fmt.Errorf("session %s state in guest %s: %w", id, c.addr, err)
	}
	return st, nil
}

// outputArgs runs `sh -c script sh args...`, so values reach the script as
// positional parameters rather than pasted into it.
func (c *Client) outputArgs(ctx context.Context, script string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	argv := append([]string{"sh", "-c", script, "sh"}, args...)
	code, err := c.Run(ctx, argv, nil, &stdout, &stderr)
	if err != nil {
		return stdout.Bytes(), err
	}
	if code != 0 {
		return stdout.Bytes(), &ExitError{Command: strings.Join(argv[:2], " ") + " <script>", Code: code, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

func parseState(out []byte) (SessionState, error) {
	var st SessionState
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		v = strings.TrimSpace(v)
		switch k {
		case "pid":
			if v != "" {
				n, err := strconv.Atoi(v)
				if err != nil {
					return st, fmt.Errorf("bad pid %q", v)
				}
				st.PID = n
			}
		case "running":
			st.Running = v == "1"
		case "exit":
			n, err := strconv.Atoi(v)
			if err != nil {
				return st, fmt.Errorf("bad exit code %q", v)
			}
			st.ExitCode = &n
		}
	}
	if st.ExitCode != nil {
		st.Running = false
	}
	return st, nil
}

func logName(stream string) (string, error) {
	if stream != "stdout" && stream != "stderr" {
		return "", fmt.Errorf("unknown log stream %q: want stdout or stderr", stream)
	}
	return stream + ".log", nil
}

// SessionLogs writes the session's stdout or stderr log to w: its last tail
// lines, or all of it when tail <= 0.
func (c *Client) SessionLogs(ctx context.Context, id, stream string, tail int, w io.Writer) error {
	_, err := c.sessionLogs(ctx, id, stream, tail, w, false)
	return err
}

// FollowSessionLogs is SessionLogs followed by new output as it is written,
// like tail -f, until ctx is done (returning ctx.Err()) or the session ended
// and its log is drained (returning nil).
func (c *Client) FollowSessionLogs(ctx context.Context, id, stream string, tail int, w io.Writer) error {
	_, err := c.sessionLogs(ctx, id, stream, tail, w, true)
	return err
}

func (c *Client) sessionLogs(ctx context.Context, id, stream string, tail int, w io.Writer, follow bool) (int64, error) {
	dir, err := c.sessionDir(id)
	if err != nil {
		return 0, fmt.Errorf("session logs in guest %s: %w", c.addr, err)
	}
	name, err := logName(stream)
	if err != nil {
		return 0, fmt.Errorf("session %s logs: %w", id, err)
	}
	wrap := func(err error) error {
		return fmt.Errorf("session %s %s in guest %s: %w", id, stream, c.addr, err)
	}
	sc, done, err := c.openSFTP(ctx)
	if err != nil {
		return 0, wrap(err)
	}
	defer done()
	f, err := sc.Open(path.Join(dir, name))
	if err != nil {
		return 0, wrap(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, wrap(err)
	}
	off, err := tailOffset(f, fi.Size(), tail)
	if err != nil {
		return 0, wrap(withCtx(ctx, err))
	}
	if !follow {
		// What the log held when it was measured: lines written since
		// would make --tail N print more than N.
		if _, err := copyRange(f, off, fi.Size(), w); err != nil {
			return off, wrap(withCtx(ctx, err))
		}
		return fi.Size(), nil
	}
	if off, err = copyFrom(f, off, w); err != nil {
		return off, wrap(withCtx(ctx, err))
	}
	exitPath := path.Join(dir, "exit")
	for idle := 0; ; {
		before := off
		if off, err = copyFrom(f, off, w); err != nil {
			return off, wrap(withCtx(ctx, err))
		}
		if off > before {
			idle = 0
			continue
		}
		// At EOF: stop once the session has ended, after one last drain.
		ended := false
		if _, err := sc.Stat(exitPath); err == nil {
			ended = true
		} else if idle%20 == 19 {
			// A lost session never writes exit: ask the guest now and then.
			st, err := c.SessionState(ctx, id)
			ended = err == nil && !st.Running
		}
		if ended {
			if off, err = copyFrom(f, off, w); err != nil {
				return off, wrap(withCtx(ctx, err))
			}
			return off, nil
		}
		idle++
		t := time.NewTimer(c.pollEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return off, ctx.Err()
		case <-t.C:
		}
	}
}

// sendScript feeds stdin to the session's FIFO. The runner holds the FIFO
// while the command runs, so the open cannot block. Once cat has written
// everything, the data is in the session's stdin pipe: a command that reads
// it and exits at once may remove the FIFO before cat returns, which is
// success (an earlier version reported "ended while sending" then, a false
// failure under load); a command that ends without reading loses it, as
// with any pipe. A session that had ended before the send is refused, also
// when its FIFO went between the check and cat's open (cat then made a
// plain file, which is removed).
const sendScript = `cd "$1" 2>/dev/null || { echo "no session directory $1" >&2; exit 2; }
if [ -e exit ]; then echo "session has ended" >&2; exit 2; fi
[ -p stdin ] || { echo "session has no stdin pipe" >&2; exit 2; }
r=$(cat runner.pid 2>/dev/null) || r=
{ [ -n "$r" ] && kill -0 "$r" 2>/dev/null; } || { echo "session is not running" >&2; exit 2; }
cat >stdin || exit 1
# The FIFO was removed between the check and the open: cat made a plain file.
if [ -e stdin ] && [ ! -p stdin ]; then rm -f stdin; echo "session ended before the data went in" >&2; exit 2; fi
`

// SendToSession writes data, byte for byte, to the stdin of a running
// session started with Stdin. The command does not see EOF afterwards.
func (c *Client) SendToSession(ctx context.Context, id string, data io.Reader) error {
	dir, err := c.sessionDir(id)
	if err != nil {
		return fmt.Errorf("send to session in guest %s: %w", c.addr, err)
	}
	var stderr bytes.Buffer
	code, err := c.Run(ctx, []string{"sh", "-c", sendScript, "sh", dir}, data, nil, &stderr)
	if err != nil {
		return fmt.Errorf("send to session %s in guest %s: %w", id, c.addr, err)
	}
	if code != 0 {
		return fmt.Errorf("send to session %s in guest %s: %s (exit %d)", id, c.addr, strings.TrimSpace(stderr.String()), code)
	}
	return nil
}

// signalScript signals the session's process group if it has not ended.
const signalScript = `cd "$1" 2>/dev/null || { echo "no session directory $1" >&2; exit 2; }
[ -e exit ] && exit 0
pid=$(cat pid 2>/dev/null) || exit 0
kill -"$2" -"$pid" 2>/dev/null || :
`

// StopSession sends sig (a name such as "TERM" or "SIGINT"; default TERM) to
// the session's process group and, if it still runs after grace, SIGKILL.
// It returns once the session has ended; stopping an ended session is a no-op.
func (c *Client) StopSession(ctx context.Context, id string, sig string, grace time.Duration) error {
	dir, err := c.sessionDir(id)
	if err != nil {
		return fmt.Errorf("stop session in guest %s: %w", c.addr, err)
	}
	name, err := signalName(sig)
	if err != nil {
		return fmt.Errorf("stop session %s in guest %s: %w", id, c.addr, err)
	}
	for _, step := range []struct {
		sig  string
		wait time.Duration
	}{{name, grace}, {"KILL", 10 * time.Second}} {
		st, err := c.SessionState(ctx, id)
		if err != nil {
			return fmt.Errorf("stop session %s: %w", id, err)
		}
		if !st.Running {
			return nil
		}
		if _, err := c.outputArgs(ctx, signalScript, dir, step.sig); err != nil {
			return fmt.Errorf("stop session %s in guest %s: signal %s: %w", id, c.addr, step.sig, err)
		}
		ended, err := c.waitSessionEnd(ctx, id, step.wait)
		if err != nil {
			return fmt.Errorf("stop session %s: %w", id, err)
		}
		if ended {
			return nil
		}
	}
	return fmt.Errorf("stop session %s in guest %s: still running after SIGKILL", id, c.addr)
}

func (c *Client) waitSessionEnd(ctx context.Context, id string, wait time.Duration) (bool, error) {
	deadline := time.Now().Add(wait)
	for {
		st, err := c.SessionState(ctx, id)
		if err != nil {
			return false, err
		}
		if !st.Running {
			return true, nil
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		t := time.NewTimer(min(c.pollEvery, time.Until(deadline)+time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
	}
}

// signalName normalises "sigterm", "SIGTERM" or "TERM" to "TERM".
func signalName(sig string) (string, error) {
	if sig == "" {
		return "TERM", nil
	}
	name := strings.TrimPrefix(strings.ToUpper(sig), "SIG")
	if unix.SignalNum("SIG"+name) == 0 {
		return "", fmt.Errorf("unknown signal %q", sig)
	}
	return name, nil
}

// ReadSessionStateDir reads a session's state from its directory on the
// host, with the work disk mounted there while the VM is stopped: nothing
// runs, and a session with a PID but no exit file was lost.
func ReadSessionStateDir(dir string) (SessionState, error) {
	var st SessionState
	if _, err := os.Stat(dir); err != nil {
		return st, fmt.Errorf("read session state %s: %w", dir, err)
	}
	if b, err := readRegular(filepath.Join(dir, "pid")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			st.PID = n
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("read session state %s: %w", dir, err)
	}
	b, err := readRegular(filepath.Join(dir, "exit"))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read session state %s: %w", dir, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return st, fmt.Errorf("read session state %s: bad exit code %q", dir, b)
	}
	st.ExitCode = &n
	return st, nil
}

// ReadSessionLogDir writes a session's stdout or stderr log from its
// directory on the host: its last tail lines, or all of it when tail <= 0.
func ReadSessionLogDir(dir, stream string, tail int, w io.Writer) error {
	name, err := logName(stream)
	if err != nil {
		return fmt.Errorf("read session log %s: %w", dir, err)
	}
	f, err := openRegular(filepath.Join(dir, name))
	if err != nil {
		return fmt.Errorf("read session log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read session log: %w", err)
	}
	off, err := tailOffset(f, fi.Size(), tail)
	if err != nil {
		return fmt.Errorf("read session log %s: %w", f.Name(), err)
	}
	if _, err := copyRange(f, off, fi.Size(), w); err != nil {
		return fmt.Errorf("read session log %s: %w", f.Name(), err)
	}
	return nil
}

// openRegular opens a regular file without following a final symlink: the
// files read from a stopped VM's disk are written by the guest, which must
// not be able to point the host at its own files.
func openRegular(p string) (*os.File, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("%s is a symbolic link", p)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	return f, nil
}

func readRegular(p string) ([]byte, error) {
	f, err := openRegular(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

// forkScript ends, in a VM restored from another's snapshot, a session that
// was running in the source (its runner first, so no exit code is written,
// then the command's process group), and moves its directory to the new
// id. A session that ended in the meantime is only moved.
const forkScript = `[ -d "$1" ] || exit 0
if [ ! -e "$1/exit" ]; then
  r=$(cat "$1/runner.pid" 2>/dev/null) || r=
  p=$(cat "$1/pid" 2>/dev/null) || p=
  [ -n "$r" ] && kill -KILL "$r" 2>/dev/null
  [ -n "$p" ] && kill -KILL -"$p" 2>/dev/null
fi
rm -f "$1/stdin"
mv "$1" "$2" && echo forked >"$2/forked"
`

// ForkSession is for a clone: the session oldID it inherited from its
// source's memory and work disk must go on only in the source, so it is
// ended here and its directory (logs up to the fork) renamed to newID.
func (c *Client) ForkSession(ctx context.Context, oldID, newID string) error {
	from, err := c.sessionDir(oldID)
	if err != nil {
		return err
	}
	to, err := c.sessionDir(newID)
	if err != nil {
		return err
	}
	if _, err := c.outputArgs(ctx, forkScript, from, to); err != nil {
		return fmt.Errorf("ending forked session %s in guest %s: %w", oldID, c.addr, err)
	}
	return nil
}
