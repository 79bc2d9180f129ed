// Package cgroup gives each VM's VMM a cgroup of its own, banger/<vm-id>,
// with limits on memory, processes, CPU and IO, on cgroup v2 where the
// unified hierarchy has the controllers and on the v1 controller
// hierarchies otherwise (as on hosts that mount v2 without controllers).
// Membership of that cgroup is also banger's strongest proof that a process
// belongs to a VM.
package cgroup

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Mode is the cgroup version in use.
type Mode string

// The modes.
const (
	V2 Mode = "v2"
	V1 Mode = "v1"
)

// Limits are what a VM's cgroup enforces. Zero fields set no limit.
type Limits struct {
	MemoryBytes int64 // hard memory limit: guest RAM plus the VMM's overhead
	Pids        int64 // process and thread count
	CPUWeight   int   // relative share, 1..10000 (v2 cpu.weight; 100 is the default)
	CPUQuota    int   // percent of one CPU (100 = one full CPU); 0 = none
	IOWeight    int   // 1..10000 (v2 io.weight); ignored where the kernel has no weight knob
	VCPUs       int   // the guest's vCPUs: on v1 the VM's cpu.shares weigh as many tasks (see Manager.weighParent)
}

// Manager makes and removes VM cgroups below Root/<controller>/Parent (v1)
// or Root/Parent (v2).
type Manager struct {
	Root   string // "/sys/fs/cgroup"
	Parent string // "banger"
	mode   Mode
	// controllers usable: for v2 the names enabled for Parent's children;
	// for v1 the mounted hierarchies among those banger uses.
	controllers map[string]bool
	// weighParent: on v1, with the daemon (and so the other host
	// processes beside it) in the root cpu cgroup and Parent directly
	// below it, Parent's cpu.shares are kept at the sum of its VMs'. CFS
	// weighs a group as one entity against each task of the root: a VM
	// unconfined had one task's weight per busy vCPU thread, and with
	// Parent at the default 1024 all VMs together had one task's, so a
	// confined guest booted up to 1.25x slower on a busy host
	// (bench/README.md, boot confined vs unconfined).
	weighParent bool
	mu          sync.Mutex // serialises the parent's weight updates
}

// v1Controllers are the v1 hierarchies banger uses, in the order it joins them.
var v1Controllers = []string{"memory", "pids", "cpu", "cpuacct", "blkio"}

// Detect looks at root and chooses v2 when the unified hierarchy has the
// memory and pids controllers, else v1 when those hierarchies are mounted.
// It fails, naming what is missing, when neither works.
func Detect(root, parent string) (*Manager, error) {
	if root == "" {
		root = "/sys/fs/cgroup"
	}
	if parent == "" {
		parent = "banger"
	}
	m := &Manager{Root: root, Parent: parent, controllers: map[string]bool{}}
	for _, unified := range []string{root, filepath.Join(root, "unified")} {
		b, err := os.ReadFile(filepath.Join(unified, "cgroup.controllers"))
		if err != nil {
			continue
		}
		have := map[string]bool{}
		for _, c := range strings.Fields(string(b)) {
			have[c] = true
		}
		if have["memory"] && have["pids"] {
			m.mode, m.Root = V2, unified
			for _, c := range []string{"memory", "pids", "cpu", "io"} {
				m.controllers[c] = have[c]
			}
			return m, nil
		}
	}
	var missing []string
	for _, c := range v1Controllers {
		if _, err := os.Stat(filepath.Join(root, c, "cgroup.procs")); err == nil {
			m.controllers[c] = true
		} else if c == "memory" || c == "pids" {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("cgroups: no usable controllers for %s under %s (cgroup v2 without memory and pids, and no v1 hierarchy for %s): mount them or enable them for the unified hierarchy (under `ip netns exec`, which mounts a fresh /sys, run bangerd with `nsenter --net=/run/netns/NAME` instead)",
			strings.Join(missing, ", "), root, strings.Join(missing, ", "))
	}
	m.mode = V1
	m.weighParent = m.controllers["cpu"] && !strings.Contains(strings.Trim(parent, "/"), "/") && inRootCPUCgroup("/proc/self/cgroup")
	return m, nil
}

// inRootCPUCgroup reports whether the process whose /proc/PID/cgroup is at
// path sits in the root of the v1 cpu hierarchy ("N:cpu:/" or
// "N:cpu,cpuacct:/").
func inRootCPUCgroup(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpu" {
				return f[2] == "/"
			}
		}
	}
	return false
}

// v1Shares is the v1 cpu.shares of a VM's cgroup: 1024 per vCPU at the
// default weight of 100.
func v1Shares(l Limits) int {
	return max(2, orDefault(l.CPUWeight, 100)*1024/100*max(1, l.VCPUs))
}

// balanceParentLocked sets Parent's v1 cpu.shares to the sum of its VMs'
// (at most the kernel's 262144; the default 1024 when it has none): the
// cgroups that hold processes, and newID's, whose VMM is about to join it.
// Empty ones (a stopped VM's, another daemon's leftovers) weigh nothing.
func (m *Manager) balanceParentLocked(newID string) error {
	parent := filepath.Join(m.Root, "cpu", m.Parent)
	ents, err := os.ReadDir(parent)
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", parent, err)
	}
	sum := 0
	for _, e := range ents {
		if !e.IsDir() || !idPattern.MatchString(e.Name()) {
			continue
		}
		if procs, err := os.ReadFile(filepath.Join(parent, e.Name(), "cgroup.procs")); e.Name() != newID && (err != nil || len(bytes.TrimSpace(procs)) == 0) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(parent, e.Name(), "cpu.shares"))
		if err != nil {
			continue // removed meanwhile
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			sum += n
		}
	}
	if sum == 0 {
		sum = 1024
	}
	return write(parent, "cpu.shares", strconv.Itoa(min(sum, 262144)))
}

// Mode is the version in use.
func (m *Manager) Mode() Mode { return m.mode }

// Controllers lists the controllers in use.
func (m *Manager) Controllers() []string {
	var out []string
	for c, ok := range m.controllers {
		if ok {
			out = append(out, c)
		}
	}
	sort.Strings(out)
	return out
}

var idPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// Rel is a VM's cgroup path relative to each hierarchy's root: "/banger/<id>".
func (m *Manager) Rel(id string) string { return "/" + m.Parent + "/" + id }

// Ref is how a process's membership of the VM's cgroup reads in
// /proc/PID/cgroup: "/banger/<id>" on v2, "memory:/banger/<id>" on v1 (the
// memory hierarchy stands for all).
func (m *Manager) Ref(id string) string {
	if m.mode == V2 {
		return m.Rel(id)
	}
	return "memory:" + m.Rel(id)
}

func (m *Manager) dirs(id string) map[string]string {
	out := map[string]string{}
	if m.mode == V2 {
		out[""] = filepath.Join(m.Root, m.Parent, id)
		return out
	}
	for _, c := range v1Controllers {
		if m.controllers[c] {
			out[c] = filepath.Join(m.Root, c, m.Parent, id)
		}
	}
	return out
}

// ProcsFiles are the cgroup.procs files a process writes "0" into to join
// the VM's cgroup (one per hierarchy).
func (m *Manager) ProcsFiles(id string) []string {
	var out []string
	for _, d := range m.dirs(id) {
		out = append(out, filepath.Join(d, "cgroup.procs"))
	}
	sort.Strings(out)
	return out
}

// Create makes the VM's cgroup and writes its limits. It is idempotent.
// Limits the kernel cannot express here are reported in notes, not as
// errors.
func (m *Manager) Create(id string, l Limits) (notes []string, err error) {
	if !idPattern.MatchString(id) {
		return nil, fmt.Errorf("cgroup for vm %q: not a vm id", id)
	}
	if m.mode == V2 {
		parent := filepath.Join(m.Root, m.Parent)
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", parent, err)
		}
		// Enable the controllers for the VMs' cgroups.
		var enable []string
		for _, c := range []string{"memory", "pids", "cpu", "io"} {
			if m.controllers[c] {
				enable = append(enable, "+"+c)
			}
		}
		for _, dir := range []string{m.Root, parent} {
			if dir == m.Root {
				continue // the root's subtree_control is the host's business; it must already allow them
			}
			os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0)
		}
	}
	for c, dir := range m.dirs(id) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if n, err := m.writeLimits(c, dir, l); err != nil {
			return nil, err
		} else {
			notes = append(notes, n...)
		}
	}
	if m.mode == V1 && m.weighParent {
		m.mu.Lock()
		defer m.mu.Unlock()
		if err := m.balanceParentLocked(id); err != nil {
			return nil, err
		}
	}
	return notes, nil
}

func write(dir, file, value string) error {
	if err := os.WriteFile(filepath.Join(dir, file), []byte(value), 0); err != nil {
		return fmt.Errorf("cgroup %s: writing %s=%s: %w", dir, file, value, err)
	}
	return nil
}

func (m *Manager) writeLimits(controller, dir string, l Limits) (notes []string, err error) {
	period := 100000
	if m.mode == V2 {
		if l.MemoryBytes > 0 && m.controllers["memory"] {
			if err := write(dir, "memory.max", strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
				return nil, err
			}
			write(dir, "memory.swap.max", "0") // absent without swap accounting
		}
		if l.Pids > 0 && m.controllers["pids"] {
			if err := write(dir, "pids.max", strconv.FormatInt(l.Pids, 10)); err != nil {
				return nil, err
			}
		}
		if m.controllers["cpu"] {
			if l.CPUWeight > 0 {
				if err := write(dir, "cpu.weight", strconv.Itoa(l.CPUWeight)); err != nil {
					return nil, err
				}
			}
			if l.CPUQuota > 0 {
				if err := write(dir, "cpu.max", fmt.Sprintf("%d %d", l.CPUQuota*period/100, period)); err != nil {
					return nil, err
				}
			}
		} else if l.CPUQuota > 0 || l.CPUWeight > 0 {
			notes = append(notes, "cpu controller not enabled: no cpu weight or quota")
		}
		if l.IOWeight > 0 {
			if _, err := os.Stat(filepath.Join(dir, "io.weight")); err == nil {
				if err := write(dir, "io.weight", strconv.Itoa(l.IOWeight)); err != nil {
					return nil, err
				}
			} else {
				notes = append(notes, "no io.weight on this kernel: io weight not set")
			}
		}
		return notes, nil
	}
	switch controller {
	case "memory":
		if l.MemoryBytes > 0 {
			if err := write(dir, "memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)); err != nil {
				return nil, err
			}
		}
	case "pids":
		if l.Pids > 0 {
			if err := write(dir, "pids.max", strconv.FormatInt(l.Pids, 10)); err != nil {
				return nil, err
			}
		}
	case "cpu":
		if l.CPUWeight > 0 || l.VCPUs > 1 {
			if err := write(dir, "cpu.shares", strconv.Itoa(v1Shares(l))); err != nil {
				return nil, err
			}
		}
		if l.CPUQuota > 0 {
			if err := write(dir, "cpu.cfs_period_us", strconv.Itoa(period)); err != nil {
				return nil, err
			}
			if err := write(dir, "cpu.cfs_quota_us", strconv.Itoa(l.CPUQuota*period/100)); err != nil {
				return nil, err
			}
		}
	case "blkio":
		if l.IOWeight > 0 {
			if _, err := os.Stat(filepath.Join(dir, "blkio.weight")); err == nil {
				// v1 blkio weights run 10..1000.
				if err := write(dir, "blkio.weight", strconv.Itoa(min(1000, max(10, l.IOWeight/10)))); err != nil {
					return nil, err
				}
			} else {
				notes = append(notes, "no blkio.weight on this kernel (no proportional io scheduler): io weight not set")
			}
		}
	}
	return notes, nil
}

// Members lists the PIDs in the VM's cgroup (from the memory hierarchy on
// v1). A cgroup that does not exist has none.
func (m *Manager) Members(id string) ([]int, error) {
	var dir string
	if m.mode == V2 {
		dir = filepath.Join(m.Root, m.Parent, id)
	} else {
		dir = filepath.Join(m.Root, "memory", m.Parent, id)
	}
	f, err := os.Open(filepath.Join(dir, "cgroup.procs"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids, sc.Err()
}

// Exists reports whether the VM's cgroup exists.
func (m *Manager) Exists(id string) bool {
	for _, d := range m.dirs(id) {
		if _, err := os.Stat(d); err == nil {
			return true
		}
	}
	return false
}

// Remove removes the VM's cgroup in every hierarchy. It is idempotent; a
// cgroup that still has processes fails with a clear error (the caller
// stops them first: removal never kills).
func (m *Manager) Remove(id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("cgroup for vm %q: not a vm id", id)
	}
	var errs []error
	for _, d := range m.dirs(id) {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			if errors.Is(err, syscall.EBUSY) {
				pids, _ := m.Members(id)
				err = fmt.Errorf("%w: processes %v still in it", err, pids)
			}
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	if m.mode == V1 && m.weighParent && len(errs) == 0 {
		m.mu.Lock()
		err := m.balanceParentLocked("")
		m.mu.Unlock()
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// List returns the VM ids that have a cgroup under Parent.
func (m *Manager) List() ([]string, error) {
	dir := filepath.Join(m.Root, m.Parent)
	if m.mode == V1 {
		dir = filepath.Join(m.Root, "memory", m.Parent)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if e.IsDir() && idPattern.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// Usage is what a VM's cgroup has consumed.
type Usage struct {
	MemoryBytes int64
	CPUNanos    int64 // total CPU time, where the kernel accounts it
	// Bytes read from and written to block devices (v2 io.stat, v1
	// blkio.throttle.io_service_bytes), where the kernel accounts them.
	ReadBytes, WriteBytes int64
}

// Stats reads a VM's cgroup usage.
func (m *Manager) Stats(id string) (Usage, error) {
	var u Usage
	read := func(p string) int64 {
		b, err := os.ReadFile(p)
		if err != nil {
			return 0
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	if m.mode == V2 {
		dir := filepath.Join(m.Root, m.Parent, id)
		u.MemoryBytes = read(filepath.Join(dir, "memory.current"))
		if b, err := os.ReadFile(filepath.Join(dir, "cpu.stat")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
					n, _ := strconv.ParseInt(v, 10, 64)
					u.CPUNanos = n * 1000
				}
			}
		}
		// One line per device: "8:0 rbytes=N wbytes=N rios=N ...".
		if b, err := os.ReadFile(filepath.Join(dir, "io.stat")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				k, v, _ := strings.Cut(f, "=")
				n, _ := strconv.ParseInt(v, 10, 64)
				switch k {
				case "rbytes":
					u.ReadBytes += n
				case "wbytes":
					u.WriteBytes += n
				}
			}
		}
		return u, nil
	}
	u.MemoryBytes = read(filepath.Join(m.Root, "memory", m.Parent, id, "memory.usage_in_bytes"))
	u.CPUNanos = read(filepath.Join(m.Root, "cpuacct", m.Parent, id, "cpuacct.usage"))
	// "8:0 Read N", "8:0 Write N", ..., "Total N".
	if b, err := os.ReadFile(filepath.Join(m.Root, "blkio", m.Parent, id, "blkio.throttle.io_service_bytes")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) != 3 {
				continue
			}
			n, _ := strconv.ParseInt(f[2], 10, 64)
			switch f[1] {
			case "Read":
				u.ReadBytes += n
			case "Write":
				u.WriteBytes += n
			}
		}
	}
	return u, nil
}

// JailerSettings renders l as Firecracker jailer settings, one
// "<file>=<value>" per --cgroup, with the cgroup version for
// --cgroup-version, for the cgroup Create makes when the jailer is given
// --parent-cgroup m.Parent and the VM's id: the jailer writes the values
// again and joins the VMM to the cgroup of each hierarchy a setting names,
// so every hierarchy banger reads gets one (v1 cpuacct.usage=0 only resets
// a counter of a VMM not started yet).
func (m *Manager) JailerSettings(l Limits) (version int, settings []string) {
	period := 100000
	add := func(file, value string) { settings = append(settings, file+"="+value) }
	pids := "max"
	if l.Pids > 0 {
		pids = strconv.FormatInt(l.Pids, 10)
	}
	if m.mode == V2 {
		mem := "max"
		if l.MemoryBytes > 0 {
			mem = strconv.FormatInt(l.MemoryBytes, 10)
		}
		add("memory.max", mem)
		add("pids.max", pids)
		if m.controllers["cpu"] && l.CPUWeight > 0 {
			add("cpu.weight", strconv.Itoa(l.CPUWeight))
		}
		if m.controllers["cpu"] && l.CPUQuota > 0 {
			add("cpu.max", fmt.Sprintf("%d %d", l.CPUQuota*period/100, period))
		}
		return 2, settings
	}
	mem := "-1"
	if l.MemoryBytes > 0 {
		mem = strconv.FormatInt(l.MemoryBytes, 10)
	}
	add("memory.limit_in_bytes", mem)
	add("pids.max", pids)
	if m.controllers["cpu"] {
		add("cpu.shares", strconv.Itoa(v1Shares(l)))
		if l.CPUQuota > 0 {
			add("cpu.cfs_quota_us", strconv.Itoa(l.CPUQuota*period/100))
		}
	}
	if m.controllers["cpuacct"] {
		add("cpuacct.usage", "0")
	}
	if m.controllers["blkio"] && l.IOWeight > 0 {
		if _, err := os.Stat(filepath.Join(m.Root, "blkio", "blkio.weight")); err == nil {
			add("blkio.weight", strconv.Itoa(min(1000, max(10, l.IOWeight/10))))
		}
	}
	return 1, settings
}

// orDefault is v, or def when v is not set.
func orDefault(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}
