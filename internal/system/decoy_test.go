package system

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// skipUnlessRoot skips tests that need root (cgroups, PID namespaces,
// ns_last_pid).
func skipUnlessRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to %s", why)
	}
}

// killDecoyOnCleanup kills p when the test ends. A PID reused meanwhile
// (ErrNotSameProcess) means p is already gone.
func killDecoyOnCleanup(t *testing.T, p Process) {
	t.Helper()
	t.Cleanup(func() {
		if err := p.Kill(2 * time.Second); err != nil && !errors.Is(err, ErrNotSameProcess) {
			t.Errorf("kill decoy %d: %v", p.PID, err)
		}
	})
}

func startTestDecoy(t *testing.T, argv ...string) Process {
	t.Helper()
	p, err := StartDecoy(argv)
	if err != nil {
		t.Fatal(err)
	}
	killDecoyOnCleanup(t, p)
	return p
}

// waitPIDFree waits until pid has no /proc entry (exited and reaped).
func waitPIDFree(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for pidInUse(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still present after 3s", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDecoyProgramIsValidELF(t *testing.T) {
	for goarch, want := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		t.Run(goarch, func(t *testing.T) {
			prog, err := decoyProgramFor(goarch)
			if err != nil {
				t.Fatal(err)
			}
			f, err := elf.NewFile(bytes.NewReader(prog))
			if err != nil {
				t.Fatalf("not an ELF file: %v", err)
			}
			if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Type != elf.ET_EXEC || f.Machine != want {
				t.Fatalf("header: class %v data %v type %v machine %v, want 64-bit LSB EXEC %v", f.Class, f.Data, f.Type, f.Machine, want)
			}
			if len(f.Progs) != 1 || f.Progs[0].Type != elf.PT_LOAD || f.Progs[0].Flags != elf.PF_R|elf.PF_X {
				t.Fatalf("want one R+X PT_LOAD segment, got %+v", f.Progs)
			}
			seg := f.Progs[0]
			if seg.Off != 0 || seg.Filesz != uint64(len(prog)) || f.Entry < seg.Vaddr || f.Entry >= seg.Vaddr+seg.Memsz {
				t.Fatalf("segment %+v does not map the file with entry %#x inside", seg.ProgHeader, f.Entry)
			}
			code := prog[f.Entry-seg.Vaddr:]
			if !bytes.Equal(code, decoyCode[goarch].code) {
				t.Fatalf("code at entry % x, want % x", code, decoyCode[goarch].code)
			}
		})
	}
	if _, err := decoyProgramFor("mips"); err == nil {
		t.Fatal("decoyProgramFor(mips) succeeded; want an error for an unknown GOARCH")
	}
}

func TestStartDecoyArgvExact(t *testing.T) {
	argv := []string{"firecracker", "--help", "", "--api-sock", "/run/banger/vm web/api.sock", "ünï", ""}
	p := startTestDecoy(t, argv...)
	got, err := procArgv(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, argv) {
		t.Fatalf("argv of decoy = %q, want %q", got, argv)
	}
	// A program that parsed "--help" would have exited by now.
	time.Sleep(100 * time.Millisecond)
	if !p.Alive() {
		t.Fatal("decoy exited on its own")
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !p.WaitExit(2 * time.Second) {
		t.Fatal("decoy survived SIGTERM; it should die of the default action like a VMM")
	}
}

func TestStartDecoyRefusesEmptyArgv(t *testing.T) {
	if p, err := StartDecoy(nil); err == nil {
		p.Kill(time.Second) //nolint:errcheck
		t.Fatal("StartDecoy(nil) succeeded")
	}
}

func TestStartDecoyWithPID(t *testing.T) {
	skipUnlessRoot(t, "create a PID namespace")
	for _, pid := range []int{1, 2, 4242} {
		t.Run("pid"+strconv.Itoa(pid), func(t *testing.T) {
			argv := []string{"firecracker", "--api-sock", "/run/banger/web/api.sock"}
			p, err := StartDecoyWithPID(pid, argv)
			if err != nil {
				t.Fatal(err)
			}
			killDecoyOnCleanup(t, p)
			status, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/status")
			if err != nil {
				t.Fatal(err)
			}
			nspid := nspidFields(string(status))
			if want := []string{strconv.Itoa(p.PID), strconv.Itoa(pid)}; !slices.Equal(nspid, want) {
				t.Fatalf("NSpid of decoy = %q, want %q (host pid, then pid in its namespace)", nspid, want)
			}
			if got, _ := procArgv(p.PID); !slices.Equal(got, argv) {
				t.Fatalf("argv = %q, want %q", got, argv)
			}
			// The proof works on host PIDs whatever namespace the process is in.
			id, err := CaptureIdentity(p.PID)
			if err != nil {
				t.Fatal(err)
			}
			if err := id.Prove(Expectation{}); err != nil {
				t.Fatal(err)
			}

			// Killing the decoy must tear the namespace down (its init included).
			ns, err := os.Readlink("/proc/" + strconv.Itoa(p.PID) + "/ns/pid")
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Kill(2 * time.Second); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(3 * time.Second)
			for {
				left := processesInPIDNS(t, ns)
				if len(left) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("processes %v still in the decoy's pid namespace %s after it was killed", left, ns)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

func TestStartDecoyWithPIDRefusesBadPID(t *testing.T) {
	skipUnlessRoot(t, "create a PID namespace")
	for _, pid := range []int{0, -1} {
		if p, err := StartDecoyWithPID(pid, []string{"x"}); err == nil {
			p.Kill(time.Second) //nolint:errcheck
			t.Fatalf("StartDecoyWithPID(%d) succeeded", pid)
		}
	}
}

func nspidFields(status string) []string {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return strings.Fields(rest)
		}
	}
	return nil
}

// processesInPIDNS lists live (non-zombie) processes whose pid namespace link is ns.
func processesInPIDNS(t *testing.T, ns string) []int {
	t.Helper()
	pids, err := ListPIDs()
	if err != nil {
		t.Fatal(err)
	}
	var in []int
	for _, pid := range pids {
		if l, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/pid"); err == nil && l == ns {
			if _, err := ProcStartTime(pid); err == nil {
				in = append(in, pid)
			}
		}
	}
	return in
}

func TestStartDecoyAtHostPID(t *testing.T) {
	skipUnlessRoot(t, "write /proc/sys/kernel/ns_last_pid")
	argv := []string{"firecracker", "--api-sock", "/run/banger/web/api.sock"}
	first := startTestDecoy(t, argv...)
	if err := first.Kill(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitPIDFree(t, first.PID)

	second, err := StartDecoyAtHostPID(first.PID, argv)
	if errors.Is(err, errHostPIDRace) {
		t.Skipf("host too busy forking to get pid %d: %v", first.PID, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	killDecoyOnCleanup(t, second)
	if second.PID != first.PID {
		t.Fatalf("got pid %d, want %d", second.PID, first.PID)
	}
	if got, _ := procArgv(second.PID); !slices.Equal(got, argv) {
		t.Fatalf("argv = %q, want %q", got, argv)
	}

	// A pid in use is refused at once, without touching that process.
	if p, err := StartDecoyAtHostPID(second.PID, argv); err == nil || !strings.Contains(err.Error(), "in use") {
		if err == nil {
			p.Kill(time.Second) //nolint:errcheck
		}
		t.Fatalf("StartDecoyAtHostPID on a live pid: err = %v, want an \"in use\" error", err)
	}
	if !second.Alive() {
		t.Fatal("the process at the requested pid died")
	}
}

func TestDecoyCgroupRemoveCleansUp(t *testing.T) {
	skipUnlessRoot(t, "create cgroups")
	cg, err := NewDecoyCgroup("pids")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cg.Remove() }) //nolint:errcheck // checked below; this is the safety net
	if !strings.HasPrefix(cg.Ref, "pids:/") || !strings.Contains(cg.Ref, "/banger-test-") {
		t.Fatalf("Ref = %q, want pids:/…/banger-test-…/decoy", cg.Ref)
	}
	p := startTestDecoy(t, "decoy-in-cgroup")
	if err := cg.Add(p.PID); err != nil {
		t.Fatal(err)
	}
	before, err := ProcCgroup(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	if !before.In(cg.Ref) {
		t.Fatalf("decoy not in %s after Add: %+v", cg.Ref, before)
	}
	// Remove with the decoy still inside: it must move it out, not fail.
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{cg.dir, cg.parent} {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still exists after Remove (stat: %v)", dir, err)
		}
	}
	if !p.Alive() {
		t.Fatal("Remove killed the decoy; it should only move it")
	}
	self, _ := ProcCgroup(os.Getpid())
	after, _ := ProcCgroup(p.PID)
	if after.V1["pids"] != self.V1["pids"] {
		t.Fatalf("decoy left in pids:%s after Remove, want this process's pids:%s", after.V1["pids"], self.V1["pids"])
	}
}

func TestWriteDecoyProgramRuns(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "fc")
	if err := WriteDecoyProgram(exe); err != nil {
		t.Fatal(err)
	}
	p, err := StartDecoyFrom(exe, []string{"fc", "--version"})
	if errors.Is(err, os.ErrPermission) {
		t.Skipf("cannot exec from %s (noexec mount?): %v", dir, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	killDecoyOnCleanup(t, p)
	got, err := procExe(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := filepath.EvalSymlinks(exe)
	if got != want {
		t.Fatalf("exe = %q, want %q", got, want)
	}
	time.Sleep(50 * time.Millisecond)
	if !p.Alive() {
		t.Fatal("decoy from file exited on its own")
	}
}
