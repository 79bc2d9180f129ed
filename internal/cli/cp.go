package cli

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/client"

	"github.com/spf13/cobra"
)

// splitRemote parses NAME:/path; a plain path is on the host.
func splitRemote(s string) (vm, p string, remote bool) {
	if i := strings.IndexByte(s, ':'); i > 0 && !strings.Contains(s[:i], "/") {
		return s[:i], s[i+1:], true
	}
	return "", s, false
}

func (a *app) vmCpCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories between host and guest (NAME:/path), preserving modes",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			svm, sp, sr := splitRemote(args[0])
			dvm, dp, dr := splitRemote(args[1])
			if sr == dr {
				return usageError{errors.New("exactly one of SRC and DST must be NAME:/path in a VM")}
			}
			c, err := a.api()
			if err != nil {
				return err
			}
			if dr {
				return a.copyToGuest(c, sp, dvm, dp)
			}
			return a.copyFromGuest(c, svm, sp, dp)
		},
	}
}

// guestRun runs argv in the guest, collecting stderr for errors.
func (a *app) guestRun(c *client.Client, vm string, argv []string, stdin io.Reader, stdout io.Writer) error {
	var stderr bytes.Buffer
	code, err := a.execIn(c, vm, execOptions{argv: argv, stdin: stdin, stdout: stdout, stderr: &stderr})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("%s in vm %s: exit %d: %s", argv[0], vm, code, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// copyToGuest streams a tar of src into the guest. Like cp: into DST when
// it is a directory, else as DST.
func (a *app) copyToGuest(c *client.Client, src, vm, dst string) error {
	if dst == "" {
		return usageError{errors.New("empty guest path")}
	}
	if _, err := os.Lstat(src); err != nil {
		return err
	}
	isDir := a.guestRun(c, vm, []string{"test", "-d", dst}, nil, io.Discard) == nil
	name, parent := path.Base(dst), path.Dir(dst)
	if isDir {
		name, parent = filepath.Base(filepath.Clean(src)), dst
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeTar(pw, src, name)) }()
	err := a.guestRun(c, vm, []string{"tar", "-x", "-f", "-", "-C", parent}, pr, io.Discard)
	pr.CloseWithError(errors.New("done"))
	return err
}

func writeTar(w io.Writer, src, name string) error {
	tw := tar.NewWriter(w)
	root := filepath.Clean(src)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		arcName := path.Join(name, filepath.ToSlash(rel))
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			link, _ = os.Readlink(p)
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = arcName
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		if info.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// copyFromGuest streams a tar of the guest's src and unpacks it on the host.
func (a *app) copyFromGuest(c *client.Client, vm, src, dst string) error {
	if src == "" {
		return usageError{errors.New("empty guest path")}
	}
	src = path.Clean(src)
	dst, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	name, parent := filepath.Base(dst), filepath.Dir(dst)
	if st, err := os.Stat(dst); err == nil && st.IsDir() {
		name, parent = path.Base(src), dst
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := readTar(pr, parent, path.Base(src), name)
		pr.CloseWithError(err)
		errc <- err
	}()
	err = a.guestRun(c, vm, []string{"tar", "-c", "-f", "-", "-C", path.Dir(src), path.Base(src)}, nil, pw)
	pw.CloseWithError(err)
	if uerr := <-errc; err == nil {
		err = uerr
	}
	return err
}

// readTar unpacks entries under from/ into parent/to/, refusing paths that
// leave parent.
func readTar(r io.Reader, parent, from, to string) error {
	tr := tar.NewReader(r)
	type dirMode struct {
		p string
		m fs.FileMode
	}
	var dirs []dirMode
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(path.Clean(hdr.Name), from)
		if rel != "" && !strings.HasPrefix(rel, "/") {
			return fmt.Errorf("unexpected entry %q in guest archive", hdr.Name)
		}
		target := filepath.Join(parent, to, filepath.FromSlash(rel))
		if !strings.HasPrefix(target, filepath.Clean(parent)+string(filepath.Separator)) && target != filepath.Clean(parent) {
			return fmt.Errorf("refusing entry %q outside %s", hdr.Name, parent)
		}
		// The archive comes from the guest, which is not trusted: never
		// write through a symlink it made earlier in the same archive.
		if err := noSymlinkBelow(parent, filepath.Dir(target)); err != nil {
			return fmt.Errorf("refusing entry %q: %w", hdr.Name, err)
		}
		mode := fs.FileMode(hdr.Mode) & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirMode{target, mode})
		case tar.TypeReg:
			os.Remove(target)
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			f.Close()
			if err != nil {
				return err
			}
			if err := os.Chmod(target, mode); err != nil {
				return err
			}
		case tar.TypeSymlink:
			os.Remove(target)
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return err
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		os.Chmod(dirs[i].p, dirs[i].m)
	}
	return nil
}

// noSymlinkBelow fails when any existing path component of dir below root
// is a symbolic link.
func noSymlinkBelow(root, dir string) error {
	rel, err := filepath.Rel(root, dir)
	if err != nil || rel == "." {
		return err
	}
	p := root
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		p = filepath.Join(p, part)
		st, err := os.Lstat(p)
		if err != nil {
			return nil // not made yet: nothing to follow
		}
		if st.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symbolic link", p)
		}
	}
	return nil
}
