package image

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// removeTree removes a build directory, first unmounting anything mounted
// below it. debootstrap mounts proc and sys (and may bind /dev) inside its
// target; if it dies mid-way those mounts stay, and os.RemoveAll would walk
// into them and delete the host's files. When a mount cannot be undone the
// tree is left in place and the error says so.
func removeTree(ctx context.Context, r Runner, dir string) error {
	mounts, err := mountsUnder(dir)
	if err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	for _, m := range mounts {
		r.Run(ctx, "umount", "-l", m) //nolint:errcheck // checked below
	}
	if mounts, err = mountsUnder(dir); err != nil || len(mounts) > 0 {
		return fmt.Errorf("removing %s: still mounted below it: %q (%v); left in place", dir, mounts, err)
	}
	return os.RemoveAll(dir)
}

// mountsUnder lists mount points strictly below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return parseMountsUnder(data, dir), nil
}

// parseMountsUnder reads mountinfo lines (field 5 is the mount point, with
// space, tab, newline and backslash octal-escaped) and keeps those below dir.
func parseMountsUnder(mountinfo []byte, dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(mountinfo))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		mp := unescapeMountinfo(f[4])
		if strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
