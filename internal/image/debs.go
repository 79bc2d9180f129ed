package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
)

// kernelMetaPackage always depends on Debian's current cloud kernel: virtio
// and ACPI drivers, small, no hardware drivers a VM never needs.
const kernelMetaPackage = "linux-image-cloud-amd64"

// deb is one package file as apt would download it.
type deb struct {
	name   string // package name
	file   string // file name apt gives it (name_version_arch.deb, version escaped)
	size   int64
	sha256 string // hex, "" when apt did not give one
	path   string // where it is once fetched
}

// resolveKernelPackage finds the versioned kernel package the cloud
// metapackage currently depends on (linux-image-6.1.0-56-cloud-amd64).
func resolveKernelPackage(ctx context.Context, r Runner) (string, error) {
	out, err := aptRetry(ctx, r, "apt-cache", "depends", kernelMetaPackage)
	if err != nil {
		return "", fmt.Errorf("resolving kernel package %s: %w", kernelMetaPackage, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends:")
		if !ok {
			continue
		}
		dep = strings.Trim(strings.TrimSpace(dep), "<>")
		if strings.HasPrefix(dep, "linux-image-") {
			return dep, nil
		}
	}
	return "", fmt.Errorf("resolving kernel package: %s depends on no linux-image package", kernelMetaPackage)
}

// aptUpdated remembers that this process already ran apt-get update.
var aptUpdated atomic.Bool

// aptRetry runs an apt query; when apt does not know the package (a fresh
// machine that never ran apt-get update) it updates the lists once per
// process and retries. Only the kernel lookup, which runs first and names a
// package every Debian amd64 archive has, uses it: a typo in an extra
// package must not cost an update.
func aptRetry(ctx context.Context, r Runner, name string, args ...string) ([]byte, error) {
	out, err := r.Run(ctx, name, args...)
	if err == nil || !aptListsMissing(out, err) || !aptUpdated.CompareAndSwap(false, true) {
		return out, err
	}
	if _, uerr := r.Run(ctx, "apt-get", "update"); uerr != nil {
		return out, errors.Join(err, fmt.Errorf("apt-get update: %w", uerr))
	}
	return r.Run(ctx, name, args...)
}

// aptListsMissing recognises apt's answer for a package it has no list entry
// for; apt's exit status does not tell this apart from other failures.
func aptListsMissing(out []byte, err error) bool {
	s := string(out) + err.Error()
	return strings.Contains(s, "Unable to locate package") || strings.Contains(s, "No packages found") ||
		strings.Contains(s, "has no installation candidate")
}

// resolveDebs asks apt which files it would download for names, without
// downloading. It runs in an empty directory: apt-get download omits packages
// whose file is already in the current directory.
func resolveDebs(ctx context.Context, r Runner, scratch string, names []string) ([]deb, error) {
	empty, err := os.MkdirTemp(scratch, "resolve-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(empty)
	out, err := r.Run(ctx, "env", append([]string{"-C", empty, "apt-get", "download", "--print-uris"}, names...)...)
	if err != nil {
		return nil, fmt.Errorf("resolving packages %s: %w", strings.Join(names, " "), err)
	}
	debs, err := parsePrintURIs(out)
	if err != nil {
		return nil, fmt.Errorf("resolving packages: %w", err)
	}
	have := map[string]bool{}
	for _, d := range debs {
		have[d.name] = true
	}
	for _, n := range names {
		if !have[packageName(n)] {
			return nil, fmt.Errorf("resolving packages: apt gave no file for %s", n)
		}
	}
	return debs, nil
}

// packageName strips apt's version, release and architecture suffixes
// (pkg=1.0, pkg/bookworm, pkg:amd64) from a package argument.
func packageName(arg string) string {
	if i := strings.IndexAny(arg, "=/:"); i >= 0 {
		return arg[:i]
	}
	return arg
}

// dedupe keeps the first occurrence of each package name, in order.
func dedupe(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if !seen[packageName(n)] {
			seen[packageName(n)] = true
			out = append(out, n)
		}
	}
	return out
}

// parsePrintURIs reads `apt-get download --print-uris` lines:
// 'URI' FILE SIZE HASHTYPE:HEX, in the order the packages were named.
func parsePrintURIs(out []byte) ([]deb, error) {
	var debs []deb
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasPrefix(f[0], "'") {
			continue
		}
		size, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil || strings.ContainsAny(f[1], "/\x00") || !strings.HasSuffix(f[1], ".deb") {
			return nil, fmt.Errorf("unexpected apt line %q", sc.Text())
		}
		name, _, ok := strings.Cut(f[1], "_") // name_version_arch.deb; names hold no "_"
		if !ok {
			return nil, fmt.Errorf("unexpected package file name %q", f[1])
		}
		d := deb{name: name, file: f[1], size: size}
		if len(f) > 3 {
			if h, ok := strings.CutPrefix(f[3], "SHA256:"); ok {
				d.sha256 = strings.ToLower(h)
			}
		}
		debs = append(debs, d)
	}
	return debs, nil
}

// fetch resolves names and makes sure each .deb is in the cache (or the
// build's scratch directory), downloading only what is missing.
func (b *builder) fetch(ctx context.Context, names []string) ([]deb, error) {
	cache := b.opts.CacheDir
	if cache == "" {
		cache = filepath.Join(b.work, "debs")
	}
	return fetchDebsReporting(ctx, b.r, b.work, cache, dedupe(names), func(missing []deb, total int) error {
		if err := b.step(ctx, "downloading packages"); err != nil {
			return err
		}
		if len(missing) == 0 {
			return nil
		}
		var size int64
		for _, d := range missing {
			size += d.size
		}
		return b.step(ctx, fmt.Sprintf("downloading %d packages, %.1f MiB (%d of %d cached)",
			len(missing), float64(size)/(1<<20), total-len(missing), total))
	})
}

// fetchDebs resolves names with apt, then downloads into cache the files
// that are not there yet (beforeDownload runs first either way). Files are
// downloaded into a private directory and renamed into the cache after their
// size and SHA-256 check out, so concurrent builds can share a cache. With
// every file cached it needs no network: apt resolves from its local lists.
func fetchDebs(ctx context.Context, r Runner, scratch, cache string, names []string, beforeDownload func() error) ([]deb, error) {
	return fetchDebsReporting(ctx, r, scratch, cache, names, func([]deb, int) error { return beforeDownload() })
}

// fetchDebsReporting is fetchDebs telling beforeDownload which of the total
// files are not cached yet.
func fetchDebsReporting(ctx context.Context, r Runner, scratch, cache string, names []string, beforeDownload func(missing []deb, total int) error) ([]deb, error) {
	debs, err := resolveDebs(ctx, r, scratch, names)
	if err != nil {
		return nil, err
	}
	if cache, err = filepath.Abs(cache); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("creating package cache %s: %w", cache, err)
	}
	var missing []string
	var missingDebs []deb
	for i := range debs {
		debs[i].path = filepath.Join(cache, debs[i].file)
		if verifyDeb(debs[i], debs[i].path) != nil {
			missing = append(missing, debs[i].name)
			missingDebs = append(missingDebs, debs[i])
		}
	}
	if err := beforeDownload(missingDebs, len(debs)); err != nil {
		return nil, err
	}
	if len(missing) == 0 {
		return debs, nil
	}
	tmp, err := os.MkdirTemp(cache, ".download-")
	if err != nil {
		return nil, fmt.Errorf("downloading packages: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := r.Run(ctx, "env", append([]string{"-C", tmp, "apt-get", "download"}, missing...)...); err != nil {
		return nil, fmt.Errorf("downloading packages %s: %w", strings.Join(missing, " "), err)
	}
	for _, d := range debs {
		got := filepath.Join(tmp, d.file)
		if _, err := os.Stat(got); errors.Is(err, os.ErrNotExist) {
			continue // was cached
		}
		if err := verifyDeb(d, got); err != nil {
			return nil, fmt.Errorf("downloading package %s: %w", d.name, err)
		}
		if err := os.Rename(got, d.path); err != nil {
			return nil, fmt.Errorf("caching package %s: %w", d.name, err)
		}
	}
	for _, d := range debs {
		if err := verifyDeb(d, d.path); err != nil {
			return nil, fmt.Errorf("downloading package %s: %w", d.name, err)
		}
	}
	return debs, nil
}

// verifyDeb checks a package file against apt's size and SHA-256.
func verifyDeb(d deb, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	if n != d.size {
		return fmt.Errorf("%s has %d bytes, apt expects %d", path, n, d.size)
	}
	if d.sha256 != "" && hex.EncodeToString(h.Sum(nil)) != d.sha256 {
		return fmt.Errorf("%s: SHA-256 mismatch", path)
	}
	return nil
}

// unpackDeb extracts a package's files (never its maintainer scripts) into dest.
func unpackDeb(ctx context.Context, r Runner, path, dest string) error {
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	if _, err := r.Run(ctx, "dpkg", "-x", path, dest); err != nil {
		return fmt.Errorf("unpacking %s: %w", filepath.Base(path), err)
	}
	return nil
}

// kernelFiles is what an unpacked linux-image package provides.
type kernelFiles struct {
	version string // "6.1.0-56-cloud-amd64"
	vmlinuz string
	modules string // .../lib/modules/<version>/kernel
}

func findKernel(kpkg string) (kernelFiles, error) {
	matches, _ := filepath.Glob(filepath.Join(kpkg, "boot", "vmlinuz-*"))
	if len(matches) != 1 {
		return kernelFiles{}, fmt.Errorf("kernel package holds %d vmlinuz files, want 1", len(matches))
	}
	version := strings.TrimPrefix(filepath.Base(matches[0]), "vmlinuz-")
	mods := filepath.Join(kpkg, "lib", "modules", version, "kernel")
	if st, err := os.Stat(mods); err != nil || !st.IsDir() {
		return kernelFiles{}, fmt.Errorf("kernel package has no modules for %s", version)
	}
	return kernelFiles{version: version, vmlinuz: matches[0], modules: mods}, nil
}
