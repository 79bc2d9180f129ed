package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// cloneOrSparseCopy copies src into dst (an empty file open for writing):
// a reflink when the filesystem shares extents (btrfs, xfs), else a copy that
// reads only src's data extents and leaves zero blocks as holes. It reports
// whether it reflinked.
func cloneOrSparseCopy(ctx context.Context, dst, src *os.File) (reflinked bool, err error) {
	err = unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
	if err == nil {
		return true, nil
	}
	// EOPNOTSUPP/ENOTTY: filesystem cannot reflink; EXDEV: different
	// filesystems; EINVAL: unaligned or unsupported. Anything else is real.
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) &&
		!errors.Is(err, unix.EXDEV) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return false, fmt.Errorf("reflinking %s: %w", src.Name(), err)
	}
	return false, sparseCopy(ctx, dst, src)
}

// copyBlock is the unit of zero detection: a run of zeros this long and
// aligned is left as a hole in dst.
const copyBlock = 4096

// sparseCopy copies src to dst, skipping holes (SEEK_DATA/SEEK_HOLE) and
// all-zero blocks inside data extents, then sets dst's size to src's.
func sparseCopy(ctx context.Context, dst, src *os.File) error {
	st, err := src.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		start, err := unix.Seek(int(src.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			// Filesystem without SEEK_DATA: treat the rest as data.
			start = off
		}
		end := size
		if err == nil {
			if e, herr := unix.Seek(int(src.Fd()), start, unix.SEEK_HOLE); herr == nil {
				end = e
			}
		}
		if err := copyRange(ctx, dst, src, start, end, buf); err != nil {
			return err
		}
		off = end
	}
	if err := dst.Truncate(size); err != nil {
		return fmt.Errorf("sizing %s: %w", dst.Name(), err)
	}
	return nil
}

// copyRange copies src[start:end) to the same offsets in dst, writing only
// blocks that are not all zero.
func copyRange(ctx context.Context, dst, src *os.File, start, end int64, buf []byte) error {
	for pos := start; pos < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int64(len(buf))
		if end-pos < n {
			n = end - pos
		}
		got, err := src.ReadAt(buf[:n], pos)
		if err != nil && !(errors.Is(err, io.EOF) && int64(got) == n) {
			return fmt.Errorf("reading %s at %d: %w", src.Name(), pos, err)
		}
		chunk := buf[:got]
		for i := 0; i < len(chunk); {
			j := i + copyBlock
			if j > len(chunk) {
				j = len(chunk)
			}
			if isZero(chunk[i:j]) {
				i = j
				continue
			}
			// Extend the run of non-zero blocks to write them in one call.
			k := j
			for k < len(chunk) {
				next := k + copyBlock
				if next > len(chunk) {
					next = len(chunk)
				}
				if isZero(chunk[k:next]) {
					break
				}
				k = next
			}
			if _, err := dst.WriteAt(chunk[i:k], pos+int64(i)); err != nil {
				return fmt.Errorf("writing %s: %w", dst.Name(), err)
			}
			i = k
		}
		pos += int64(got)
	}
	return nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
