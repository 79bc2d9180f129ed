package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/routers"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/system"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker/fcdouble"
)

// jailerUID is the VMM's user in these tests: one no account uses.
const jailerUID = 231457

func jailerMachine() vmm.Machine {
	return vmm.Machine{
		ID: "0123456789abcdef", Name: "web", VCPUs: 1, MemoryMiB: 128,
		Kernel: "/k/vmlinux", RootDisk: "/d/root.img", APISock: "/r/api.sock",
		Jailer: &vmm.Jailer{
			Binary: "/usr/bin/jailer", ExecFile: "/usr/bin/firecracker", ChrootBase: "/srv/jailer",
			UID: 200001, GID: 200001, CgroupVersion: 1, ParentCgroup: "banger",
			Cgroups: []string{"memory.limit_in_bytes=536870912", "pids.max=512"},
		},
	}
}

func TestJailerArgv(t *testing.T) {
	m := jailerMachine()
	argv, err := JailerArgv(m)
	if err != nil {
		t.Fatal(err)
	}
	want := "/usr/bin/jailer --id 0123456789abcdef --exec-file /usr/bin/firecracker --uid 200001 --gid 200001" +
		" --chroot-base-dir /srv/jailer --cgroup-version 1 --parent-cgroup banger" +
		" --cgroup memory.limit_in_bytes=536870912 --cgroup pids.max=512 --new-pid-ns -- --api-sock /run/firecracker.socket"
	if got := strings.Join(argv, " "); got != want {
		t.Fatalf("argv\n got %s\nwant %s", got, want)
	}
	m.Jailer.NetNS = "/run/netns/x"
	argv, _ = JailerArgv(m)
	if !system.ArgvHasPair(argv, "--netns", "/run/netns/x") {
		t.Fatalf("no --netns in %q", argv)
	}
	if got, want := m.Jailer.ChrootDir(m.ID), "/srv/jailer/firecracker/0123456789abcdef/root"; got != want {
		t.Fatalf("ChrootDir = %s, want %s", got, want)
	}
	jm := jailedView(m)
	if jm.Kernel != "/vmlinux" || jm.RootDisk != "/rootfs" || jm.APISock != "/srv/jailer/firecracker/0123456789abcdef/root/run/firecracker.socket" {
		t.Fatalf("jailed view: kernel %s root %s api %s", jm.Kernel, jm.RootDisk, jm.APISock)
	}
	if jm.WorkDisk != "" || jm.Initrd != "" {
		t.Fatalf("absent files got in-jail paths: %+v", jm)
	}
}

func TestJailerArgvRefusesBadInput(t *testing.T) {
	for name, change := range map[string]func(m *vmm.Machine){
		"underscore id":      func(m *vmm.Machine) { m.ID = "web_1" },
		"long id":            func(m *vmm.Machine) { m.ID = strings.Repeat("a", 65) },
		"relative exec":      func(m *vmm.Machine) { m.Jailer.ExecFile = "firecracker" },
		"root uid":           func(m *vmm.Machine) { m.Jailer.UID = 0 },
		"cgroup version 3":   func(m *vmm.Machine) { m.Jailer.CgroupVersion = 3 },
		"parent with ..":     func(m *vmm.Machine) { m.Jailer.ParentCgroup = "a/../b" },
		"cgroup without =":   func(m *vmm.Machine) { m.Jailer.Cgroups = []string{"memory.limit_in_bytes"} },
		"cgroup with path":   func(m *vmm.Machine) { m.Jailer.Cgroups = []string{"../memory.max=1"} },
		"socket path length": func(m *vmm.Machine) { m.Jailer.ChrootBase = "/" + strings.Repeat("x", 80) },
		"with banger-jail":   func(m *vmm.Machine) { m.Confine = &vmm.Confinement{} },
		"snapshot restore":   func(m *vmm.Machine) { m.Incoming = &vmm.Incoming{File: "/s"} },
	} {
		m := jailerMachine()
		j := *m.Jailer
		m.Jailer = &j
		change(&m)
		if argv, err := JailerArgv(m); err == nil {
			t.Errorf("%s: accepted: %q", name, argv)
		}
	}
}

func TestMatchesJailedArgv(t *testing.T) {
	m := jailerMachine()
	ok := []string{"/firecracker", "--id", m.ID, "--start-time-us", "1", "--api-sock", "/run/firecracker.socket"}
	if !matchesJailedArgv(m, ok) {
		t.Fatal("the jailed firecracker's argv does not match")
	}
	for _, bad := range [][]string{
		{"/usr/bin/firecracker", "--id", m.ID, "--api-sock", "/run/firecracker.socket"},    // not the chroot's copy
		{"/firecracker", "--id", m.ID + "0", "--api-sock", "/run/firecracker.socket"},      // another id
		{"/firecracker", "--id", m.ID, "--api-sock", "/run/firecracker.socket.x"},          // another socket
		{"/usr/bin/jailer", "--id", m.ID, "--", "--api-sock", "/run/firecracker.socket"},   // the jailer itself
		{"/firecracker", "--id=" + m.ID, "--api-sock", "/run/firecracker.socket", "--id2"}, // no exact pair
	} {
		if matchesJailedArgv(m, bad) {
			t.Errorf("%q matches", bad)
		}
	}
}

// jailerRig is a machine run by the jailer double with its files in a
// fresh short directory, a cgroup parent of its own, and everything the
// test leaves removed at cleanup.
func jailerRig(t *testing.T) (*Driver, vmm.Machine) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the jailer needs root (chroot, mknod, setuid, cgroups)")
	}
	d, m := newMachine(t)
	dir := filepath.Dir(m.APISock)
	jailer := filepath.Join(dir, "jailer")
	if err := os.Symlink(doubleBin, jailer); err != nil {
		t.Fatal(err)
	}
	exec, err := filepath.EvalSymlinks(doubleBin)
	if err != nil {
		t.Fatal(err)
	}
	cgVersion, cgroups := 1, []string{"memory.limit_in_bytes=536870912", "pids.max=512"}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cgVersion, cgroups = 2, []string{"memory.max=536870912", "pids.max=512"}
	}
	parent := fmt.Sprintf("banger-jailer-test-%d", os.Getpid())
	m.Jailer = &vmm.Jailer{
		Binary: jailer, ExecFile: exec, ChrootBase: filepath.Join(dir, "j"),
		UID: jailerUID, GID: jailerUID, CgroupVersion: cgVersion, ParentCgroup: parent, Cgroups: cgroups,
	}
	for _, f := range []string{m.RootDisk, m.WorkDisk} {
		if err := os.Chown(f, jailerUID, jailerUID); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if p, ok := d.FindProcess(m); ok {
			_ = p.Kill(3 * time.Second)
		}
		_ = removeJail(m)
		for _, h := range cgroupDirs(m) {
			os.Remove(filepath.Join(h, m.ID))
			os.Remove(h)
		}
	})
	return d, m
}

// cgroupDirs are the parent cgroup directories the jailer double uses for m.
func cgroupDirs(m vmm.Machine) []string {
	if m.Jailer.CgroupVersion == 2 {
		return []string{filepath.Join("/sys/fs/cgroup", m.Jailer.ParentCgroup)}
	}
	return []string{filepath.Join("/sys/fs/cgroup/memory", m.Jailer.ParentCgroup), filepath.Join("/sys/fs/cgroup/pids", m.Jailer.ParentCgroup)}
}

func TestJailedLaunchIdentifyShutdown(t *testing.T) {
	router := swaggerRouter(t)
	d, m := jailerRig(t)
	dir := filepath.Dir(m.APISock)
	logPath := filepath.Join(dir, "requests.jsonl")
	t.Setenv(fcdouble.EnvRequestLog, logPath)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	chroot := m.Jailer.ChrootDir(m.ID)

	// The process is the real VMM, not the jailer: its executable is the
	// copy in the chroot, it runs as the VM's user, as init of a PID
	// namespace of its own, in the VM's cgroup.
	status, err := system.ProcStatus(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(status["Uid"]); len(f) == 0 || f[0] != strconv.Itoa(jailerUID) {
		t.Errorf("Uid %q, want %d", status["Uid"], jailerUID)
	}
	if f := strings.Fields(status["NSpid"]); len(f) != 2 || f[0] != strconv.Itoa(p.PID) || f[1] != "1" {
		t.Errorf("NSpid %q, want %d 1 (a new pid namespace)", status["NSpid"], p.PID)
	}
	exe, _ := os.Stat(fmt.Sprintf("/proc/%d/exe", p.PID))
	cp, _ := os.Stat(filepath.Join(chroot, filepath.Base(m.Jailer.ExecFile)))
	if exe == nil || cp == nil || !os.SameFile(exe, cp) {
		t.Errorf("pid %d does not run the chroot's copy of the binary", p.PID)
	}
	if st, err := os.Stat(filepath.Join(chroot, "dev/kvm")); err != nil || st.Sys().(*syscall.Stat_t).Uid != jailerUID {
		t.Errorf("no /dev/kvm owned by the VM's user in the jail (%v)", err)
	}
	ref := "memory:/" + m.Jailer.ParentCgroup + "/" + m.ID
	if m.Jailer.CgroupVersion == 2 {
		ref = "/" + m.Jailer.ParentCgroup + "/" + m.ID
	}
	if in, err := system.ProcInCgroup(p.PID, ref); err != nil || !in {
		t.Errorf("pid %d not in cgroup %s (%v)", p.PID, ref, err)
	}
	limit := filepath.Join(cgroupDirs(m)[0], m.ID, strings.SplitN(m.Jailer.Cgroups[0], "=", 2)[0])
	if b, err := os.ReadFile(limit); err != nil || strings.TrimSpace(string(b)) != "536870912" {
		t.Errorf("%s = %q (%v), want 536870912", limit, b, err)
	}

	if err := d.Identify(ctx, m, p); err != nil {
		t.Fatalf("Identify: %v", err)
	}
	found, ok := d.FindProcess(m)
	if !ok || found != p {
		t.Fatalf("FindProcess = %+v %v, want %+v", found, ok, p)
	}
	argv, _ := system.ProcCmdline(p.PID)
	if !d.MatchesArgv(m, argv) {
		t.Fatalf("MatchesArgv refuses the VMM's own argv %q", argv)
	}
	if system.ArgvHasPair(argv, "--api-sock", m.APISock) {
		t.Fatalf("the jailed VMM was given the host socket path: %q", argv)
	}
	console := readFile(t, m.ConsoleLog)
	if !strings.Contains(console, "fc-double: guest running") {
		t.Fatalf("console lacks boot line:\n%s", console)
	}
	// Firecracker's own log reaches the host file through the link.
	if b, _ := os.ReadFile(m.LogPath); len(b) == 0 {
		t.Error("firecracker log on the host is empty")
	}

	if err := d.Shutdown(ctx, m, p, 10*time.Second, false); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if p.Alive() {
		t.Fatal("firecracker alive after Shutdown")
	}
	if !strings.Contains(readFile(t, m.ConsoleLog), "reboot: Restarting system") {
		t.Fatal("shutdown was not graceful: no reboot line on the console")
	}
	if _, err := os.Stat(m.Jailer.JailDir(m.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("jail dir left after Shutdown (stat err %v)", err)
	}
	for _, f := range []string{m.Kernel, m.RootDisk, m.WorkDisk, m.LogPath} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("%s removed with the jail: %v", f, err)
		}
	}
	// Nothing left in the cgroup: it can be removed.
	for _, h := range cgroupDirs(m) {
		if err := removeCgroupDir(filepath.Join(h, m.ID)); err != nil {
			t.Errorf("cgroup left busy: %v", err)
		}
	}

	// The requests, as the jailed VMM received them: valid for the
	// swagger file and naming only in-chroot paths.
	checkRequestLog(t, router, logPath, "jailed_launch_shutdown.txt")
}

// removeCgroupDir removes a cgroup, waiting a little for an exited
// process's zombie to be reaped.
func removeCgroupDir(dir string) error {
	var err error
	for i := 0; i < 100; i++ {
		if err = os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

func checkRequestLog(t *testing.T, router routers.Router, logPath, golden string) {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out strings.Builder
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		var r loggedRequest
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("request log line %q: %v", sc.Text(), err)
		}
		n++
		validateAgainstSwagger(t, router, r)
		if r.Method == http.MethodGet {
			continue
		}
		out.WriteString(r.Method + " " + r.Path + "\n" + string(r.Body) + "\n\n")
	}
	if n == 0 {
		t.Fatal("the double logged no request")
	}
	checkGolden(t, golden, out.String())
}

func TestJailedIdentifyRefusesImpostor(t *testing.T) {
	d, m := jailerRig(t)
	ctx := context.Background()
	p, err := d.Launch(ctx, m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	// Same argv, same uid could be faked; not the executable in the jail.
	argv, _ := system.ProcCmdline(p.PID)
	decoy, err := system.StartDecoy(argv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = decoy.Kill(3 * time.Second) })
	if err := d.Identify(ctx, m, decoy); err == nil || !strings.Contains(err.Error(), "does not run") {
		t.Fatalf("Identify of a process with the VMM's argv outside the jail = %v", err)
	}
	other := m
	j := *m.Jailer
	other.Jailer, other.ID = &j, "fedcba9876543210"
	if err := d.Identify(ctx, other, p); err == nil {
		t.Fatal("Identify of another VM's jail accepted this VMM")
	}
	// A second launch while the VMM runs is refused and leaves it alone.
	if _, err := d.Launch(ctx, m); err == nil || !strings.Contains(err.Error(), "already runs") {
		t.Fatalf("second Launch = %v", err)
	}
	if err := d.Identify(ctx, m, p); err != nil {
		t.Fatalf("the VMM lost its identity after a refused launch: %v", err)
	}
	if err := d.Shutdown(ctx, m, p, time.Second, true); err != nil {
		t.Fatal(err)
	}
}

func TestJailedLaunchFailureUnwinds(t *testing.T) {
	d, m := jailerRig(t)
	m.Kernel += ".missing"
	if _, err := d.Launch(context.Background(), m); err == nil || !strings.Contains(err.Error(), "vmlinux.missing") {
		t.Fatalf("Launch without a kernel = %v", err)
	}
	m.Kernel = strings.TrimSuffix(m.Kernel, ".missing")
	// The jailer refuses a bad setting: its error comes back, nothing stays.
	m.Jailer.Cgroups = append(m.Jailer.Cgroups, "nosuch.controller=1")
	_, err := d.Launch(context.Background(), m)
	if err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("Launch with an unknown cgroup controller = %v", err)
	}
	if _, ok := d.FindProcess(m); ok {
		t.Error("a VMM is left running")
	}
	if _, err := os.Stat(m.Jailer.JailDir(m.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("jail dir left after failed launches (stat err %v)", err)
	}
}

// TestJailedLaunchJoinsNetNS runs the VMM in a network namespace the test
// makes (and deletes): the jailer joins it before starting the VMM.
func TestJailedLaunchJoinsNetNS(t *testing.T) {
	d, m := jailerRig(t)
	nsFile := filepath.Join(filepath.Dir(m.APISock), "netns")
	if err := makeNetNS(nsFile); err != nil {
		t.Skipf("cannot make a network namespace: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(nsFile, unix.MNT_DETACH); os.Remove(nsFile) })
	m.Jailer.NetNS = nsFile
	p, err := d.Launch(context.Background(), m)
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	var want, got unix.Stat_t
	if err := unix.Stat(nsFile, &want); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", p.PID), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino {
		t.Fatalf("VMM in net namespace %d, want %d", got.Ino, want.Ino)
	}
	if err := d.Shutdown(context.Background(), m, p, time.Second, true); err != nil {
		t.Fatal(err)
	}
}

// makeNetNS creates a network namespace and pins it at path by a bind
// mount, from a thread that then ends with it.
func makeNetNS(path string) error {
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, "")
	}()
	return <-errc
}
