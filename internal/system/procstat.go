package system

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times: 100 on
// every Linux architecture banger runs on (the kernel fixes it for
// userspace; sysconf(_SC_CLK_TCK) returns it).
const clockTicks = 100

// ProcUsage is what one process has consumed, from /proc.
type ProcUsage struct {
	CPUNanos   int64 // user + system time
	RSSBytes   int64 // resident memory
	ReadBytes  int64 // bytes the process made the storage layer read (/proc/PID/io read_bytes)
	WriteBytes int64 // bytes it caused to be written
}

// ReadProcUsage reads pid's CPU time, resident memory and storage I/O.
// The I/O counters need the daemon to be root or the process's owner;
// they stay zero otherwise.
func ReadProcUsage(pid int) (ProcUsage, error) {
	var u ProcUsage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return u, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3; utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return u, fmt.Errorf("parse /proc/%d/stat: short", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	u.CPUNanos = (ut + st) * (1e9 / clockTicks)
	if st, err := ProcStatus(pid); err == nil {
		if v, ok := st["VmRSS"]; ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, "kB")), 10, 64)
			u.RSSBytes = kb << 10
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid)); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch k {
			case "read_bytes":
				u.ReadBytes = n
			case "write_bytes":
				u.WriteBytes = n
			}
		}
	}
	return u, nil
}

// MemAvailable is the kernel's estimate of the memory available for new
// work without swapping (MemAvailable in /proc/meminfo), in bytes.
func MemAvailable() (int64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: %q: %w", line, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/meminfo has no MemAvailable")
}
