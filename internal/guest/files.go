package guest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/pkg/sftp"
)

// modeBits are the permission bits copies preserve.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// sftpConn is an SFTP client with whatever must close with it.
type sftpConn struct {
	*sftp.Client
	closeExtra func()
}

func (s *sftpConn) Close() error {
	err := s.Client.Close()
	if s.closeExtra != nil {
		s.closeExtra()
	}
	return err
}

// openSFTP opens an SFTP client through the "sftp" subsystem or, when the
// server cannot provide it (dropbear built with another sftp-server path),
// by running c.SFTPServer directly. Cancelling ctx closes it, which aborts
// any operation in flight.
func (c *Client) openSFTP(ctx context.Context) (*sftpConn, func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	sc, err := c.dialSFTP()
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	return sc, func() { stop(); sc.Close() }, nil
}

func (c *Client) dialSFTP() (*sftpConn, error) {
	cl, subsysErr := sftp.NewClient(c.conn)
	if subsysErr == nil {
		return &sftpConn{Client: cl}, nil
	}
	sess, err := c.conn.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open sftp to guest %s: %w", c.addr, err)
	}
	w, err := sess.StdinPipe()
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("open sftp to guest %s: %w", c.addr, err)
	}
	r, err := sess.StdoutPipe()
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("open sftp to guest %s: %w", c.addr, err)
	}
	if err := sess.Start(ShellQuote(c.SFTPServer)); err != nil {
		sess.Close()
		return nil, fmt.Errorf("open sftp to guest %s: subsystem: %v; running %s: %w", c.addr, subsysErr, c.SFTPServer, err)
	}
	cl, err = sftp.NewClientPipe(r, w)
	if err != nil {
		sess.Close()
		return nil, fmt.Errorf("open sftp to guest %s: subsystem: %v; running %s: %w", c.addr, subsysErr, c.SFTPServer, err)
	}
	return &sftpConn{Client: cl, closeExtra: func() { sess.Close() }}, nil
}

// UploadFile writes r to guestPath with mode, atomically: the data goes to a
// temporary file beside it, which is renamed over guestPath once complete.
func (c *Client) UploadFile(ctx context.Context, guestPath string, mode os.FileMode, r io.Reader) error {
	sc, done, err := c.openSFTP(ctx)
	if err != nil {
		return fmt.Errorf("upload %s to guest %s: %w", guestPath, c.addr, err)
	}
	defer done()
	if err := uploadAtomic(sc, guestPath, mode, r); err != nil {
		return fmt.Errorf("upload %s to guest %s: %w", guestPath, c.addr, withCtx(ctx, err))
	}
	return nil
}

func uploadAtomic(sc *sftpConn, guestPath string, mode os.FileMode, r io.Reader) error {
	var suffix [6]byte
	rand.Read(suffix[:]) //nolint:errcheck // crypto/rand never fails on Linux
	tmp := path.Join(path.Dir(guestPath), "."+path.Base(guestPath)+".banger-"+hex.EncodeToString(suffix[:]))
	if err := writeGuestFile(sc, tmp, mode, r); err != nil {
		sc.Remove(tmp) //nolint:errcheck
		return err
	}
	if err := renameOver(sc, tmp, guestPath); err != nil {
		sc.Remove(tmp) //nolint:errcheck
		return err
	}
	return nil
}

func writeGuestFile(sc *sftpConn, p string, mode os.FileMode, r io.Reader) error {
	f, err := sc.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return err
	}
	if _, err := f.ReadFrom(r); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode & modeBits); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// renameOver renames with POSIX semantics (replacing dst) where the server
// has the OpenSSH extension; plain SFTP rename refuses an existing target.
func renameOver(sc *sftpConn, src, dst string) error {
	if _, ok := sc.HasExtension("posix-rename@openssh.com"); ok {
		return sc.PosixRename(src, dst)
	}
	if err := sc.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return sc.Rename(src, dst)
}

// withCtx prefers the context's error when the operation failed because ctx
// closed the connection under it.
func withCtx(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// CopyTo copies a host file, symlink or directory tree to the guest, with
// modes preserved. Like cp -r: when guestDst is an existing directory the
// copy lands inside it under hostSrc's base name; otherwise it becomes
// guestDst.
func (c *Client) CopyTo(ctx context.Context, hostSrc, guestDst string) error {
	sc, done, err := c.openSFTP(ctx)
	if err != nil {
		return fmt.Errorf("copy %s to guest %s:%s: %w", hostSrc, c.addr, guestDst, err)
	}
	defer done()
	info, err := os.Lstat(hostSrc)
	if err != nil {
		return fmt.Errorf("copy %s to guest %s: %w", hostSrc, c.addr, err)
	}
	target := guestDst
	if st, err := sc.Stat(guestDst); err == nil && st.IsDir() {
		target = path.Join(guestDst, filepath.Base(filepath.Clean(hostSrc)))
	}
	if err := copyToGuest(ctx, sc, hostSrc, target, info); err != nil {
		return fmt.Errorf("copy %s to guest %s:%s: %w", hostSrc, c.addr, target, withCtx(ctx, err))
	}
	return nil
}

func copyToGuest(ctx context.Context, sc *sftpConn, src, dst string, info fs.FileInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case info.Mode().IsRegular():
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := writeGuestFile(sc, dst, info.Mode(), f); err != nil {
			return fmt.Errorf("%s: %w", dst, err)
		}
		return nil
	case info.Mode()&fs.ModeSymlink != 0:
		link, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := sc.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w", dst, err)
		}
		if err := sc.Symlink(link, dst); err != nil {
			return fmt.Errorf("symlink %s: %w", dst, err)
		}
		return nil
	case info.IsDir():
		if err := sc.Mkdir(dst); err != nil {
			if st, serr := sc.Stat(dst); serr != nil || !st.IsDir() {
				return fmt.Errorf("mkdir %s: %w", dst, err)
			}
		}
		// Writable while filling; the real mode is set after the contents.
		if err := sc.Chmod(dst, 0o700); err != nil {
			return fmt.Errorf("chmod %s: %w", dst, err)
		}
		ents, err := os.ReadDir(src)
		if err != nil {
			return err
		}
		for _, e := range ents {
			ei, err := e.Info()
			if err != nil {
				return err
			}
			if err := copyToGuest(ctx, sc, filepath.Join(src, e.Name()), path.Join(dst, e.Name()), ei); err != nil {
				return err
			}
		}
		if err := sc.Chmod(dst, info.Mode()&modeBits); err != nil {
			return fmt.Errorf("chmod %s: %w", dst, err)
		}
		return nil
	}
	return fmt.Errorf("%s: unsupported file type %s", src, info.Mode().Type())
}

// CopyFrom copies a guest file, symlink or directory tree to the host, with
// modes preserved, with the same destination rule as CopyTo.
func (c *Client) CopyFrom(ctx context.Context, guestSrc, hostDst string) error {
	sc, done, err := c.openSFTP(ctx)
	if err != nil {
		return fmt.Errorf("copy guest %s:%s to %s: %w", c.addr, guestSrc, hostDst, err)
	}
	defer done()
	info, err := sc.Lstat(guestSrc)
	if err != nil {
		return fmt.Errorf("copy guest %s:%s: %w", c.addr, guestSrc, err)
	}
	target := hostDst
	if st, err := os.Stat(hostDst); err == nil && st.IsDir() {
		target = filepath.Join(hostDst, path.Base(path.Clean(guestSrc)))
	}
	if err := copyFromGuest(ctx, sc, guestSrc, target, info); err != nil {
		return fmt.Errorf("copy guest %s:%s to %s: %w", c.addr, guestSrc, target, withCtx(ctx, err))
	}
	return nil
}

func copyFromGuest(ctx context.Context, sc *sftpConn, src, dst string, info fs.FileInfo) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	switch {
	case info.Mode().IsRegular():
		in, err := sc.Open(src)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		if _, err := in.WriteTo(out); err != nil {
			out.Close()
			return fmt.Errorf("%s: %w", src, err)
		}
		if err := out.Chmod(info.Mode() & modeBits); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	case info.Mode()&fs.ModeSymlink != 0:
		link, err := sc.ReadLink(src)
		if err != nil {
			return fmt.Errorf("readlink %s: %w", src, err)
		}
		if err := os.Remove(dst); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return os.Symlink(link, dst)
	case info.IsDir():
		if err := os.Mkdir(dst, 0o700); err != nil {
			if st, serr := os.Stat(dst); serr != nil || !st.IsDir() {
				return err
			}
		}
		if err := os.Chmod(dst, 0o700); err != nil {
			return err
		}
		ents, err := sc.ReadDir(src)
		if err != nil {
			return fmt.Errorf("readdir %s: %w", src, err)
		}
		for _, e := range ents {
			if err := copyFromGuest(ctx, sc, path.Join(src, e.Name()), filepath.Join(dst, e.Name()), e); err != nil {
				return err
			}
		}
		return os.Chmod(dst, info.Mode()&modeBits)
	}
	return fmt.Errorf("%s: unsupported file type %s", src, info.Mode().Type())
}
