package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"
)

// TestRun: vm run boots a guest and runs one command in it, passing its
// output, exit code and argv through unchanged.
func TestRun(t *testing.T) {
	requireSuite(t)
	mustBanger(t, "daemon", "start") // keep daemon startup out of the timings
	const name = "e2e-run"
	deleteAtEnd(t, name)

	start := time.Now()
	mustBanger(t, append(append([]string{"vm", "run", "--name", name}, createFlags...), "--", "true")...)
	first := time.Since(start)
	start = time.Now()
	mustBanger(t, "vm", "run", "--name", name, "--", "true")
	again := time.Since(start)
	t.Logf("TIMING vm run -- true: new VM (create, boot, first SSH) %s; VM already running %s", first.Round(time.Millisecond), again.Round(time.Millisecond))

	if out := mustBanger(t, "vm", "run", "--name", name, "--", "cat", "/etc/hostname"); out != name+"\n" {
		t.Errorf("guest hostname = %q, want %q", out, name+"\n")
	}
	for _, want := range []int{0, 1, 42} {
		_, errOut, code := banger(t, "vm", "run", "--name", name, "--", "sh", "-c", fmt.Sprintf("exit %d", want))
		if code != want {
			t.Errorf("vm run -- sh -c 'exit %d': exit code %d (stderr %q)", want, code, errOut)
		}
	}

	// Every argument must reach the guest command byte for byte: printf
	// prints each followed by a NUL, which no argument can contain.
	args := []string{"plain", "", "two words", `double"quote`, "single'quote", "$HOME", "${PATH}", "`id`", "$(id)",
		`back\slash`, "new\nline", "tab\there", "trailing space ", " leading", "unicode héllo ✓ 日本語", "*", "?", "~",
		"--", "-n", ";|&<>(){}", "#comment", "!bang", "'", `"`, "\\", "=", "a\r\nb"}
	out, errOut, code := banger(t, append([]string{"vm", "run", "--name", name, "--", "printf", `%s\0`}, args...)...)
	if code != 0 {
		t.Fatalf("printf in guest: exit %d: %s", code, errOut)
	}
	if want := strings.Join(args, "\x00") + "\x00"; out != want {
		got := strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
		t.Errorf("argv arrived changed:\n got %q\nwant %q", got, args)
	}

	out, errOut, code = banger(t, "vm", "run", "--name", name, "--", "sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2; exit 3")
	if code != 3 || out != "out1\nout2\n" || errOut != "err1\nerr2\n" {
		t.Errorf("stdout/stderr/exit = %q, %q, %d; want %q, %q, 3", out, errOut, code, "out1\nout2\n", "err1\nerr2\n")
	}
}

// TestTwoVMs: two guests boot at once and reach each other by IP and by
// name through the daemon's DNS on the bridge.
func TestTwoVMs(t *testing.T) {
	requireSuite(t)
	a, b := "e2e-a", "e2e-b"
	deleteAtEnd(t, a, b)
	for _, n := range []string{a, b} {
		mustBanger(t, append([]string{"vm", "create", "--name", n}, createFlags...)...)
	}
	start := time.Now()
	mustBanger(t, "vm", "start", a, b)
	for _, n := range []string{a, b} {
		mustBanger(t, "vm", "run", "--name", n, "--", "true")
	}
	t.Logf("TIMING two VMs started together: both answer SSH %s after vm start", time.Since(start).Round(time.Millisecond))

	ip := map[string]string{a: showVM(t, a).Runtime.GuestIP, b: showVM(t, b).Runtime.GuestIP}
	if ip[a] == "" || ip[a] == ip[b] || !strings.HasPrefix(ip[a], "172.30.0.") || !strings.HasPrefix(ip[b], "172.30.0.") {
		t.Fatalf("guest IPs %q and %q: want two distinct addresses in 172.30.0.0/24", ip[a], ip[b])
	}
	if out := mustBanger(t, "vm", "exec", a, "--", "cat", "/etc/resolv.conf"); !strings.Contains(out, "nameserver 172.30.0.1\n") {
		t.Errorf("guest resolv.conf does not point at the daemon's DNS on the bridge:\n%s", out)
	}
	for _, pair := range [][2]string{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		if out, errOut, code := banger(t, "vm", "exec", from, "--", "ping", "-c1", "-W2", ip[to]); code != 0 {
			t.Errorf("%s cannot ping %s at %s: exit %d\n%s%s", from, to, ip[to], code, out, errOut)
		}
		fqdn := to + ".banger.internal"
		// -type=a: without a type, busybox nslookup sends its A and AAAA
		// queries with the same ID, takes the second answer for a duplicate
		// of the first and waits 5 s for an AAAA answer it already had.
		out, errOut, code := banger(t, "vm", "exec", from, "--", "nslookup", "-type=a", fqdn)
		if code != 0 || !regexp.MustCompile(`Address:\s*`+regexp.QuoteMeta(ip[to])+`\s`).MatchString(out+"\n") {
			t.Errorf("%s: nslookup %s: exit %d, want address %s\n%s%s", from, fqdn, code, ip[to], out, errOut)
		}
		if out, errOut, code := banger(t, "vm", "exec", from, "--", "ping", "-c1", "-W2", fqdn); code != 0 {
			t.Errorf("%s cannot ping %s by name: exit %d\n%s%s", from, fqdn, code, out, errOut)
		}
	}
	// A name the daemon does not know is refused, not forwarded to the
	// outside (there is no upstream in the namespace anyway).
	if out, _, code := banger(t, "vm", "exec", a, "--", "nslookup", "-type=a", "nosuchvm.banger.internal"); code == 0 {
		t.Errorf("nslookup of an unknown VM name succeeded:\n%s", out)
	}
}

// TestExecSSHCopy: vm ssh and vm exec run commands with stdin; vm cp copies
// a tree both ways with modes and content intact.
func TestExecSSHCopy(t *testing.T) {
	requireSuite(t)
	const name = "e2e-cp"
	runVM(t, name)

	if out := mustBanger(t, "vm", "ssh", name, "--", "cat", "/etc/hostname"); out != name+"\n" {
		t.Errorf("vm ssh hostname = %q", out)
	}
	if _, _, code := banger(t, "vm", "ssh", name, "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("vm ssh exit code %d, want 7", code)
	}
	if _, _, code := banger(t, "vm", "exec", name, "--", "false"); code != 1 {
		t.Errorf("vm exec false: exit code %d, want 1", code)
	}
	// Binary stdin (every byte value, then random data) comes back unchanged.
	in := make([]byte, 0, 256+300<<10)
	for i := range 256 {
		in = append(in, byte(i))
	}
	in = append(in, randomBytes(300<<10, 1)...)
	out, errOut, code := bangerIn(t, in, "vm", "exec", name, "--", "cat")
	if code != 0 || !bytes.Equal([]byte(out), in) {
		t.Errorf("stdin through vm exec cat: exit %d, %d bytes back of %d, equal %v: %s", code, len(out), len(in), bytes.Equal([]byte(out), in), errOut)
	}
	if out, _, _ := bangerIn(t, []byte("a\nb\nc\n"), "vm", "ssh", name, "--", "wc", "-l"); strings.TrimSpace(out) != "3" {
		t.Errorf("stdin through vm ssh wc -l = %q, want 3", out)
	}

	// Concurrent commands share the daemon's one SSH connection to the guest
	// without mixing their streams.
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			want := strings.Repeat(fmt.Sprintf("line %d\n", i), 2000)
			out, errOut, code := runCLI(nil, cliTimeout, "vm", "exec", name, "--", "sh", "-c", fmt.Sprintf("for j in $(seq 2000); do echo line %d; echo err %d >&2; done; exit %d", i, i, i))
			if code != i || out != want || errOut != strings.Repeat(fmt.Sprintf("err %d\n", i), 2000) {
				errs <- fmt.Sprintf("concurrent exec %d: exit %d, stdout %d bytes (want %d), stderr %d bytes: %.300s", i, code, len(out), len(want), len(errOut), errOut)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	// An interactive shell on a terminal: vm ssh NAME with no command.
	if out, code := interactiveSSH(t, name, "echo $((6*7)) >/dev/tty; exit 3\n"); code != 3 || !strings.Contains(out, "42") {
		t.Errorf("interactive vm ssh: exit %d (want 3), output %q (want 42 in it)", code, out)
	}

	// Ctrl-C on vm exec reaches the guest command, and the CLI exits as a
	// shell would report the command killed by SIGINT.
	if code, errOut, left := interruptExec(t, name); code != 130 || left != "" {
		t.Errorf("vm exec interrupted: exit %d (want 130), guest processes left %q, stderr %q", code, left, errOut)
	}

	// A tree with distinct modes and a binary file.
	src := filepath.Join(t.TempDir(), "tree")
	files := map[string]struct {
		mode fs.FileMode
		data []byte
	}{
		"secret.txt":       {0o600, []byte("top secret\n")},
		"bin.dat":          {0o644, randomBytes(200<<10, 2)},
		"sub/run.sh":       {0o751, []byte("#!/bin/sh\necho hi\n")},
		"sub/deep/empty":   {0o640, nil},
		"sub/deep/nul.bin": {0o600, []byte{0, 1, 2, 0, 255, '\n', 0}},
	}
	for rel, f := range files {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, f.data, f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, f.mode) // not subject to umask
	}
	dirModes := map[string]fs.FileMode{".": 0o751, "sub": 0o700, "sub/deep": 0o755}
	for rel, m := range dirModes {
		os.Chmod(filepath.Join(src, rel), m)
	}

	mustBanger(t, "vm", "cp", src, name+":/root/")
	// In the guest: modes and checksums as on the host.
	guest := mustBanger(t, "vm", "exec", name, "--", "sh", "-c", "cd /root/tree && find . | sort | while read f; do stat -c '%a %n' \"$f\"; done; find . -type f | sort | xargs sha256sum")
	for rel, f := range files {
		sum := sha256.Sum256(f.data)
		if !strings.Contains(guest, fmt.Sprintf("%o ./%s\n", f.mode, rel)) || !strings.Contains(guest, hex.EncodeToString(sum[:])+"  ./"+rel+"\n") {
			t.Errorf("guest copy of %s: want mode %o and sha256 %x; guest listing:\n%s", rel, f.mode, sum, guest)
		}
	}
	for rel, m := range dirModes {
		p := "./" + rel
		if rel == "." {
			p = "."
		}
		if !strings.Contains(guest, fmt.Sprintf("%o %s\n", m, p)) {
			t.Errorf("guest copy of dir %s: want mode %o; guest listing:\n%s", rel, m, guest)
		}
	}

	// And back: into a new path, then compare the trees.
	back := filepath.Join(t.TempDir(), "back")
	mustBanger(t, "vm", "cp", name+":/root/tree", back)
	if diff := compareTrees(src, back); diff != "" {
		t.Errorf("tree copied to the guest and back differs:\n%s", diff)
	}
	// A single file into an existing directory keeps its name.
	into := t.TempDir()
	mustBanger(t, "vm", "cp", name+":/root/tree/secret.txt", into)
	if b, err := os.ReadFile(filepath.Join(into, "secret.txt")); err != nil || string(b) != "top secret\n" {
		t.Errorf("single file copied back: %q, %v", b, err)
	}
}

// TestSessions: a detached command's output, stdin and stop; its logs stay
// readable from the work disk after the VM stopped.
func TestSessions(t *testing.T) {
	requireSuite(t)
	const name = "e2e-sess"
	runVM(t, name)

	if out := mustBanger(t, "vm", "session", "start", name, "--name", "loop", "--", "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"); strings.TrimSpace(out) != "loop" {
		t.Errorf("session start printed %q, want loop", out)
	}
	mustBanger(t, "vm", "session", "start", name, "--name", "echo", "--stdin", "--", "sh", "-c", `while read l; do echo "got:$l"; done`)
	mustBanger(t, "vm", "session", "start", name, "--name", "quick", "--", "sh", "-c", "echo quick out; echo quick err >&2; exit 7")

	tick := regexp.MustCompile(`^tick (\d+)\ntick (\d+)\n$`)
	eventually(t, 20*time.Second, "two ticks in the loop session's tail", func() (bool, string) {
		out, errOut, _ := banger(t, "vm", "session", "logs", name, "loop", "--tail", "2")
		m := tick.FindStringSubmatch(out)
		return m != nil && m[1] != m[2], out + errOut
	})
	mustBanger(t, "vm", "session", "send", name, "echo", "hello\n")
	if _, errOut, code := bangerIn(t, []byte("from stdin\n"), "vm", "session", "send", name, "echo", "-"); code != 0 {
		t.Errorf("session send -: exit %d: %s", code, errOut)
	}
	eventually(t, 20*time.Second, "the echo session answering what was sent", func() (bool, string) {
		out, _, _ := banger(t, "vm", "session", "logs", name, "echo")
		return out == "got:hello\ngot:from stdin\n", out
	})
	eventually(t, 20*time.Second, "the quick session exited with code 7", func() (bool, string) {
		s := sessions(t, name)["quick"]
		return s.Status == client.SessionExited && s.ExitCode != nil && *s.ExitCode == 7, fmt.Sprintf("%+v", s)
	})
	if out := mustBanger(t, "vm", "session", "logs", name, "quick", "--stream", "stderr"); out != "quick err\n" {
		t.Errorf("quick stderr = %q", out)
	}
	stopOut := mustBanger(t, "vm", "session", "stop", name, "loop", "--grace", "2s")
	if s := sessions(t, name)["loop"]; s.Status == client.SessionRunning {
		t.Errorf("loop still running after session stop (stop printed %q): %+v", stopOut, s)
	}
	lastTick := mustBanger(t, "vm", "session", "logs", name, "loop", "--tail", "1")

	// Stop the VM: the logs are read from its work disk now.
	mustBanger(t, "vm", "stop", name)
	if out := mustBanger(t, "vm", "session", "logs", name, "loop", "--tail", "1"); out != lastTick || !strings.HasPrefix(out, "tick ") {
		t.Errorf("loop log tail after vm stop = %q, want %q", out, lastTick)
	}
	if out := mustBanger(t, "vm", "session", "logs", name, "loop", "--tail", "3"); len(strings.Split(strings.TrimSuffix(out, "\n"), "\n")) != 3 {
		t.Errorf("loop --tail 3 after vm stop = %q", out)
	}
	if out := mustBanger(t, "vm", "session", "logs", name, "echo"); out != "got:hello\ngot:from stdin\n" {
		t.Errorf("echo log after vm stop = %q", out)
	}
	list := sessions(t, name)
	if s := list["quick"]; s.Status != client.SessionExited || s.ExitCode == nil || *s.ExitCode != 7 {
		t.Errorf("quick after vm stop: %+v, want exited with code 7", s)
	}
	if s := list["echo"]; s.Status != client.SessionLost {
		t.Errorf("echo (running when the VM stopped) after vm stop: status %q, want lost", s.Status)
	}
	if s := list["loop"]; s.Status == client.SessionRunning || s.Status == client.SessionLost {
		t.Errorf("loop (stopped before the VM) after vm stop: status %q", s.Status)
	}
	if _, errOut, code := banger(t, "vm", "session", "send", name, "echo", "late\n"); code == 0 {
		t.Errorf("session send to a stopped VM succeeded")
	} else if errOut == "" {
		t.Errorf("session send to a stopped VM failed without a message")
	}
}

// TestPortForward: a published host port reaches a server in the guest
// while it runs, and refuses once it stopped.
func TestPortForward(t *testing.T) {
	requireSuite(t)
	const name = "e2e-port"
	deleteAtEnd(t, name)
	mustBanger(t, append(append([]string{"vm", "run", "--name", name, "-p", "127.0.0.1:18080:8080"}, createFlags...), "--",
		"sh", "-c", "mkdir -p /root/www && echo hello from the guest > /root/www/hello.txt")...)
	mustBanger(t, "vm", "session", "start", name, "--name", "httpd", "--", "httpd", "-f", "-p", "8080", "-h", "/root/www")
	if out := mustBanger(t, "vm", "port", name); strings.TrimSpace(out) != "127.0.0.1:18080:8080/tcp" {
		t.Errorf("vm port lists %q", out)
	}
	get := func() (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://127.0.0.1:18080/hello.txt", nil)
		// No proxy from the environment: the request stays on loopback.
		resp, err := (&http.Client{Transport: &http.Transport{}}).Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b), err
	}
	eventually(t, 20*time.Second, "GET through the forward", func() (bool, string) {
		got, err := get()
		return err == nil && got == "200 OK hello from the guest\n", fmt.Sprintf("%q %v", got, err)
	})
	mustBanger(t, "vm", "stop", name)
	if got, err := get(); err == nil {
		t.Errorf("GET through the forward of a stopped vm answered %q", got)
	}
}

// TestRestartAndRm: the work disk survives vm restart and vm stop/start;
// vm run --rm leaves nothing.
func TestRestartAndRm(t *testing.T) {
	requireSuite(t)
	const name = "e2e-restart"
	runVM(t, name)
	mustBanger(t, "vm", "exec", name, "--", "sh", "-c", "echo kept > /work/note && echo lost > /root/note")
	before := showVM(t, name)
	mustBanger(t, "vm", "restart", name)
	mustBanger(t, "vm", "run", "--name", name, "--", "true") // wait for ssh
	after := showVM(t, name)
	if after.Live == nil || !after.Live.Alive || after.Live.Handles.PID == before.Live.Handles.PID {
		t.Errorf("vm restart: live %+v, want a new VMM process (was %d)", after.Live, before.Live.Handles.PID)
	}
	if out := mustBanger(t, "vm", "exec", name, "--", "cat", "/work/note"); out != "kept\n" {
		t.Errorf("work disk after restart: %q", out)
	}
	// "rcS done" is the default image's readiness line on the serial console.
	if out := mustBanger(t, "vm", "logs", name); !strings.Contains(out, "rcS done") {
		t.Errorf("vm logs does not show the guest's boot:\n%s", tail(out, 10))
	}
	mustBanger(t, "vm", "stop", name)
	if vm := showVM(t, name); vm.Runtime.State != client.StateStopped {
		t.Errorf("after vm stop: state %s", vm.Runtime.State)
	}
	mustBanger(t, "vm", "start", name)
	if out := mustBanger(t, "vm", "run", "--name", name, "--", "cat", "/work/note"); out != "kept\n" {
		t.Errorf("work disk after stop and start: %q", out)
	}

	const rm = "e2e-rm"
	deleteAtEnd(t, rm)
	if out := mustBanger(t, append(append([]string{"vm", "run", "--rm", "--name", rm}, createFlags...), "--", "cat", "/etc/hostname")...); out != rm+"\n" {
		t.Errorf("vm run --rm output %q", out)
	}
	if list := mustBanger(t, "vm", "list", "-q"); strings.Contains(list, rm) {
		t.Errorf("vm run --rm left the vm: %q", list)
	}
}

// TestDaemonKilled: bangerd dies by SIGKILL while a VM runs; the next command
// starts a new daemon whose reconcile keeps the VM.
func TestDaemonKilled(t *testing.T) {
	requireSuite(t)
	const name = "e2e-crash"
	runVM(t, name)
	before := showVM(t, name)
	if before.Live == nil || !before.Live.Alive || before.Live.Handles.PID == 0 {
		t.Fatalf("vm not alive before the crash: %+v", before.Live)
	}
	mustBanger(t, "vm", "session", "start", name, "--name", "count", "--", "sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done")
	d := daemonPID()
	if d.PID == 0 {
		t.Fatal("no bangerd PID in the state directory lock")
	}
	if err := d.Kill(5 * time.Second); err != nil {
		t.Fatalf("kill -9 bangerd %d: %v", d.PID, err)
	}
	after := showVM(t, name) // auto-starts a daemon
	if nd := daemonPID(); nd.PID == 0 || nd == d {
		t.Errorf("no new daemon after the crash (old %d, now %+v)", d.PID, nd)
	}
	if after.Runtime.State != client.StateRunning || after.Live == nil || !after.Live.Alive || after.Live.Handles.PID != before.Live.Handles.PID {
		t.Fatalf("after daemon crash: state %s, live %+v; want running, alive, PID %d", after.Runtime.State, after.Live, before.Live.Handles.PID)
	}
	if after.Live.Handles.TapDevice != before.Live.Handles.TapDevice {
		t.Errorf("tap changed across the daemon crash: %q -> %q", before.Live.Handles.TapDevice, after.Live.Handles.TapDevice)
	}
	if out := mustBanger(t, "vm", "ssh", name, "--", "cat", "/etc/hostname"); out != name+"\n" {
		t.Errorf("vm ssh after daemon crash: %q", out)
	}
	// The guest session kept running through the crash: the new daemon
	// sees it running and its output still grows.
	if s := sessions(t, name)["count"]; s.Status != client.SessionRunning {
		t.Errorf("session after daemon crash: %+v, want running", s)
	}
	first := mustBanger(t, "vm", "session", "logs", name, "count", "--tail", "1")
	eventually(t, 10*time.Second, "session output growing after the daemon crash", func() (bool, string) {
		out, _, _ := banger(t, "vm", "session", "logs", name, "count", "--tail", "1")
		return out != first && out != "", out
	})
	mustBanger(t, "vm", "delete", name)
	if p, ok := qemuFor(before.Runtime.APISockPath); ok {
		t.Errorf("qemu %d still runs after vm delete", p.PID)
	}
	if links, _ := linkNames(); slices.Contains(links, before.Live.Handles.TapDevice) {
		t.Errorf("tap %s still exists after vm delete", before.Live.Handles.TapDevice)
	}
}

// TestVMMKilledWhileDaemonDown: the VMM dies while no daemon runs; the next
// daemon's reconcile records the VM stopped and removes its tap and sockets.
func TestVMMKilledWhileDaemonDown(t *testing.T) {
	requireSuite(t)
	const name = "e2e-vmmdead"
	runVM(t, name)
	before := showVM(t, name)
	if before.Live == nil || !before.Live.Alive || before.Live.Handles.TapDevice == "" {
		t.Fatalf("vm not alive with a tap before the test: %+v", before.Live)
	}
	sock := before.Runtime.APISockPath
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("api socket of a running vm: %v", err)
	}
	mustBanger(t, "daemon", "stop")
	q, ok := qemuFor(sock)
	if !ok {
		t.Fatalf("no qemu process with %s in its argv", sock)
	}
	if q.PID != before.Live.Handles.PID {
		t.Errorf("qemu found by its socket is pid %d, the daemon recorded %d", q.PID, before.Live.Handles.PID)
	}
	if err := q.Kill(5 * time.Second); err != nil {
		t.Fatalf("kill -9 qemu %d: %v", q.PID, err)
	}
	after := showVM(t, name) // auto-starts the daemon, which reconciles
	if after.Runtime.State != client.StateStopped || !strings.Contains(after.Runtime.LastError, "gone at daemon startup") {
		t.Errorf("after the VMM died: state %s, last error %q; want stopped with the reason", after.Runtime.State, after.Runtime.LastError)
	}
	if after.Live != nil && after.Live.Alive {
		t.Errorf("vm reported alive after its VMM was killed: %+v", after.Live)
	}
	if links, _ := linkNames(); slices.Contains(links, before.Live.Handles.TapDevice) {
		t.Errorf("tap %s still exists after reconcile", before.Live.Handles.TapDevice)
	}
	for _, p := range []string{sock, before.Runtime.VSockPath} {
		if p == "" {
			continue
		}
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("socket %s still exists after reconcile", p)
		}
	}
	// The VM boots again from its stopped state.
	if out := mustBanger(t, "vm", "run", "--name", name, "--", "cat", "/etc/hostname"); out != name+"\n" {
		t.Errorf("restarted vm hostname %q", out)
	}
}

// TestBadInput: a missing VMM is refused at create; a guest that never
// answers fails vm run with the console tail and leaves no VMM behind.
func TestBadInput(t *testing.T) {
	requireSuite(t)
	if _, err := system.LookPath("firecracker"); err == nil {
		t.Log("firecracker is installed: skipping the missing-VMM case")
	} else {
		deleteAtEnd(t, "e2e-fc")
		out, errOut, code := banger(t, append([]string{"vm", "create", "--name", "e2e-fc", "--vmm", "firecracker"}, createFlags...)...)
		if code == 0 || !strings.Contains(errOut, "firecracker") || !strings.Contains(errOut, "not found") {
			t.Errorf("vm create --vmm firecracker without firecracker: exit %d\nstdout %q\nstderr %q; want a non-zero exit naming the missing binary", code, out, errOut)
		}
		if list := mustBanger(t, "vm", "list", "-q"); strings.Contains(list, "e2e-fc") {
			t.Errorf("a refused create left a VM: %q", list)
		}
	}

	// An image whose root filesystem has no init: the kernel boots, the
	// guest never answers SSH.
	var def client.Image
	if err := json.Unmarshal([]byte(mustBanger(t, "image", "show", "default")), &def); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	rootfs := filepath.Join(dir, "noinit.ext4")
	if _, err := (system.ExecRunner{}).Run(context.Background(), "mkfs.ext4", "-q", "-F", "-d", empty, rootfs, "16M"); err != nil {
		t.Fatal(err)
	}
	const img, name = "e2e-noinit", "e2e-noinit"
	args := []string{"image", "import", "--name", img, "--kernel", def.KernelPath, "--rootfs", rootfs}
	if def.InitrdPath != "" {
		args = append(args, "--initrd", def.InitrdPath)
	}
	if def.BootArgs != "" {
		args = append(args, "--boot-args", def.BootArgs)
	}
	mustBanger(t, args...)
	t.Cleanup(func() {
		if out, errOut, code := runCLI(nil, cliTimeout, "image", "delete", img); code != 0 {
			t.Errorf("cleanup: image delete %s: exit %d: %s%s", img, code, out, errOut)
		}
	})
	deleteAtEnd(t, name)
	start := time.Now()
	out, errOut, code := banger(t, append(append([]string{"vm", "run", "--name", name, "--image", img, "--wait", "20s"}, createFlags...), "--", "true")...)
	took := time.Since(start)
	if code == 0 {
		t.Fatalf("vm run of an image without init succeeded: %q", out)
	}
	// The kernel panics (no init) and QEMU exits: the wait ends with it,
	// naming the wait, the exit and the console's last lines.
	if !strings.Contains(errOut, "waiting 20s for ssh") || !strings.Contains(errOut, "VMM process exited") ||
		!strings.Contains(errOut, "last console output") || !strings.Contains(errOut, "Kernel panic") {
		t.Errorf("vm run error does not name the wait, the VMM exit and the console tail with the panic:\n%s", errOut)
	}
	t.Logf("vm run of a guest without init failed after %s:\n%s", took.Round(time.Millisecond), errOut)
	if took > 19*time.Second {
		t.Errorf("vm run --wait 20s took %s although the guest's VMM exited early", took)
	}
	// A vm run that failed before its command ran leaves no VM behind.
	if _, _, code := banger(t, "vm", "show", name); code != 3 {
		t.Errorf("vm show of the vm a failed vm run made: exit %d, want 3 (not found)", code)
	}
	if list := mustBanger(t, "vm", "list", "-q"); strings.Contains(list, name) {
		t.Errorf("the failed vm run left %q in the list", list)
	}
}

// interruptExec runs a long guest command through vm exec, sends the CLI
// SIGINT once the command runs, and returns the CLI's exit code, its stderr
// and what remains of the command in the guest.
func interruptExec(t *testing.T, name string) (code int, stderr, left string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pr, pw := io.Pipe()
	var errOut bytes.Buffer
	c, err := system.StartCommand(ctx, system.CommandSpec{
		Argv:   []string{filepath.Join(os.Getenv(binEnv), "banger"), "vm", "exec", name, "--", "sh", "-c", "echo ready; exec sleep 1234"},
		Stdout: pw, Stderr: &errOut, Dir: "/",
	})
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("vm exec: first line %q, %v", line, err)
	}
	go io.Copy(io.Discard, pr)
	if err := c.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait()
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(mustBanger(t, "vm", "exec", name, "--", "ps", "-o", "pid,args"), "\n") {
		if strings.Contains(l, "sleep 1234") {
			left += l + "\n"
		}
	}
	return st.Code, errOut.String(), left
}

// interactiveSSH runs vm ssh NAME on a pseudo-terminal, types input and
// returns what the terminal showed and the exit code.
func interactiveSSH(t *testing.T, name, input string) (string, int) {
	t.Helper()
	ptm, tty, err := system.OpenPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer ptm.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := system.StartCommand(ctx, system.CommandSpec{Argv: []string{filepath.Join(os.Getenv(binEnv), "banger"), "vm", "ssh", name}, TTY: tty, Dir: "/"})
	tty.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&out, ptm) // ends with EIO once the last tty user exits
		close(copied)
	}()
	if _, err := ptm.Write([]byte(input)); err != nil {
		t.Fatal(err)
	}
	st, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-copied:
	case <-time.After(5 * time.Second):
	}
	return out.String(), st.Code
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// compareTrees describes how tree b differs from a in names, types, modes
// and file contents; "" means equal.
func compareTrees(a, b string) string {
	list := func(root string) map[string]string {
		m := map[string]string{}
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				m["error "+p] = err.Error()
				return nil
			}
			info, _ := d.Info()
			rel, _ := filepath.Rel(root, p)
			desc := info.Mode().String()
			if info.Mode().IsRegular() {
				data, _ := os.ReadFile(p)
				sum := sha256.Sum256(data)
				desc += " " + hex.EncodeToString(sum[:8])
			}
			m[rel] = desc
			return nil
		})
		return m
	}
	la, lb := list(a), list(b)
	var diff []string
	for k, v := range la {
		if lb[k] != v {
			diff = append(diff, fmt.Sprintf("%s: %q vs %q", k, v, lb[k]))
		}
	}
	for k, v := range lb {
		if _, ok := la[k]; !ok {
			diff = append(diff, fmt.Sprintf("%s: extra %q", k, v))
		}
	}
	slices.Sort(diff)
	return strings.Join(diff, "\n")
}

// The guest powers itself off while the daemon runs: the daemon notices the
// VMM's exit, records the VM stopped and releases its tap and sockets.
func TestGuestPoweroff(t *testing.T) {
	requireSuite(t)
	const name = "e2e-poweroff"
	runVM(t, name)
	before := showVM(t, name)
	if before.Live == nil || before.Live.Handles.TapDevice == "" {
		t.Fatalf("vm not alive with a tap: %+v", before.Live)
	}
	// The command's connection may drop as the guest goes down.
	banger(t, "vm", "exec", name, "--", "poweroff")
	eventually(t, 30*time.Second, "vm recorded stopped after guest poweroff", func() (bool, string) {
		vm := showVM(t, name)
		return vm.Runtime.State == client.StateStopped, string(vm.Runtime.State) + " " + vm.Runtime.LastError
	})
	after := showVM(t, name)
	if !strings.Contains(after.Runtime.LastError, "exited") {
		t.Errorf("last error %q does not say the vm process exited", after.Runtime.LastError)
	}
	if links, _ := linkNames(); slices.Contains(links, before.Live.Handles.TapDevice) {
		t.Errorf("tap %s still exists after the guest powered off", before.Live.Handles.TapDevice)
	}
	if _, ok := qemuFor(before.Runtime.APISockPath); ok {
		t.Error("qemu still running after the guest powered off")
	}
	if _, err := os.Lstat(before.Runtime.APISockPath); err == nil {
		t.Error("api socket left after the guest powered off")
	}
}
