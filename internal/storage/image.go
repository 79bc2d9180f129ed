package storage

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

// File is a regular file to put into an ext4 image with InjectFiles.
type File struct {
	Path     string      // absolute path inside the image
	Mode     os.FileMode // permission bits, plus setuid/setgid/sticky
	Data     []byte
	UID, GID int
}

// InjectFiles writes files into an ext4 image or block device without
// mounting it, using debugfs: missing parent directories are made (root,
// 0755), an existing file or symlink is replaced, and mode and owner are set. banger
// uses it to put its SSH key and the hostname into each VM's own root disk
// before boot. The image must not be mounted.
//
// debugfs exits 0 when its commands fail and its stderr is not returned on
// success, so every file is checked afterwards with stat in the same run.
func (m *Manager) InjectFiles(ctx context.Context, image string, files []File) error {
	if len(files) == 0 {
		return nil
	}
	if _, err := os.Stat(image); err != nil {
		return fmt.Errorf("injecting files into image: %w", err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		if err := checkImagePath(f.Path); err != nil {
			return fmt.Errorf("injecting files into image %s: %w", image, err)
		}
		if f.Mode&^(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
			return fmt.Errorf("injecting %s into image %s: mode %v is not a regular file's", f.Path, image, f.Mode)
		}
		if f.UID < 0 || f.GID < 0 {
			return fmt.Errorf("injecting %s into image %s: negative owner", f.Path, image)
		}
		if seen[f.Path] {
			return fmt.Errorf("injecting files into image %s: %s given twice", image, f.Path)
		}
		seen[f.Path] = true
	}
	tmp, err := os.MkdirTemp("", "banger-inject-")
	if err != nil {
		return fmt.Errorf("injecting files into image %s: %w", image, err)
	}
	defer os.RemoveAll(tmp)
	if err := checkImagePath(tmp); err != nil {
		return fmt.Errorf("injecting files into image %s: temp dir: %w", image, err)
	}

	// Look first, write second: debugfs's mkdir on a directory that exists
	// fails but leaves an orphan inode behind (e2fsprogs 1.47), so only
	// missing parents may be made. Looking first also refuses bad targets
	// before anything is written.
	var probe []string
	probed := map[string]bool{}
	for _, f := range files {
		for _, p := range append(parents(f.Path), f.Path) {
			if !probed[p] {
				probed[p] = true
				probe = append(probe, "stat "+p)
			}
		}
	}
	found, err := m.debugfs(ctx, image, false, append([]string{"stat /"}, probe...), tmp)
	if err != nil {
		return fmt.Errorf("injecting files into image %s: %w", image, err)
	}

	script := []string{"stat /"}
	made := map[string]bool{}
	for i, f := range files {
		local := filepath.Join(tmp, strconv.Itoa(i))
		if err := os.WriteFile(local, f.Data, 0o600); err != nil {
			return fmt.Errorf("injecting %s into image %s: %w", f.Path, image, err)
		}
		for _, dir := range parents(f.Path) {
			st, ok := parseStat(found["stat "+dir])
			switch {
			case !ok:
				if !made[dir] {
					made[dir] = true
					script = append(script, "mkdir "+dir)
				}
			case st.Type != "directory":
				return fmt.Errorf("injecting %s into image %s: %s is a %s, not a directory", f.Path, image, dir, st.Type)
			}
		}
		if st, ok := parseStat(found["stat "+f.Path]); ok {
			// A symlink is replaced, as writing over it with cp would not.
			if st.Type != "regular" && st.Type != "symlink" {
				return fmt.Errorf("injecting %s into image %s: it is a %s", f.Path, image, st.Type)
			}
			script = append(script, "rm "+f.Path)
		}
		script = append(script,
			"write "+local+" "+f.Path,
			fmt.Sprintf("set_inode_field %s mode 0%o", f.Path, inodeMode(f.Mode)),
			fmt.Sprintf("set_inode_field %s uid %d", f.Path, f.UID),
			fmt.Sprintf("set_inode_field %s gid %d", f.Path, f.GID),
		)
	}
	for _, f := range files {
		script = append(script, "stat "+f.Path)
	}
	out, err := m.debugfs(ctx, image, true, script, tmp)
	if err != nil {
		return fmt.Errorf("injecting files into image %s: %w", image, err)
	}
	for _, f := range files {
		st, ok := parseStat(out["stat "+f.Path])
		want := inodeStat{Type: "regular", Mode: inodeMode(f.Mode) & 0o7777, UID: f.UID, GID: f.GID, Size: int64(len(f.Data))}
		if !ok {
			return fmt.Errorf("injecting %s into image %s: file missing after write", f.Path, image)
		}
		if st != want {
			return fmt.Errorf("injecting %s into image %s: after write found %+v, want %+v", f.Path, image, st, want)
		}
	}
	return nil
}

// ReadFileFromImage reads one regular file from an ext4 image or device
// without mounting it. It returns an error matching fs.ErrNotExist when
// the file, or the image itself, does not exist.
func (m *Manager) ReadFileFromImage(ctx context.Context, image, p string) ([]byte, error) {
	if err := checkImagePath(p); err != nil {
		return nil, fmt.Errorf("reading from image %s: %w", image, err)
	}
	if _, err := os.Stat(image); err != nil {
		return nil, fmt.Errorf("reading %s from image: %w", p, err)
	}
	tmp, err := os.MkdirTemp("", "banger-read-")
	if err != nil {
		return nil, fmt.Errorf("reading %s from image %s: %w", p, image, err)
	}
	defer os.RemoveAll(tmp)
	local := filepath.Join(tmp, "out")
	if err := checkImagePath(local); err != nil {
		return nil, fmt.Errorf("reading %s from image %s: temp dir: %w", p, image, err)
	}
	out, err := m.debugfs(ctx, image, false, []string{"stat /", "stat " + p, "dump " + p + " " + local}, tmp)
	if err != nil {
		return nil, fmt.Errorf("reading %s from image %s: %w", p, image, err)
	}
	st, ok := parseStat(out["stat "+p])
	if !ok {
		return nil, fmt.Errorf("reading %s from image %s: %w", p, image, fs.ErrNotExist)
	}
	if st.Type != "regular" {
		return nil, fmt.Errorf("reading %s from image %s: is a %s, not a regular file", p, image, st.Type)
	}
	data, err := os.ReadFile(local)
	if err != nil {
		return nil, fmt.Errorf("reading %s from image %s: dump: %w", p, image, err)
	}
	if int64(len(data)) != st.Size {
		return nil, fmt.Errorf("reading %s from image %s: got %d bytes, inode says %d", p, image, len(data), st.Size)
	}
	return data, nil
}

// debugfs runs script against image in one debugfs process and returns
// each command's stdout keyed by the command line (the last run wins). It
// fails when debugfs could not open the image, detected by "stat /" (the
// script's first command) printing nothing: that error goes to stderr only.
func (m *Manager) debugfs(ctx context.Context, image string, write bool, script []string, tmp string) (map[string]string, error) {
	scriptPath := filepath.Join(tmp, "script")
	if err := os.WriteFile(scriptPath, []byte(strings.Join(script, "\n")+"\n"), 0o600); err != nil {
		return nil, err
	}
	args := []string{"-f", scriptPath, image}
	if write {
		args = append([]string{"-w"}, args...)
	}
	out, err := m.Runner.Run(ctx, "debugfs", args...)
	if err != nil {
		return nil, err
	}
	sections := splitDebugfsOutput(out)
	if st, ok := parseStat(sections["stat /"]); !ok || st.Type != "directory" {
		return nil, fmt.Errorf("debugfs could not open %s as an ext2/3/4 filesystem", image)
	}
	return sections, nil
}

// splitDebugfsOutput cuts debugfs -f output into per-command sections: in
// script mode debugfs echoes each command as "debugfs: CMD" before its output.
func splitDebugfsOutput(out []byte) map[string]string {
	sections := map[string]string{}
	var cmd string
	var buf strings.Builder
	flush := func() {
		if cmd != "" {
			sections[cmd] = buf.String()
		}
		buf.Reset()
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "debugfs: "); ok {
			flush()
			cmd = c
			continue
		}
		buf.WriteString(line)
		buf.WriteByte('\n')
	}
	flush()
	return sections
}

// inodeStat is the part of debugfs's stat output that InjectFiles checks.
type inodeStat struct {
	Type     string
	Mode     uint32 // permission and setuid/setgid/sticky bits
	UID, GID int
	Size     int64
}

var (
	statTypeRe  = regexp.MustCompile(`(?m)^Inode:\s+\d+\s+Type:\s+(\S+)\s+Mode:\s+([0-7]+)`)
	statOwnerRe = regexp.MustCompile(`(?m)^User:\s+(\d+)\s+Group:\s+(\d+)(?:\s+Project:\s+\d+)?\s+Size:\s+(\d+)`)
)

// parseStat reads debugfs stat output; ok is false when there is none
// (the inode was not found).
func parseStat(s string) (st inodeStat, ok bool) {
	tm := statTypeRe.FindStringSubmatch(s)
	om := statOwnerRe.FindStringSubmatch(s)
	if tm == nil || om == nil {
		return inodeStat{}, false
	}
	mode, _ := strconv.ParseUint(tm[2], 8, 32)
	st.Type = tm[1]
	st.Mode = uint32(mode)
	st.UID, _ = strconv.Atoi(om[1])
	st.GID, _ = strconv.Atoi(om[2])
	st.Size, _ = strconv.ParseInt(om[3], 10, 64)
	return st, true
}

// inodeMode converts a Go file mode to an ext4 regular file's i_mode.
func inodeMode(m os.FileMode) uint32 {
	mode := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode | 0o100000 // S_IFREG
}

// checkImagePath accepts clean absolute paths that debugfs's command parser
// takes as one argument: no spaces, quotes or control characters.
func checkImagePath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("path %q: want a clean absolute file path", p)
	}
	for _, r := range p {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r == '"' || r == '\'' || r == '\\' || r > unicode.MaxASCII {
			return fmt.Errorf("path %q: unsupported character %q", p, r)
		}
	}
	return nil
}

// parents returns the directories above p, outermost first, without "/".
func parents(p string) []string {
	var dirs []string
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	return dirs
}
