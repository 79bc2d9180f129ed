package crash

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/system"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// installation is one isolated banger: its own state and run directories,
// as root its own network namespace, and at most one bangerd at a time.
type installation struct {
	t     testing.TB
	base  string // removed at the end
	state string
	run   string
	ns    *netNS // nil: network off
	// cgroupParent is the parent of the VM cgroups, the installation's
	// own ("" when VMMs run unconfined).
	cgroupParent string
	wraps        string   // when set, a directory first on bangerd's PATH (wrapped host tools)
	extraEnv     []string // more settings for bangerd

	mu sync.Mutex
	d  *daemonProc
	c  *client.Client // a fresh client per daemon: no connection outlives one
}

// newInstallation makes the directories (short paths: unix sockets live
// under the run directory) and, when the test may, a network namespace.
func newInstallation(t testing.TB) *installation {
	t.Helper()
	needHelpers(t)
	base, err := os.MkdirTemp("/tmp", "bc")
	if err != nil {
		t.Fatal(err)
	}
	in := &installation{t: t, base: base, state: filepath.Join(base, "s"), run: filepath.Join(base, "r")}
	if useConfinement() {
		in.cgroupParent = "banger-crash-" + filepath.Base(base)
	}
	if useNetwork() {
		ns, err := newNetNS()
		if err != nil {
			os.RemoveAll(base)
			t.Fatalf("network namespace for the installation: %v", err)
		}
		in.ns = ns
	}
	t.Cleanup(in.close)
	return in
}

// useNetwork: banger's network is on only as root inside the private
// namespace TestMain made, where each installation gets a namespace of its
// own; never in the host's.
func useNetwork() bool {
	if !*netFlag || os.Geteuid() != 0 || !system.InPrivateNetNS() {
		return false
	}
	_, err := system.LookPath("nsenter")
	return err == nil
}

// useConfinement: VMMs run confined only as root (their own uids and
// cgroups), unless -crash.confine=false.
func useConfinement() bool { return *confineFlag && os.Geteuid() == 0 }

// close kills whatever the test left running (a daemon, doubles), then
// removes the directories and the namespace.
func (in *installation) close() {
	if *logsFlag {
		in.t.Logf("bangerd.log:\n%s", in.logTail(1000))
	}
	in.mu.Lock()
	d := in.d
	in.mu.Unlock()
	if d != nil && !d.exited(0) {
		d.cmd.Signal(syscall.SIGKILL)
		d.exited(10 * time.Second)
	}
	for _, p := range in.doubles(nil) {
		(system.Process{PID: p.pid, Start: p.start}).Kill(5 * time.Second)
		in.t.Logf("cleanup: killed fc-double pid %d (%s) left running", p.pid, p.sock)
	}
	if in.ns != nil {
		in.ns.close()
	}
	in.removeCgroups()
	os.RemoveAll(in.base)
}

func (in *installation) client() *client.Client {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.c
}

func (in *installation) daemon() *daemonProc {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.d
}

// env is bangerd's environment: the test's, without any banger setting,
// plus this installation's.
func (in *installation) env(failpoints string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BANGER_") && !strings.HasPrefix(kv, "FC_DOUBLE_") {
			env = append(env, kv)
		}
	}
	if in.wraps != "" {
		for i, kv := range env {
			if strings.HasPrefix(kv, "PATH=") {
				env[i] = "PATH=" + in.wraps + string(os.PathListSeparator) + strings.TrimPrefix(kv, "PATH=")
			}
		}
	}
	network := "off"
	if in.ns != nil {
		network = "auto"
	}
	env = append(env,
		"BANGER_CONFIG=/dev/null",
		"BANGER_STATE_DIR="+in.state,
		"BANGER_RUN_DIR="+in.run,
		"BANGER_FIRECRACKER_BIN="+helpers.fcDouble,
		"BANGER_VMM=firecracker",
		"BANGER_ROOT_DISK_METHOD=copy", // never the host's loop and dm devices
		"BANGER_NETWORK="+network,
		"BANGER_GROUP=banger-test-nonexistent",
		"BANGER_LOG_LEVEL=debug",
	)
	if in.cgroupParent != "" {
		env = append(env, "BANGER_CONFINE=on", "BANGER_CGROUP_PARENT="+in.cgroupParent)
	} else {
		env = append(env, "BANGER_CONFINE=off")
	}
	env = append(env, in.extraEnv...)
	if failpoints != "" {
		env = append(env, "BANGER_FAILPOINTS="+failpoints)
	}
	return env
}

// wrap puts an executable script named tool first on the PATH of the
// daemons started from now on. The script gets REAL, the tool's own path,
// and HOLD, a file the test creates to make it wait.
func (in *installation) wrap(tool, script string) (hold string) {
	in.t.Helper()
	real, err := system.LookPath(tool)
	if err != nil {
		in.t.Skipf("%s not found: %v", tool, err)
	}
	if in.wraps == "" {
		in.wraps = filepath.Join(in.base, "wraps")
		os.MkdirAll(in.wraps, 0o755)
	}
	hold = filepath.Join(in.base, tool+".hold")
	body := fmt.Sprintf("#!/bin/sh\nREAL=%q\nHOLD=%q\n%s\nexec \"$REAL\" \"$@\"\n", real, hold, script)
	if err := os.WriteFile(filepath.Join(in.wraps, tool), []byte(body), 0o755); err != nil {
		in.t.Fatal(err)
	}
	return hold
}

// waitFile waits up to timeout for path to exist.
func waitFile(path string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); !exists(path); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// daemonProc is one bangerd process, in a process group of its own (with
// the tools it runs; VMMs have sessions of their own).
type daemonProc struct {
	cmd    *system.Command
	pid    int
	done   chan struct{}     // closed once it exited and was reaped
	status system.ExitStatus // how it ended, once done is closed
}

// exited reports whether the daemon exited, waiting up to timeout.
func (d *daemonProc) exited(timeout time.Duration) bool {
	if timeout <= 0 {
		select {
		case <-d.done:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-d.done:
		return true
	case <-t.C:
		return false
	}
}

// killedBySIGKILL reports whether the exited daemon died of SIGKILL.
func (d *daemonProc) killedBySIGKILL() bool { return d.status.Signal == syscall.SIGKILL }

// how says how the exited daemon ended.
func (d *daemonProc) how() string {
	if d.status.Signal != 0 {
		return "signal " + d.status.Signal.String()
	}
	return fmt.Sprintf("exit status %d", d.status.Code)
}

// start runs bangerd with the failpoint specs (none when "") and waits
// until it answers on its socket (not until startup reconcile is done).
func (in *installation) start(failpoints string) {
	in.t.Helper()
	if err := in.tryStart(failpoints); err != nil {
		in.t.Fatal(err)
	}
}

// errExitedAtStart: bangerd exited before it answered.
var errExitedAtStart = errors.New("bangerd exited at start")

func (in *installation) tryStart(failpoints string) error {
	argv := []string{helpers.bangerd}
	if in.ns != nil {
		// nsenter execs bangerd in place: the PID we wait for is bangerd's.
		argv = []string{"nsenter", "--net=" + in.ns.path, "--", helpers.bangerd}
	}
	// Its log is in the state dir too; stderr tells why a start failed.
	stderr, err := os.Create(filepath.Join(in.base, "bangerd.stderr"))
	if err != nil {
		return err
	}
	defer stderr.Close()
	cmd, err := system.StartCommand(context.Background(), system.CommandSpec{Argv: argv, Env: in.env(failpoints), Stderr: stderr, NewProcessGroup: true})
	if err != nil {
		return fmt.Errorf("start bangerd: %w", err)
	}
	d := &daemonProc{cmd: cmd, pid: cmd.PID(), done: make(chan struct{})}
	go func() {
		d.status, _ = cmd.Wait()
		close(d.done)
	}()
	c := &client.Client{Socket: filepath.Join(in.run, "bangerd.sock")}
	in.mu.Lock()
	in.d, in.c = d, c
	in.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err := c.Version(ctx)
		cancel()
		if err == nil && v.PID == d.pid {
			return nil
		}
		if d.exited(0) {
			b, _ := os.ReadFile(stderr.Name())
			return fmt.Errorf("%w (%s): %s", errExitedAtStart, d.how(), lastLines(string(b), 20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bangerd does not answer on %s after 15s: %v", c.Socket, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady waits until startup reconcile is done.
func (in *installation) waitReady() {
	in.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := in.client().Version(ctx)
		cancel()
		if err == nil && v.Ready {
			return
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("bangerd not ready after 30s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readyOrDead waits until the daemon is ready (false) or has exited (true).
func (in *installation) readyOrDead() (died bool) {
	in.t.Helper()
	d := in.daemon()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		v, err := in.client().Version(ctx)
		cancel()
		if err == nil && v.Ready {
			return false
		}
		if d.exited(0) || err != nil && d.exited(time.Second) {
			return true
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("bangerd neither ready nor dead after 30s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restart starts bangerd without failpoints and waits for it to be ready.
func (in *installation) restart() {
	in.t.Helper()
	in.start("")
	in.waitReady()
}

// kill9 kills the daemon with SIGKILL and reaps it.
func (in *installation) kill9() {
	in.t.Helper()
	d := in.daemon()
	d.cmd.Signal(syscall.SIGKILL)
	if !d.exited(10 * time.Second) {
		in.t.Fatalf("bangerd pid %d still there 10s after SIGKILL", d.pid)
	}
}

// shutdown stops the daemon through the API and requires a clean exit.
func (in *installation) shutdown() {
	in.t.Helper()
	d := in.daemon()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := in.client().Shutdown(ctx); err != nil {
		in.t.Errorf("daemon shutdown: %v", err)
	}
	if !d.exited(15 * time.Second) {
		in.t.Fatalf("bangerd pid %d still runs 15s after shutdown", d.pid)
	}
	if d.status != (system.ExitStatus{}) {
		in.t.Errorf("bangerd ended with %s after shutdown", d.how())
	}
}

// importImage registers the fake kernel and the small rootfs as "base".
func (in *installation) importImage() {
	in.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := in.client().ImportImage(ctx, client.ImportImageRequest{Name: "base", Kernel: helpers.kernel, VMLinux: helpers.kernel, Rootfs: helpers.rootfs})
	if err != nil {
		in.t.Fatalf("image import: %v", err)
	}
}

// logTail is the end of the daemon's log, for failure messages.
func (in *installation) logTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(in.state, "bangerd.log"))
	return lastLines(string(b), n)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// createSpec is the smallest VM the double and the copy method accept.
func createSpec(name string) client.CreateVMRequest {
	return client.CreateVMRequest{Name: name, Image: "base", VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 32 << 20, WorkDiskBytes: 16 << 20}
}

// netNS is a network namespace held open by a sleeping process, which the
// installation's daemons enter with nsenter.
type netNS struct {
	holder system.Process
	path   string // /proc/PID/ns/net of the holder
	handle *netlink.Handle
	nsh    netns.NsHandle
}

func newNetNS() (*netNS, error) {
	p, err := system.StartDetached(system.DetachedSpec{Argv: []string{"sleep", "infinity"}, Cloneflags: syscall.CLONE_NEWNET})
	if err != nil {
		return nil, err
	}
	n := &netNS{holder: p, path: fmt.Sprintf("/proc/%d/ns/net", p.PID), nsh: netns.None()}
	if n.nsh, err = netns.GetFromPath(n.path); err != nil {
		n.close()
		return nil, err
	}
	// Refuse to go on unless the namespace is a new one: neither ours nor
	// init's (the test binary already runs in a private one).
	self, _ := netns.Get()
	defer self.Close()
	if n.nsh.Equal(self) {
		n.close()
		return nil, errors.New("the new namespace is the test's own")
	}
	if initNS, err := netns.GetFromPath("/proc/1/ns/net"); err == nil {
		same := n.nsh.Equal(initNS)
		initNS.Close()
		if same {
			n.close()
			return nil, errors.New("the new namespace is the host's")
		}
	}
	if n.handle, err = netlink.NewHandleAt(n.nsh); err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

func (n *netNS) close() {
	if n.handle != nil {
		n.handle.Close()
	}
	if n.nsh.IsOpen() {
		n.nsh.Close()
	}
	n.holder.Kill(5 * time.Second)
}

// taps lists the banger taps (bgr*) in the namespace.
func (n *netNS) taps() ([]string, error) {
	links, err := n.handle.LinkList()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range links {
		if l.Type() == "tuntap" && strings.HasPrefix(l.Attrs().Name, "bgr") {
			out = append(out, l.Attrs().Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// double is a live fc-double process of this installation.
type double struct {
	pid   int
	start uint64
	sock  string // its --api-sock
}

// doubles lists the live fc-double processes whose argv names a path under
// the installation's run directory, except those in skip.
func (in *installation) doubles(skip map[int]bool) []double {
	pids, _ := system.ListPIDs()
	var out []double
	for _, pid := range pids {
		if skip[pid] {
			continue
		}
		argv, err := system.ProcCmdline(pid)
		if err != nil || len(argv) == 0 || filepath.Base(argv[0]) != "fc-double" {
			continue
		}
		mine, sock := false, ""
		for i, a := range argv {
			mine = mine || strings.HasPrefix(a, in.run+"/")
			if a == "--api-sock" && i+1 < len(argv) {
				sock = argv[i+1]
			}
		}
		if !mine {
			continue
		}
		st, err := system.ProcStartTime(pid) // fails for a zombie: gone
		if err != nil {
			continue
		}
		out = append(out, double{pid: pid, start: st, sock: sock})
	}
	return out
}

// dirNames lists the names in dir ("" entries when dir is missing).
func dirNames(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// cgroupDir is one VM cgroup directory in one hierarchy.
type cgroupDir struct {
	dir   string
	procs []int
}

// cgroupParents are the installation's cgroup parent directories, one per
// hierarchy (v1) or one (v2), whether they exist or not.
func (in *installation) cgroupParents() []string {
	if in.cgroupParent == "" {
		return nil
	}
	const root = "/sys/fs/cgroup"
	for _, unified := range []string{root, filepath.Join(root, "unified")} {
		b, err := os.ReadFile(filepath.Join(unified, "cgroup.controllers"))
		if err == nil && strings.Contains(" "+string(b)+" ", " memory ") {
			return []string{filepath.Join(unified, in.cgroupParent)}
		}
	}
	var out []string
	for _, c := range []string{"memory", "pids", "cpu", "cpuacct", "blkio"} {
		out = append(out, filepath.Join(root, c, in.cgroupParent))
	}
	return out
}

// cgroups lists the VM cgroups under the installation's parent, by VM id,
// memory hierarchy first on v1.
func (in *installation) cgroups() (map[string][]cgroupDir, error) {
	out := map[string][]cgroupDir{}
	for _, parent := range in.cgroupParents() {
		ents, err := os.ReadDir(parent)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return out, fmt.Errorf("listing cgroups: %w", err)
		}
		for _, e := range ents {
			if !e.IsDir() {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			g := cgroupDir{dir: dir}
			b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				var pid int
				fmt.Sscan(f, &pid)
				g.procs = append(g.procs, pid)
			}
			out[e.Name()] = append(out[e.Name()], g)
		}
	}
	return out, nil
}

// removeCgroups removes the installation's cgroups, killing what is left
// in them (only processes the test's daemons started can be there).
func (in *installation) removeCgroups() {
	cgroups, _ := in.cgroups()
	for _, gs := range cgroups {
		for _, g := range gs {
			for _, pid := range g.procs {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			for deadline := time.Now().Add(5 * time.Second); syscall.Rmdir(g.dir) == syscall.EBUSY && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	for _, parent := range in.cgroupParents() {
		syscall.Rmdir(parent)
	}
}

// isExt4 reports whether path holds an ext2/3/4 superblock magic.
func isExt4(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 2)
	if _, err := f.ReadAt(b, 1024+0x38); err != nil {
		return false
	}
	return b[0] == 0x53 && b[1] == 0xef
}

func randomHex(n int) string {
	b := make([]byte, (n+1)/2)
	rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// orphans are host objects a test plants for gc to find: a Firecracker
// double serving a socket in a run directory no VM owns, and a VM directory
// no VM owns. gc must kill the first, remove its run directory and move
// the VM directory to lost+found.
type orphans struct {
	proc    system.Process
	runName string // under RUN/vm
	vmName  string // under STATE/vms
}

func (o *orphans) has(kind, name string) bool {
	if o == nil {
		return false
	}
	switch kind {
	case "process":
		return name == fmt.Sprint(o.proc.PID)
	case "rundir":
		return name == o.runName
	case "vmdir":
		return name == o.vmName
	}
	return false
}

// plantOrphans makes the orphans. The double runs in a session of its own,
// like a VMM banger starts (StartDetached reaps it when gc kills it).
func (in *installation) plantOrphans() (*orphans, error) {
	o := &orphans{runName: randomHex(16), vmName: randomHex(32)}
	runDir := filepath.Join(in.run, "vm", o.runName)
	if err := os.MkdirAll(runDir, 0o750); err != nil {
		return nil, err
	}
	vmDir := filepath.Join(in.state, "vms", o.vmName)
	if err := os.MkdirAll(vmDir, 0o750); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(vmDir, "root.img"), []byte("an orphan's disk"), 0o600); err != nil {
		return nil, err
	}
	sock := filepath.Join(runDir, "api.sock")
	p, err := system.StartDetached(system.DetachedSpec{Argv: []string{helpers.fcDouble, "--api-sock", sock, "--id", randomHex(32)}})
	if err != nil {
		return nil, err
	}
	o.proc = p
	for deadline := time.Now().Add(5 * time.Second); !exists(sock); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			o.proc.Kill(time.Second)
			return nil, fmt.Errorf("planted fc-double made no socket %s", sock)
		}
	}
	return o, nil
}

// checkOrphansGone checks what gc made of the planted orphans.
func (in *installation) checkOrphansGone(o *orphans) []string {
	var bad []string
	if o.proc.Alive() {
		bad = append(bad, fmt.Sprintf("planted orphan fc-double pid %d still runs", o.proc.PID))
	}
	if exists(filepath.Join(in.run, "vm", o.runName)) {
		bad = append(bad, "planted orphan run dir "+o.runName+" still there")
	}
	if exists(filepath.Join(in.state, "vms", o.vmName)) {
		bad = append(bad, "planted orphan vm dir "+o.vmName+" still there")
	}
	if b, err := os.ReadFile(filepath.Join(in.state, "lost+found", o.vmName, "root.img")); err != nil || string(b) != "an orphan's disk" {
		bad = append(bad, fmt.Sprintf("planted orphan vm dir not in lost+found with its disk: %v", err))
	}
	return bad
}

// checkInvariants checks what must hold whenever bangerd is ready, and
// returns every violation. allowed are planted orphans gc has not removed
// yet (nil: none).
func (in *installation) checkInvariants(ctx context.Context, allowed *orphans) []string {
	var bad []string
	c := in.client()
	list, err := c.ListVMs(ctx)
	if err != nil {
		return []string{fmt.Sprintf("vm list: %v", err)}
	}
	var taps []string
	if in.ns != nil {
		if taps, err = in.ns.taps(); err != nil {
			bad = append(bad, fmt.Sprintf("listing taps: %v", err))
		}
	}
	skip := map[int]bool{}
	if allowed != nil {
		skip[allowed.proc.PID] = true
	}
	doubles := in.doubles(skip)
	cgroups, err := in.cgroups()
	if err != nil {
		bad = append(bad, err.Error())
	}
	jails := dirNames(filepath.Join(in.run, "jail"))
	bySock := map[string][]double{}
	for _, d := range doubles {
		bySock[d.sock] = append(bySock[d.sock], d)
	}
	accounted := map[string]bool{} // sockets, "run:"+name, "vm:"+name, "tap:"+name
	for _, item := range list {
		vm, err := c.GetVM(ctx, item.Name)
		if err != nil {
			bad = append(bad, fmt.Sprintf("vm show %s: %v", item.Name, err))
			continue
		}
		id := vm.ID
		runName, tap := id[:16], "bgr"+id[:12]
		runDir := filepath.Join(in.run, "vm", runName)
		handles := filepath.Join(in.state, "vms", id, "handles.json")
		accounted[vm.Runtime.APISockPath] = true
		accounted["run:"+runName] = true
		accounted["vm:"+id] = true
		ps := bySock[vm.Runtime.APISockPath]
		accounted["tap:"+tap] = true // a stopped vm's tap is reported below
		accounted["cgroup:"+id] = true
		accounted["jail:"+runName] = true
		accounted["jail:"+runName+".json"] = true
		hasTap := slices.Contains(taps, tap)
		cg := cgroups[id]
		where := fmt.Sprintf("vm %s (%s)", vm.Name, vm.Runtime.State)
		// A disk that exists is whole: a start takes an existing disk as
		// made and boots from it.
		for _, disk := range []string{"root.img", "work.ext4"} {
			p := filepath.Join(in.state, "vms", id, disk)
			if exists(p) && !isExt4(p) {
				bad = append(bad, fmt.Sprintf("%s: %s is not an ext4 file system", where, disk))
			}
		}
		switch vm.Runtime.State {
		case client.StateRunning:
			if vm.Live == nil || !vm.Live.Alive {
				reason := "no live facts"
				if vm.Live != nil {
					reason = vm.Live.Reason
				}
				bad = append(bad, fmt.Sprintf("%s: not proven alive: %s", where, reason))
			}
			if len(ps) != 1 {
				bad = append(bad, fmt.Sprintf("%s: %d fc-double processes serve its socket, want 1", where, len(ps)))
			} else if vm.Live != nil && vm.Live.Handles.PID != ps[0].pid {
				bad = append(bad, fmt.Sprintf("%s: handles name pid %d, its fc-double is pid %d", where, vm.Live.Handles.PID, ps[0].pid))
			}
			if !exists(handles) {
				bad = append(bad, where+": no handles.json")
			}
			if in.ns != nil && !hasTap {
				bad = append(bad, fmt.Sprintf("%s: no tap %s", where, tap))
			}
			if in.cgroupParent != "" && vm.Live != nil && (len(cg) == 0 || !slices.Contains(cg[0].procs, vm.Live.Handles.PID)) {
				bad = append(bad, fmt.Sprintf("%s: its vmm (pid %d) is not in its cgroup (%v)", where, vm.Live.Handles.PID, cg))
			}
		case client.StateSuspended:
			// No VMM and nothing only a VMM needs; the tap, its address and
			// a whole saved state stay for the resume.
			for _, p := range ps {
				bad = append(bad, fmt.Sprintf("%s: fc-double pid %d still serves its socket", where, p.pid))
			}
			for _, g := range cg {
				bad = append(bad, fmt.Sprintf("%s: cgroup %s left (processes %v)", where, g.dir, g.procs))
			}
			if in.ns != nil && !hasTap {
				bad = append(bad, fmt.Sprintf("%s: no tap %s", where, tap))
			}
			if !exists(filepath.Join(in.state, "vms", id, "suspend", "incoming.json")) {
				bad = append(bad, where+": no saved state (suspend/incoming.json)")
			}
		case client.StateCreated, client.StateStopped, client.StateError:
			for _, p := range ps {
				bad = append(bad, fmt.Sprintf("%s: fc-double pid %d still serves its socket", where, p.pid))
			}
			for _, f := range dirNames(runDir) {
				bad = append(bad, fmt.Sprintf("%s: %s left in its run dir", where, f))
			}
			if exists(handles) {
				b, _ := os.ReadFile(handles)
				bad = append(bad, fmt.Sprintf("%s: handles.json left: %s", where, strings.Join(strings.Fields(string(b)), " ")))
			}
			if hasTap {
				bad = append(bad, fmt.Sprintf("%s: tap %s left", where, tap))
			}
			for _, g := range cg {
				bad = append(bad, fmt.Sprintf("%s: cgroup %s left (processes %v)", where, g.dir, g.procs))
			}
			for _, j := range []string{runName, runName + ".json"} {
				if slices.Contains(jails, j) {
					bad = append(bad, fmt.Sprintf("%s: jail %s left", where, filepath.Join(in.run, "jail", j)))
				}
			}
		default:
			bad = append(bad, fmt.Sprintf("%s: transitional state after startup reconcile (last error %q)", where, vm.Runtime.LastError))
		}
	}
	for _, d := range doubles {
		if !accounted[d.sock] {
			bad = append(bad, fmt.Sprintf("fc-double pid %d (socket %s) belongs to no vm", d.pid, d.sock))
		}
	}
	for _, name := range dirNames(filepath.Join(in.run, "vm")) {
		if !accounted["run:"+name] && !allowed.has("rundir", name) {
			bad = append(bad, fmt.Sprintf("run dir %s belongs to no vm (holds %v)", name, dirNames(filepath.Join(in.run, "vm", name))))
		}
	}
	for _, name := range dirNames(filepath.Join(in.state, "vms")) {
		if !accounted["vm:"+name] && !allowed.has("vmdir", name) {
			bad = append(bad, fmt.Sprintf("vm dir %s belongs to no vm (holds %v)", name, dirNames(filepath.Join(in.state, "vms", name))))
		}
	}
	for id, gs := range cgroups {
		if !accounted["cgroup:"+id] {
			for _, g := range gs {
				bad = append(bad, fmt.Sprintf("cgroup %s belongs to no vm (processes %v)", g.dir, g.procs))
			}
		}
	}
	for _, j := range jails {
		if !accounted["jail:"+j] {
			bad = append(bad, fmt.Sprintf("jail %s belongs to no vm", filepath.Join(in.run, "jail", j)))
		}
	}
	for _, tap := range taps {
		if !accounted["tap:"+tap] {
			bad = append(bad, fmt.Sprintf("tap %s belongs to no vm", tap))
		}
	}
	// A snapshot is whole or absent: an interrupted save leaves no
	// directory without its meta.json once the daemon started again.
	for _, name := range dirNames(filepath.Join(in.state, "snapshots")) {
		if !exists(filepath.Join(in.state, "snapshots", name, "meta.json")) {
			bad = append(bad, fmt.Sprintf("snapshot %s has no meta.json (holds %v)", name, dirNames(filepath.Join(in.state, "snapshots", name))))
		}
	}
	gc, err := c.GC(ctx, true)
	if err != nil {
		return append(bad, fmt.Sprintf("gc --dry-run: %v", err))
	}
	for _, o := range gc.Removed {
		if !allowed.has(o.Kind, o.Name) {
			bad = append(bad, fmt.Sprintf("gc --dry-run would remove %s %s (%s)", o.Kind, o.Name, o.Detail))
		}
	}
	for _, o := range gc.Kept {
		bad = append(bad, fmt.Sprintf("gc --dry-run finds an orphan it will not remove: %s %s (%s)", o.Kind, o.Name, o.Detail))
	}
	for _, e := range gc.Errors {
		bad = append(bad, "gc --dry-run error: "+e)
	}
	return bad
}

// startAll starts every VM that is not running: what a crash left must not
// keep a VM from starting again.
func (in *installation) startAll(ctx context.Context) []string {
	var bad []string
	c := in.client()
	list, err := c.ListVMs(ctx)
	if err != nil {
		return []string{fmt.Sprintf("vm list: %v", err)}
	}
	for _, vm := range list {
		if vm.Runtime.State == client.StateRunning {
			continue
		}
		got, err := c.StartVM(ctx, vm.Name)
		if err != nil {
			bad = append(bad, fmt.Sprintf("vm start %s (was %s, last error %q): %v", vm.Name, vm.Runtime.State, vm.Runtime.LastError, err))
			continue
		}
		if got.Runtime.State != client.StateRunning {
			bad = append(bad, fmt.Sprintf("vm start %s: state %s after start", vm.Name, got.Runtime.State))
		}
	}
	return bad
}

// deleteAll deletes every VM and checks that nothing is left: no VM, no
// fc-double, no run or VM directory, no tap, and nothing for gc.
func (in *installation) deleteAll(ctx context.Context, force bool) []string {
	var bad []string
	c := in.client()
	list, err := c.ListVMs(ctx)
	if err != nil {
		return []string{fmt.Sprintf("vm list: %v", err)}
	}
	for _, vm := range list {
		if err := c.DeleteVM(ctx, vm.Name, force); err != nil {
			bad = append(bad, fmt.Sprintf("vm delete %s (%s): %v", vm.Name, vm.Runtime.State, err))
		}
	}
	return append(bad, in.checkEmpty(ctx)...)
}

// checkEmpty checks that the installation holds no VM and nothing on the
// host (lost+found aside).
func (in *installation) checkEmpty(ctx context.Context) []string {
	var bad []string
	c := in.client()
	if list, err := c.ListVMs(ctx); err != nil {
		bad = append(bad, fmt.Sprintf("vm list: %v", err))
	} else {
		for _, vm := range list {
			bad = append(bad, fmt.Sprintf("vm %s (%s) still in the store", vm.Name, vm.Runtime.State))
		}
	}
	for _, d := range in.doubles(nil) {
		bad = append(bad, fmt.Sprintf("fc-double pid %d (%s) still runs", d.pid, d.sock))
	}
	for _, name := range dirNames(filepath.Join(in.run, "vm")) {
		bad = append(bad, "run dir "+name+" left")
	}
	for _, name := range dirNames(filepath.Join(in.state, "vms")) {
		bad = append(bad, "vm dir "+name+" left")
	}
	for _, name := range dirNames(filepath.Join(in.run, "jail")) {
		bad = append(bad, "jail "+name+" left")
	}
	cgroups, err := in.cgroups()
	if err != nil {
		bad = append(bad, err.Error())
	}
	for _, gs := range cgroups {
		for _, g := range gs {
			bad = append(bad, fmt.Sprintf("cgroup %s left (processes %v)", g.dir, g.procs))
		}
	}
	if in.ns != nil {
		taps, err := in.ns.taps()
		if err != nil {
			bad = append(bad, fmt.Sprintf("listing taps: %v", err))
		}
		for _, tap := range taps {
			bad = append(bad, "tap "+tap+" left")
		}
	}
	if gc, err := c.GC(ctx, true); err != nil {
		bad = append(bad, fmt.Sprintf("gc --dry-run: %v", err))
	} else if len(gc.Removed)+len(gc.Kept)+len(gc.Errors) > 0 {
		bad = append(bad, fmt.Sprintf("gc --dry-run on an empty installation: removed %v, kept %v, errors %v", gc.Removed, gc.Kept, gc.Errors))
	}
	return bad
}
