package jail

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount flags that break a jail dir, as statfs reports them.
const (
	// NoSuid and NoExec are refused under every jail dir: the VMM (or the
	// jailer's copy of it) is executed from there, and set-id bits must
	// mean what they say for the binaries it holds.
	NoSuid = unix.ST_NOSUID
	NoExec = unix.ST_NOEXEC
	// NoDev is refused where device nodes are made (the jailer's /dev/kvm
	// and /dev/net/tun live in its chroot).
	NoDev = unix.ST_NODEV
)

// CheckMount refuses a jail dir lying on a mount with any of the flags
// in refuse (NoSuid, NoExec, NoDev), before anything is made there. The
// error names the dir, the mount point, the flags and how to fix it. dir
// need not exist yet: its nearest existing parent is looked at.
func CheckMount(dir string, refuse int64) error {
	p := filepath.Clean(dir)
	for {
		if _, err := os.Stat(p); err == nil || p == "/" {
			break
		}
		p = filepath.Dir(p)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return fmt.Errorf("jail dir %s: statfs %s: %w", dir, p, err)
	}
	var bad []string
	for _, f := range []struct {
		flag int64
		name string
	}{{NoSuid, "nosuid"}, {NoExec, "noexec"}, {NoDev, "nodev"}} {
		if refuse&f.flag != 0 && int64(st.Flags)&f.flag != 0 {
			bad = append(bad, f.name)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	mnt := mountPointOf(p)
	opts := strings.NewReplacer("nosuid", "suid", "noexec", "exec", "nodev", "dev").Replace(strings.Join(bad, ","))
	return fmt.Errorf("jail dir %s is on mount %s, mounted %s: a confined VMM cannot run from there (%s); remount it (mount -o remount,%s %s) or move the directory to another filesystem in the configuration",
		dir, mnt, strings.Join(bad, ","), why(bad), opts, mnt)
}

func why(flags []string) string {
	var out []string
	for _, f := range flags {
		switch f {
		case "noexec":
			out = append(out, "noexec: the VMM binary in the jail cannot be executed")
		case "nosuid":
			out = append(out, "nosuid: set-id bits are ignored there")
		case "nodev":
			out = append(out, "nodev: the jail's /dev/kvm and /dev/net/tun cannot be opened")
		}
	}
	return strings.Join(out, "; ")
}

// mountPointOf is the mount point holding path, from /proc/self/mountinfo
// (the longest mount point that is path or a parent of it).
func mountPointOf(path string) string {
	if r, err := filepath.EvalSymlinks(path); err == nil {
		path = r
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "(unknown mount)"
	}
	defer f.Close()
	best := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if (path == mp || strings.HasPrefix(path, strings.TrimSuffix(mp, "/")+"/")) && len(mp) > len(best) {
			best = mp
		}
	}
	if best == "" {
		return "(unknown mount)"
	}
	return best
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
