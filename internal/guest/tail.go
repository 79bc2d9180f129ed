package guest

import "io"

// tailOffset returns where the last n lines of a file of the given size
// begin, counting as tail(1) does: a final line without a newline is a line,
// and the newline that ends the file does not start an empty one. n <= 0
// means the whole file. It reads backwards in chunks, so a large log costs
// only what is printed.
func tailOffset(r io.ReaderAt, size int64, n int) (int64, error) {
	if n <= 0 || size == 0 {
		return 0, nil
	}
	const chunk = 32 << 10
	buf := make([]byte, chunk)
	end := size
	// Skip the newline that terminates the last line.
	var last [1]byte
	if _, err := r.ReadAt(last[:], size-1); err != nil && err != io.EOF {
		return 0, err
	}
	if last[0] == '\n' {
		end--
	}
	seen := 0
	for end > 0 {
		start := max(end-chunk, 0)
		b := buf[:end-start]
		if _, err := r.ReadAt(b, start); err != nil && err != io.EOF {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' {
				continue
			}
			seen++
			if seen == n {
				return start + int64(i) + 1, nil
			}
		}
		end = start
	}
	return 0, nil
}

// copyFrom writes r's bytes from off up to EOF to w and returns the new offset.
func copyFrom(r io.ReaderAt, off int64, w io.Writer) (int64, error) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.ReadAt(buf, off)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return off, werr
			}
			off += int64(n)
		}
		if err == io.EOF || (err == nil && n == 0) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// copyRange writes r's bytes from off up to end to w, however much r holds
// beyond end by then (a log still being written), and returns the count.
func copyRange(r io.ReaderAt, off, end int64, w io.Writer) (int64, error) {
	if end <= off {
		return 0, nil
	}
	return io.Copy(w, io.NewSectionReader(r, off, end-off))
}
