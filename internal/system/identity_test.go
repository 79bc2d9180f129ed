package system

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var vmmArgv = []string{"firecracker", "--api-sock", "/run/banger/web/api.sock", "--id", "web"}

// captureDecoy starts a decoy with argv and captures its identity.
func captureDecoy(t *testing.T, argv ...string) (Process, Identity) {
	t.Helper()
	p := startTestDecoy(t, argv...)
	id, err := CaptureIdentity(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	return p, id
}

// mismatch asserts that err is an *IdentityMismatchError about fact.
func mismatch(t *testing.T, err error, sentinel error, fact string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("err = %v, want %v", err, sentinel)
	}
	var me *IdentityMismatchError
	if !errors.As(err, &me) || me.Fact != fact {
		t.Fatalf("err = %#v, want an IdentityMismatchError about %s", err, fact)
	}
}

// assertAliveAfter asserts that p has not been signalled to death.
func assertAliveAfter(t *testing.T, p Process, what string) {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	if !p.Alive() {
		t.Fatalf("process %d died after %s; a process not proven ours must not be signalled", p.PID, what)
	}
}

func TestCaptureThenProveIdentity(t *testing.T) {
	p, id := captureDecoy(t, vmmArgv...)
	if id.PID != p.PID || id.Start != p.Start {
		t.Fatalf("captured pid %d start %d, want %d %d", id.PID, id.Start, p.PID, p.Start)
	}
	if id.Exe != "/memfd:banger-decoy" {
		t.Fatalf("captured exe %q, want the decoy memfd without \" (deleted)\"", id.Exe)
	}
	if !slices.Equal(id.Argv, vmmArgv) {
		t.Fatalf("captured argv %q, want %q", id.Argv, vmmArgv)
	}
	if err := id.Prove(Expectation{}); err != nil {
		t.Fatalf("Prove on the live, unchanged process: %v", err)
	}
}

func TestCaptureIdentityKeepsEmptyArguments(t *testing.T) {
	argv := []string{"fc", "", "a b", "--api-sock=/x", ""}
	_, id := captureDecoy(t, argv...)
	if !slices.Equal(id.Argv, argv) {
		t.Fatalf("captured argv %q, want %q", id.Argv, argv)
	}
}

func TestCaptureIdentityRefusesKernelThread(t *testing.T) {
	// kthreadd is PID 2 in the initial PID namespace; elsewhere PID 2 may be
	// anything, so only check when it really is a kernel thread.
	if argv, err := ProcCmdline(2); err != nil || len(argv) != 0 {
		t.Skip("pid 2 is not a kernel thread here")
	}
	if _, err := CaptureIdentity(2); err == nil {
		t.Fatal("CaptureIdentity(2) of a kernel thread succeeded")
	}
}

func TestProveIdentityRefusesOtherStartTime(t *testing.T) {
	_, id := captureDecoy(t, vmmArgv...)
	forged := id
	forged.Start++ // the same PID, started later: a reused PID
	err := forged.Prove(Expectation{})
	mismatch(t, err, ErrNotSameProcess, "start")
	if errors.Is(err, ErrIdentityMismatch) {
		t.Fatal("a start-time difference also matches ErrIdentityMismatch; want only ErrNotSameProcess")
	}
}

func TestProveIdentityGone(t *testing.T) {
	p, id := captureDecoy(t, vmmArgv...)
	if err := p.Kill(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	err := id.Prove(Expectation{})
	if !errors.Is(err, ErrProcessGone) || !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("Prove after exit: %v, want ErrProcessGone wrapping os.ErrProcessDone", err)
	}
}

func TestProveIdentityExe(t *testing.T) {
	_, id := captureDecoy(t, vmmArgv...)

	forged := id
	forged.Exe = "/usr/bin/firecracker"
	mismatch(t, forged.Prove(Expectation{}), ErrIdentityMismatch, "exe")

	// The record is right but names another binary than the caller launches.
	mismatch(t, id.Prove(Expectation{Exe: "/bin/sh"}), ErrIdentityMismatch, "exe")
}

func TestProveIdentityExeOnDisk(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	real := filepath.Join(dir, "firecracker-v1")
	link := filepath.Join(dir, "firecracker")
	if err := WriteDecoyProgram(real); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	p, err := StartDecoyFrom(link, vmmArgv)
	if errors.Is(err, os.ErrPermission) {
		t.Skipf("cannot exec from %s (noexec mount?): %v", dir, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	killDecoyOnCleanup(t, p)
	id, err := CaptureIdentity(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	if id.Exe != real {
		t.Fatalf("captured exe %q, want the resolved path %q", id.Exe, real)
	}
	if err := id.Prove(Expectation{Exe: link}); err != nil {
		t.Fatalf("Prove with the configured (symlinked) path: %v", err)
	}

	// An upgrade renames a new binary over the old one: the kernel now says
	// "firecracker-v1 (deleted)", and the process is still ours.
	next := filepath.Join(dir, "firecracker-v2")
	if err := WriteDecoyProgram(next); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, real); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.Readlink("/proc/" + strconv.Itoa(p.PID) + "/exe"); raw != real+" (deleted)" {
		t.Fatalf("precondition: /proc/PID/exe = %q, want %q", raw, real+" (deleted)")
	}
	if err := id.Prove(Expectation{Exe: link}); err != nil {
		t.Fatalf("Prove after the binary was replaced on disk: %v", err)
	}

	// Another binary, even an identical copy elsewhere, is not the one.
	other := filepath.Join(dir, "other")
	if err := WriteDecoyProgram(other); err != nil {
		t.Fatal(err)
	}
	mismatch(t, id.Prove(Expectation{Exe: other}), ErrIdentityMismatch, "exe")
	forged := id
	forged.Exe = other
	mismatch(t, forged.Prove(Expectation{}), ErrIdentityMismatch, "exe")
}

func TestProveIdentityArgvExact(t *testing.T) {
	_, id := captureDecoy(t, vmmArgv...)
	if err := id.Prove(Expectation{}); err != nil {
		t.Fatalf("control: exact argv refused: %v", err)
	}
	tests := []struct {
		name string
		argv []string
	}{
		{"one element differs", []string{"firecracker", "--api-sock", "/run/banger/web2/api.sock", "--id", "web"}},
		{"recorded element is a substring", []string{"firecracker", "--api-sock", "api.sock", "--id", "web"}},
		{"one extra element recorded", append(slices.Clone(vmmArgv), "--no-seccomp")},
		{"one element fewer recorded", vmmArgv[:4]},
		{"only the socket pair", []string{"--api-sock", "/run/banger/web/api.sock"}},
		{"joined into one string", []string{strings.Join(vmmArgv, " ")}},
		{"trailing empty argument", append(slices.Clone(vmmArgv), "")},
		{"argv[0] differs", append([]string{"/usr/bin/firecracker"}, vmmArgv[1:]...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forged := id
			forged.Argv = tt.argv
			err := forged.Prove(Expectation{})
			mismatch(t, err, ErrIdentityMismatch, "argv")
			if !strings.Contains(err.Error(), "args)") {
				t.Fatalf("message %q does not render both argvs", err)
			}
		})
	}
}

func TestProveIdentityRefusesIncompleteRecord(t *testing.T) {
	p, id := captureDecoy(t, vmmArgv...)
	for name, forge := range map[string]func(*Identity){
		"no start":   func(i *Identity) { i.Start = 0 },
		"no exe":     func(i *Identity) { i.Exe = "" },
		"no argv":    func(i *Identity) { i.Argv = nil },
		"bad pid":    func(i *Identity) { i.PID = 0 },
		"bad cgroup": func(i *Identity) { i.Cgroup = "pids:relative" },
	} {
		t.Run(name, func(t *testing.T) {
			forged := id
			forge(&forged)
			mismatch(t, forged.Prove(Expectation{}), ErrIdentityMismatch, "record")
			mismatch(t, KillProven(forged, Expectation{}, time.Second), ErrIdentityMismatch, "record")
			assertAliveAfter(t, p, "KillProven with an incomplete record")
		})
	}
	// A bare PID (what a naive caller has) must never be enough to kill.
	mismatch(t, KillProven(Identity{PID: p.PID}, Expectation{}, time.Second), ErrIdentityMismatch, "record")
	assertAliveAfter(t, p, "KillProven with a bare PID")
}

func TestSignalProvenNeverSignalsAStranger(t *testing.T) {
	p, id := captureDecoy(t, vmmArgv...)
	forgeries := map[string]struct {
		forge    func(*Identity)
		sentinel error
	}{
		"start": {func(i *Identity) { i.Start++ }, ErrNotSameProcess},
		"exe":   {func(i *Identity) { i.Exe = "/usr/bin/firecracker" }, ErrIdentityMismatch},
		"argv":  {func(i *Identity) { i.Argv = []string{"firecracker", "--api-sock", "/run/banger/web/api.sock"} }, ErrIdentityMismatch},
	}
	for fact, f := range forgeries {
		t.Run(fact, func(t *testing.T) {
			forged := id
			f.forge(&forged)
			mismatch(t, SignalProven(forged, Expectation{}, syscall.SIGKILL), f.sentinel, fact)
			assertAliveAfter(t, p, "SignalProven with a forged "+fact)
			mismatch(t, KillProven(forged, Expectation{}, time.Second), f.sentinel, fact)
			assertAliveAfter(t, p, "KillProven with a forged "+fact)
		})
	}
	mismatch(t, SignalProven(id, Expectation{Exe: "/bin/sh"}, syscall.SIGKILL), ErrIdentityMismatch, "exe")
	assertAliveAfter(t, p, "SignalProven with another expected exe")

	// Control: the true record does signal.
	if err := SignalProven(id, Expectation{}, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !p.WaitExit(2 * time.Second) {
		t.Fatal("proven process did not die of SIGTERM")
	}
	if err := SignalProven(id, Expectation{}, syscall.SIGTERM); !errors.Is(err, ErrProcessGone) {
		t.Fatalf("SignalProven after exit: %v, want ErrProcessGone", err)
	}
}

func TestKillProven(t *testing.T) {
	p, id := captureDecoy(t, vmmArgv...)
	if err := KillProven(id, Expectation{}, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Alive() {
		t.Fatal("process alive after KillProven returned nil")
	}
	// Gone is success, both as a zombie or reaped and again later.
	if err := KillProven(id, Expectation{}, time.Second); err != nil {
		t.Fatalf("KillProven on a gone process: %v, want nil", err)
	}
	waitPIDFree(t, id.PID)
	if err := KillProven(id, Expectation{}, time.Second); err != nil {
		t.Fatalf("KillProven on a reaped process: %v, want nil", err)
	}
}

func TestProveIdentityCgroup(t *testing.T) {
	skipUnlessRoot(t, "create cgroups")
	for _, controller := range []string{"pids", ""} {
		name := controller
		if name == "" {
			name = "v2"
		}
		t.Run(name, func(t *testing.T) {
			cg, err := NewDecoyCgroup(controller)
			if err != nil {
				if controller == "" {
					t.Skipf("no usable cgroup v2 hierarchy: %v", err)
				}
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := cg.Remove(); err != nil {
					t.Error(err)
				}
			})
			p := startTestDecoy(t, vmmArgv...)
			if err := cg.Add(p.PID); err != nil {
				t.Fatal(err)
			}
			id, err := CaptureIdentity(p.PID)
			if err != nil {
				t.Fatal(err)
			}
			if controller == "pids" && id.Cgroup != cg.Ref {
				t.Fatalf("CaptureIdentity recorded cgroup %q, want the decoy's %q", id.Cgroup, cg.Ref)
			}
			id.Cgroup = cg.Ref
			if err := id.Prove(Expectation{Cgroup: cg.Ref}); err != nil {
				t.Fatalf("Prove in the VM's cgroup: %v", err)
			}
			other := strings.TrimSuffix(cg.Ref, "/decoy") + "/other"
			mismatch(t, id.Prove(Expectation{Cgroup: other}), ErrIdentityMismatch, "cgroup")

			if err := cg.MoveOut(p.PID); err != nil {
				t.Fatal(err)
			}
			err = id.Prove(Expectation{})
			mismatch(t, err, ErrIdentityMismatch, "cgroup")
			if !strings.Contains(err.Error(), cg.Ref) {
				t.Fatalf("message %q does not name the recorded cgroup", err)
			}
			mismatch(t, SignalProven(id, Expectation{}, syscall.SIGKILL), ErrIdentityMismatch, "cgroup")
			assertAliveAfter(t, p, "SignalProven outside the recorded cgroup")

			if err := cg.Add(p.PID); err != nil {
				t.Fatal(err)
			}
			if err := KillProven(id, Expectation{Cgroup: cg.Ref}, 2*time.Second); err != nil {
				t.Fatalf("KillProven back in the cgroup: %v", err)
			}
		})
	}
}

// TestProveIdentityReusedPID is the threat itself: a stranger with the dead
// VMM's PID, executable and argv. Only the start time and the cgroup tell it
// apart.
func TestProveIdentityReusedPID(t *testing.T) {
	skipUnlessRoot(t, "create cgroups and choose a host PID")
	cg, err := NewDecoyCgroup("pids")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cg.Remove(); err != nil {
			t.Error(err)
		}
	})
	vmm := startTestDecoy(t, vmmArgv...)
	if err := cg.Add(vmm.PID); err != nil {
		t.Fatal(err)
	}
	id, err := CaptureIdentity(vmm.PID)
	if err != nil {
		t.Fatal(err)
	}
	id.Cgroup = cg.Ref
	if err := vmm.Kill(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitPIDFree(t, vmm.PID)
	// Start times count clock ticks (1/100 s): let one pass so that they differ.
	time.Sleep(30 * time.Millisecond)

	stranger, err := StartDecoyAtHostPID(id.PID, vmmArgv)
	if errors.Is(err, errHostPIDRace) {
		t.Skipf("host too busy forking to reuse pid %d: %v", id.PID, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	killDecoyOnCleanup(t, stranger)
	now, err := CaptureIdentity(stranger.PID)
	if err != nil {
		t.Fatal(err)
	}
	if now.PID != id.PID || now.Exe != id.Exe || !slices.Equal(now.Argv, id.Argv) {
		t.Fatalf("precondition: stranger %+v should share pid, exe and argv with %+v", now, id)
	}

	mismatch(t, id.Prove(Expectation{}), ErrNotSameProcess, "start")
	mismatch(t, SignalProven(id, Expectation{}, syscall.SIGKILL), ErrNotSameProcess, "start")
	mismatch(t, KillProven(id, Expectation{}, time.Second), ErrNotSameProcess, "start")
	assertAliveAfter(t, stranger, "signalling the dead VMM's record")

	// Reuse within one clock tick would leave the start time equal: the
	// cgroup still refuses.
	sameTick := id
	sameTick.Start = now.Start
	mismatch(t, KillProven(sameTick, Expectation{}, time.Second), ErrIdentityMismatch, "cgroup")
	assertAliveAfter(t, stranger, "signalling a same-tick record")
}

func TestIdentityJSON(t *testing.T) {
	id := Identity{PID: 42, Start: 7, Exe: "/usr/bin/firecracker", Argv: []string{"firecracker", ""}}
	b, err := json.Marshal(id)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"pid":42,"start":7,"exe":"/usr/bin/firecracker","argv":["firecracker",""]}`; string(b) != want {
		t.Fatalf("json = %s, want %s", b, want)
	}
	id.Cgroup = "pids:/banger/web"
	b, _ = json.Marshal(id)
	var back Identity
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, id) {
		t.Fatalf("round trip: %+v, want %+v", back, id)
	}
}

func TestIdentityMismatchErrorMatching(t *testing.T) {
	start := &IdentityMismatchError{PID: 1, Fact: "start", Want: "1", Got: "2"}
	if !errors.Is(start, ErrNotSameProcess) || errors.Is(start, ErrIdentityMismatch) {
		t.Fatal("start mismatch should match ErrNotSameProcess only")
	}
	exe := &IdentityMismatchError{PID: 1, Fact: "exe", Want: `"/a"`, Got: `"/b"`}
	if !errors.Is(exe, ErrIdentityMismatch) || errors.Is(exe, ErrNotSameProcess) {
		t.Fatal("exe mismatch should match ErrIdentityMismatch only")
	}
	if msg := exe.Error(); !strings.Contains(msg, "exe") || !strings.Contains(msg, `"/a"`) || !strings.Contains(msg, `"/b"`) {
		t.Fatalf("message %q lacks the fact or a value", msg)
	}
}

func TestRenderArgv(t *testing.T) {
	long := strings.Repeat("x", 500)
	argv := []string{"firecracker", "--a", "1", "--b", "2", "--c", "3", "--api-sock", long, "--d", "4", "--e"}
	got := renderArgv(argv, 8)
	for _, want := range []string{`"firecracker"`, `"--api-sock"`, "…", "(12 args)"} {
		if !strings.Contains(got, want) {
			t.Errorf("renderArgv = %s; missing %s", got, want)
		}
	}
	if strings.Contains(got, `"--c"`) || strings.Contains(got, `"--e"`) {
		t.Errorf("renderArgv = %s; elements far from the difference should be elided", got)
	}
	if len(got) > 200 {
		t.Errorf("renderArgv is %d bytes long, want a compact rendering: %s", len(got), got)
	}
	if got := renderArgv([]string{"a", "b"}, 2); got != `["a" "b"] (2 args)` {
		t.Errorf("short argv rendered %s", got)
	}
	if got := renderArgv(nil, 0); got != `[] (0 args)` {
		t.Errorf("empty argv rendered %s", got)
	}
}

func TestSplitCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a\x00", []string{"a"}},
		{"a\x00b c\x00", []string{"a", "b c"}},
		{"a\x00\x00", []string{"a", ""}},
		{"a\x00\x00\x00", []string{"a", "", ""}},
		{"rewritten title", []string{"rewritten title"}}, // setproctitle leaves no NUL
	}
	for _, tt := range tests {
		if got := splitCmdline([]byte(tt.in)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("splitCmdline(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestParseCgroupFile(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want CgroupMembership
	}{
		{"v2 only", "0::/user.slice/user-0.slice/session-1.scope\n",
			CgroupMembership{Unified: "/user.slice/user-0.slice/session-1.scope"}},
		{"v2 root", "0::/\n", CgroupMembership{Unified: "/"}},
		{"v1 co-mounted and named", "12:pids:/banger/web\n3:cpu,cpuacct:/x\n1:name=systemd:/init.scope\n",
			CgroupMembership{V1: map[string]string{"pids": "/banger/web", "cpu": "/x", "cpuacct": "/x", "name=systemd": "/init.scope"}}},
		{"hybrid", "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/9ea0\n0::/\n",
			CgroupMembership{Unified: "/", V1: map[string]string{"name=systemd": "/", "pids": "/", "memory": "/process_api/9ea0"}}},
		{"path with colon", "5:pids:/a:b\n", CgroupMembership{V1: map[string]string{"pids": "/a:b"}}},
		{"no trailing newline", "0::/a", CgroupMembership{Unified: "/a"}},
		{"empty", "", CgroupMembership{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCgroupFile(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	for _, bad := range []string{
		"garbage\n",
		"x:pids:/a\n",
		"-1:pids:/a\n",
		"2::/a\n",                // v1 hierarchy without controllers
		"0::relative\n",          // paths are absolute
		"4:,:/a\n",               // empty controller
		"4:pids:/a\n5:pids:/b\n", // controller twice
		"0::/a\n0::/b\n",         // two v2 lines
		"4:pids\n",               // no path field
	} {
		if m, err := ParseCgroupFile(bad); err == nil {
			t.Errorf("ParseCgroupFile(%q) = %+v, want an error", bad, m)
		}
	}
}

func TestCgroupMembershipIn(t *testing.T) {
	m := CgroupMembership{Unified: "/a/b", V1: map[string]string{
		"memory": "/m", "cpu": "/x", "cpuacct": "/x", "name=systemd": "/s", "pids": "/",
	}}
	tests := []struct {
		ref  string
		want bool
	}{
		{"/a/b", true},
		{"/a", false},     // a parent is not membership
		{"/a/b/c", false}, // nor a child
		{"/a/bc", false},
		{"memory:/m", true},
		{"memory:/a/b", false}, // v2 path under a v1 controller
		{"cpu:/x", true},
		{"cpuacct:/x", true},
		{"pids:/", true},
		{"pids:/x", false},
		{"blkio:/x", false}, // no such hierarchy
		{"name=systemd:/s", true},
		{"memory:m", false},       // invalid: relative
		{"/a/b/", false},          // invalid: not clean
		{":/a/b", false},          // invalid: empty controller
		{"cpu,cpuacct:/x", false}, // invalid: one controller per ref
		{"", false},
	}
	for _, tt := range tests {
		if got := m.In(tt.ref); got != tt.want {
			t.Errorf("In(%q) = %v, want %v", tt.ref, got, tt.want)
		}
	}
	if (CgroupMembership{V1: map[string]string{"pids": "/a"}}).In("/a") {
		t.Error("a v1-only membership matched a v2 ref")
	}
}

func TestParseCgroupRef(t *testing.T) {
	tests := []struct {
		ref, controller, path string
		ok                    bool
	}{
		{"/banger/web", "", "/banger/web", true},
		{"/", "", "/", true},
		{"pids:/banger/web", "pids", "/banger/web", true},
		{"name=systemd:/x", "name=systemd", "/x", true},
		{"pids:/a:b", "pids", "/a:b", true},
		{"pids", "", "", false},
		{"pids:", "", "", false},
		{"pids:a", "", "", false},
		{"/a/../b", "", "", false},
		{"/a//b", "", "", false},
		{"a/b:/x", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		c, p, err := ParseCgroupRef(tt.ref)
		if (err == nil) != tt.ok || c != tt.controller || p != tt.path {
			t.Errorf("ParseCgroupRef(%q) = %q, %q, %v; want %q, %q, ok=%v", tt.ref, c, p, err, tt.controller, tt.path, tt.ok)
		}
		if tt.ok && CgroupRef(c, p) != tt.ref {
			t.Errorf("CgroupRef(%q, %q) = %q, want %q", c, p, CgroupRef(c, p), tt.ref)
		}
	}
}

func TestPreferredCgroup(t *testing.T) {
	tests := []struct {
		name string
		m    CgroupMembership
		want string
	}{
		{"v2 only", CgroupMembership{Unified: "/banger/web"}, "/banger/web"},
		{"v2 root proves nothing", CgroupMembership{Unified: "/"}, ""},
		{"pids first", CgroupMembership{Unified: "/u", V1: map[string]string{"pids": "/p", "memory": "/m"}}, "pids:/p"},
		{"memory when pids is root", CgroupMembership{Unified: "/", V1: map[string]string{"pids": "/", "memory": "/m"}}, "memory:/m"},
		{"unified on hybrid", CgroupMembership{Unified: "/u", V1: map[string]string{"pids": "/", "memory": "/"}}, "/u"},
		{"named hierarchy last", CgroupMembership{Unified: "/", V1: map[string]string{"pids": "/", "name=systemd": "/s"}}, "name=systemd:/s"},
		{"all root", CgroupMembership{Unified: "/", V1: map[string]string{"pids": "/", "name=systemd": "/"}}, ""},
	}
	for _, tt := range tests {
		if got := preferredCgroup(tt.m); got != tt.want {
			t.Errorf("%s: preferredCgroup = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestProcInCgroupSelf(t *testing.T) {
	self, err := ProcCgroup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for c, p := range self.V1 {
		if in, err := ProcInCgroup(os.Getpid(), CgroupRef(c, p)); err != nil || !in {
			t.Errorf("ProcInCgroup(self, %s) = %v, %v; want true", CgroupRef(c, p), in, err)
		}
	}
	if self.Unified != "" {
		if in, err := ProcInCgroup(os.Getpid(), self.Unified); err != nil || !in {
			t.Errorf("ProcInCgroup(self, %s) = %v, %v; want true", self.Unified, in, err)
		}
	}
	if in, err := ProcInCgroup(os.Getpid(), "/banger-never-exists"); err != nil || in {
		t.Errorf("ProcInCgroup(self, /banger-never-exists) = %v, %v; want false", in, err)
	}
	if _, err := ProcInCgroup(os.Getpid(), "relative"); err == nil {
		t.Error("ProcInCgroup with an invalid ref: want an error")
	}
}
