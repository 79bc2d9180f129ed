package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// blobPath is where the cache keeps the blob with digest "sha256:<hex>".
func blobPath(cacheDir, digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexPart) != 64 || strings.Trim(hexPart, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%w: bad digest %q", ErrBadImage, digest)
	}
	return filepath.Join(cacheDir, "blobs", "sha256", hexPart), nil
}

// BlobPath is the cache file of the blob with this digest (which may not
// exist); the engine's garbage collector can use it with Metadata.Layers.
func BlobPath(cacheDir, digest string) (string, error) { return blobPath(cacheDir, digest) }

func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// fetch checks the size cap, then brings every layer into the cache.
func (r *resolved) fetch(ctx context.Context, opts PullOptions) (*Image, error) {
	release := func() {}
	if opts.Cache != nil {
		opts.useCache()
		digests := make([]string, len(r.layers))
		for i, l := range r.layers {
			digests[i] = l.Digest
		}
		// Pinned before they are looked for: a trim or prune meanwhile
		// keeps them.
		release = opts.Cache.pin(digests)
	}
	img, err := r.fetchAll(ctx, opts)
	if err != nil {
		release()
		return nil, err
	}
	img.release = release
	if opts.Cache != nil {
		// Best effort: a cache over its bound costs disk, not this pull.
		opts.Cache.Trim() //nolint:errcheck
	}
	return img, nil
}

func (r *resolved) fetchAll(ctx context.Context, opts PullOptions) (*Image, error) {
	if opts.CacheDir == "" {
		return nil, errors.New("no cache directory")
	}
	cache, err := filepath.Abs(opts.CacheDir)
	if err != nil {
		return nil, err
	}
	var total int64
	for _, l := range r.layers {
		if l.Size < 0 {
			return nil, fmt.Errorf("%w: layer %s declares size %d", ErrBadImage, short(l.Digest), l.Size)
		}
		total += l.Size
	}
	if opts.MaxSize > 0 && total > opts.MaxSize {
		return nil, fmt.Errorf("%w: layers declare %d bytes, the limit is %d", ErrTooLarge, total, opts.MaxSize)
	}
	for _, d := range []string{filepath.Join(cache, "blobs", "sha256"), filepath.Join(cache, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("creating layer cache: %w", err)
		}
	}
	for i, l := range r.layers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := r.fetchLayer(ctx, cache, i, opts.Progress); err != nil {
			return nil, fmt.Errorf("%s: %w", layerName(i, len(r.layers), l.Digest), err)
		}
	}
	return &Image{
		Source:       r.source,
		Digest:       r.digest,
		ConfigDigest: r.configDigest,
		Platform:     Platform,
		Config:       r.config,
		Layers:       r.layers,
		CacheDir:     cache,
	}, nil
}

// fetchLayer makes sure layer i is in the cache: an existing blob of the
// right size is kept (its content is checked again by Unpack); otherwise it
// is streamed into a temporary file, checked, and renamed into place.
func (r *resolved) fetchLayer(ctx context.Context, cache string, i int, progress func(Progress)) error {
	l := r.layers[i]
	report := func(done int64, cached bool) {
		if progress != nil {
			progress(Progress{Layer: i, Layers: len(r.layers), Digest: l.Digest, Done: done, Total: l.Size, Cached: cached})
		}
	}
	dst, err := blobPath(cache, l.Digest)
	if err != nil {
		return err
	}
	if st, err := os.Stat(dst); err == nil && st.Mode().IsRegular() && st.Size() == l.Size {
		touch(dst)
		report(l.Size, true)
		return nil
	}
	rc, err := r.open(i)
	if err != nil {
		return classifyRemote(err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Join(cache, "tmp"), filepath.Base(dst)+".*.partial")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	report(0, false)
	h := sha256.New()
	cw := &countingWriter{h: h, total: l.Size, report: report}
	// One byte more than declared tells a longer blob from a complete one.
	n, err := io.Copy(io.MultiWriter(tmp, cw), &ctxReader{ctx: ctx, r: io.LimitReader(rc, l.Size+1)})
	if err != nil {
		tmp.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		err = classifyRemote(err)
		switch {
		case errors.Is(err, ErrStalled):
		case n < l.Size:
			// The connection ended early (or the source's own size check
			// said so at EOF).
			err = fmt.Errorf("%w: %w", ErrTruncated, err)
		default:
			// The source checks the digest at EOF too.
			err = fmt.Errorf("%w: %w", ErrDigestMismatch, err)
		}
		return fmt.Errorf("downloading after %d of %d bytes: %w", n, l.Size, err)
	}
	if n < l.Size {
		tmp.Close()
		return fmt.Errorf("%w: got %d of %d bytes", ErrTruncated, n, l.Size)
	}
	if n > l.Size {
		tmp.Close()
		return fmt.Errorf("%w: blob is longer than the %d bytes declared", ErrDigestMismatch, l.Size)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != l.Digest {
		tmp.Close()
		return fmt.Errorf("%w: content has digest %s", ErrDigestMismatch, got)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("caching blob: %w", err)
	}
	report(l.Size, false)
	return nil
}

// countingWriter hashes and reports progress about every MiB.
type countingWriter struct {
	h       hash.Hash
	n, last int64
	total   int64
	report  func(int64, bool)
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.h.Write(p)
	w.n += int64(len(p))
	if w.n-w.last >= 1<<20 && w.n < w.total {
		w.last = w.n
		w.report(w.n, false)
	}
	return len(p), nil
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
