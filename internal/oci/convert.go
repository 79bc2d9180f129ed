package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/image"
)

// ConverterVersion is part of every rootfs cache key: bump it when a change
// to Unpack or the guest side's Go code (not its packages or embedded
// scripts, which are hashed) changes the bytes of what BuildRootfs makes.
const ConverterVersion = "2"

// ConvertOptions configure Convert.
type ConvertOptions struct {
	BuildOptions
	// MaxSize refuses an image whose files add up to more than this many
	// bytes once unpacked (0: no limit); a cached rootfs is held to it too.
	MaxSize int64
	// Cache, when set, is where built root filesystems are kept and looked
	// up; nil builds every time.
	Cache *RootfsCache
}

// Convert makes out (an ext4 root filesystem) and its Metadata from img:
// copied from opts.Cache when an entry for the same key is there and
// verifies, else unpacked into tree (created, then removed) and built as
// BuildRootfs does, then stored in the cache. The guest side, which does
// not depend on the image, is prepared while the layers are unpacked. On
// failure out and the metadata are removed.
func Convert(ctx context.Context, img *Image, tree, out string, opts ConvertOptions) (*Metadata, error) {
	m, err := convertImage(ctx, img, tree, out, opts)
	if err != nil {
		os.Remove(out)
		os.Remove(filepath.Join(filepath.Dir(out), MetadataFile))
		return nil, err
	}
	return m, nil
}

func convertImage(ctx context.Context, img *Image, tree, out string, opts ConvertOptions) (*Metadata, error) {
	say := func(s string) {
		if opts.Progress != nil {
			opts.Progress(s)
		}
	}
	fail := func(err error) (*Metadata, error) {
		return nil, fmt.Errorf("building rootfs of %s: %w", img.Source, err)
	}
	// The agent is part of the cache key: a new banger-agent makes new
	// root filesystems.
	agentSum := ""
	if opts.Agent != "" {
		if err := image.CheckAgent(opts.Agent); err != nil {
			return fail(err)
		}
		sum, err := fileSHA256(opts.Agent)
		if err != nil {
			return fail(fmt.Errorf("guest agent: %w", err))
		}
		agentSum = sum
	}
	// tryCache looks up the entry for guest hash h; done says whether the
	// conversion is over (made from the cache, or failed).
	tryCache := func(h string) (m *Metadata, err error, done bool) {
		m, err = useCached(ctx, img, out, rootfsKey(img, h, agentSum), opts)
		if errors.Is(err, errCacheMiss) {
			if err != errCacheMiss {
				say(err.Error())
			}
			return nil, nil, false
		}
		return m, err, true
	}
	// With apt's answer remembered, the cache is looked up first.
	recalled := ""
	if opts.Cache != nil {
		if h, ok := recalledGuest(opts.Cache.Dir, opts.DebCache); ok {
			recalled = h
			if m, err, done := tryCache(h); done {
				return m, err
			}
		}
	}
	if opts.Runner == nil || opts.DebCache == "" {
		return fail(errors.New("no runner or package cache"))
	}
	if euid() != 0 {
		return fail(errors.New("needs root (layer files keep their owners and device nodes)"))
	}

	// Otherwise apt resolves the guest packages and the guest side is
	// prepared while the layers are unpacked; when apt's answer gives the
	// key of a cached rootfs, the unpack is abandoned.
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer os.RemoveAll(tree)
	type result struct {
		g   *guestSide
		p   *preparedGuest
		err error
	}
	resolved, prepared := make(chan result, 1), make(chan result, 1)
	go func() {
		scratch, err := scratchDir(opts.BuildOptions, out)
		if err != nil {
			resolved <- result{err: err}
			return
		}
		g, err := resolveGuest(bctx, opts.Runner, scratch, opts.DebCache)
		os.RemoveAll(scratch)
		resolved <- result{g: g, err: err}
		if err != nil {
			return
		}
		p, err := prepareGuest(bctx, opts.BuildOptions, out, g)
		prepared <- result{p: p, err: err}
	}()
	unpacked := make(chan error, 1)
	go func() { unpacked <- Unpack(bctx, img, tree, UnpackOptions{MaxSize: opts.MaxSize}) }()
	say(fmt.Sprintf("unpacking %d layers (%d bytes), preparing the guest side", len(img.Layers), img.Size()))
	// stop abandons the unpack and the guest side, and waits for both.
	var unpackErr error
	unpackDone := false
	stop := func() {
		cancel()
		if !unpackDone {
			unpackErr, unpackDone = <-unpacked, true
		}
		if r := <-prepared; r.p != nil {
			r.p.cleanup()
		}
	}
	var guest *guestSide
	select {
	case r := <-resolved:
		if r.err != nil {
			cancel()
			<-unpacked
			return fail(r.err)
		}
		guest = r.g
	case unpackErr = <-unpacked:
		unpackDone = true
		if unpackErr != nil {
			cancel()
			if r := <-resolved; r.err == nil {
				stop()
			}
			return nil, unpackErr
		}
		r := <-resolved
		if r.err != nil {
			return fail(r.err)
		}
		guest = r.g
	}
	if opts.Cache != nil {
		rememberGuest(opts.Cache.Dir, guest)
		if guest.hash != recalled {
			if m, err, done := tryCache(guest.hash); done {
				stop()
				return m, err
			}
		}
	}
	if !unpackDone {
		unpackErr = <-unpacked
	}
	pr := <-prepared
	defer pr.p.cleanup()
	if unpackErr != nil {
		return nil, unpackErr
	}
	if pr.err != nil {
		return fail(pr.err)
	}
	m, err := buildRootfs(ctx, img, tree, out, opts.BuildOptions, pr.p)
	if err != nil {
		return fail(err)
	}
	if opts.Cache != nil {
		say("storing rootfs in the cache")
		key := rootfsKey(img, guest.hash, agentSum)
		if err := opts.Cache.store(ctx, key, out, cacheEntry{UnpackedSize: m.UnpackedSize, Notes: m.Notes, Source: img.Source,
			Digest: img.Digest, ConfigDigest: img.ConfigDigest}); err != nil {
			// The image is made; only the next conversion is slower.
			say("note: rootfs not cached: " + err.Error())
		}
	}
	return m, nil
}

// useCached copies out from the cache entry key and writes its metadata,
// or says errCacheMiss.
func useCached(ctx context.Context, img *Image, out, key string, opts ConvertOptions) (*Metadata, error) {
	ent, err := opts.Cache.use(ctx, key, out)
	if err != nil {
		return nil, err
	}
	if opts.MaxSize > 0 && ent.UnpackedSize > opts.MaxSize {
		return nil, fmt.Errorf("%w: %d bytes unpacked, the limit is %d", ErrTooLarge, ent.UnpackedSize, opts.MaxSize)
	}
	if opts.Progress != nil {
		opts.Progress("rootfs from the cache (" + key[:12] + ")")
	}
	m := newMetadata(img, out, ent.UnpackedSize, ent.Size, ent.Notes)
	if err := writeMetadata(m); err != nil {
		return nil, err
	}
	return m, nil
}

// rootfsKey names the cache entry of img's rootfs: a hash of everything
// that decides its bytes. The manifest digest covers the config and the
// layers (for a docker save tarball, Digest is the config digest, so the
// layers are listed too); guest is the guest side's hash; the sizing policy
// is sampled from image.RootfsSize so that a change to it makes new keys.
// The source reference is not part of it: the same image under two names
// is the same filesystem.
func rootfsKey(img *Image, guest, agent string) string {
	layers := make([]string, len(img.Layers))
	for i, l := range img.Layers {
		layers[i] = l.Digest + " " + l.DiffID
	}
	k, _ := json.Marshal(struct {
		Converter, Digest, ConfigDigest, Platform, Guest, Sizing, Agent string
		Layers                                                          []string
	}{
		ConverterVersion, img.Digest, img.ConfigDigest, img.Platform, guest,
		fmt.Sprint(image.RootfsSize(0, 0), image.RootfsSize(1<<30, 1<<16), image.RootfsSize(16<<30, 1<<20)),
		agent, layers,
	})
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:])
}

// ociGuestFiles are banger's scripts for /.banger (a variable for tests).
var ociGuestFiles = image.OCIGuestFiles

// guestSide is the resolved guest side: its Debian packages, and a hash of
// everything it is made of.
type guestSide struct {
	debs []image.DebFile
	hash string
	// aptFP is apt's state (aptFingerprint) before resolving.
	aptFP string
	// shas are the packages' SHA-256s, by file name.
	shas map[string]string
}

// resolveGuest fetches the guest packages (apt resolves them) and hashes
// the guest side: the converter version, each package file and banger's
// embedded guest scripts.
func resolveGuest(ctx context.Context, r Runner, scratch, debCache string) (*guestSide, error) {
	fp, _ := aptFingerprint(debCache) // "" never matches: nothing remembered
	debs, err := image.FetchDebs(ctx, r, scratch, debCache, image.GuestPackages())
	if err != nil {
		return nil, err
	}
	g := &guestSide{debs: debs, shas: map[string]string{}, aptFP: fp}
	for _, d := range debs {
		sum, err := fileSHA256(d.Path)
		if err != nil {
			return nil, err
		}
		g.shas[filepath.Base(d.Path)] = sum
	}
	g.hash, err = guestHash(g.shas)
	return g, err
}

// guestHash hashes the guest side from its packages' SHA-256s and the
// embedded files.
func guestHash(shas map[string]string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "banger oci guest side %s\n", ConverterVersion)
	files := make([]string, 0, len(shas))
	for f := range shas {
		files = append(files, f)
	}
	sort.Strings(files)
	for _, f := range files {
		fmt.Fprintf(h, "deb %s %s\n", f, shas[f])
	}
	guestFS := ociGuestFiles()
	err := fs.WalkDir(guestFS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(guestFS, p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "file %s %d\n", p, len(data))
		h.Write(data)
		return nil
	})
	if err != nil {
		return "", err
	}
	setup := image.GuestSetupScript()
	fmt.Fprintf(h, "guest-setup %d\n", len(setup))
	h.Write(setup)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// aptState are the files whose change may change what apt resolves the
// guest packages to: its package lists, its configuration and dpkg's
// status. A variable for tests.
var aptState = []string{"/var/lib/apt/lists", "/etc/apt", "/var/lib/dpkg/status"}

// aptFingerprint hashes the names, sizes and modification times of
// aptState (lists and configuration one level deep, which is where apt
// keeps them).
func aptFingerprint(debCache string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", debCache, strings.Join(image.GuestPackages(), " "))
	stamp := func(p string, st fs.FileInfo) {
		fmt.Fprintf(h, "%s %d %d %o\n", p, st.Size(), st.ModTime().UnixNano(), st.Mode())
	}
	for _, root := range aptState {
		st, err := os.Stat(root)
		if errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(h, "%s missing\n", root)
			continue
		}
		if err != nil {
			return "", err
		}
		stamp(root, st)
		if !st.IsDir() {
			continue
		}
		err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && p != root && strings.Count(strings.TrimPrefix(p, root), "/") > 1 {
				return fs.SkipDir
			}
			if d.Name() == "lock" || d.Name() == "partial" {
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
			st, err := d.Info()
			if err != nil {
				return err
			}
			stamp(p, st)
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// guestMemo is what rememberGuest keeps: the guest side's hash for one
// state of apt, so that looking up the cache needs no apt run (about a
// second).
type guestMemo struct {
	Fingerprint string            `json:"apt_fingerprint"`
	Hash        string            `json:"guest_hash"`
	Debs        map[string]string `json:"debs"` // file -> SHA-256
}

func guestMemoPath(cacheDir string) string { return filepath.Join(cacheDir, ".guest.json") }

// recalledGuest is the guest side's hash remembered for apt's current
// state, if any. A stale memo (apt's state changed) is not used; the next
// build resolves with apt and remembers again.
func recalledGuest(cacheDir, debCache string) (string, bool) {
	data, err := os.ReadFile(guestMemoPath(cacheDir))
	if err != nil {
		return "", false
	}
	var m guestMemo
	if json.Unmarshal(data, &m) != nil {
		return "", false
	}
	fp, err := aptFingerprint(debCache)
	if err != nil || fp != m.Fingerprint {
		return "", false
	}
	// The embedded files may have changed since (a new banger).
	if h, err := guestHash(m.Debs); err != nil || h != m.Hash {
		return "", false
	}
	return m.Hash, true
}

// rememberGuest records g for apt's current state (best effort: without
// it the next lookup resolves with apt).
func rememberGuest(cacheDir string, g *guestSide) {
	if g.aptFP == "" {
		return
	}
	data, err := json.Marshal(guestMemo{Fingerprint: g.aptFP, Hash: g.hash, Debs: g.shas})
	if err != nil {
		return
	}
	if os.MkdirAll(cacheDir, 0o700) == nil {
		writeAtomic(guestMemoPath(cacheDir), data)
	}
}

// newMetadata describes img built into out.
func newMetadata(img *Image, out string, unpacked, rootfsSize int64, notes []string) *Metadata {
	return &Metadata{
		Source:       img.Source,
		Digest:       img.Digest,
		ConfigDigest: img.ConfigDigest,
		Platform:     img.Platform,
		Layers:       img.Layers,
		Size:         img.Size(),
		UnpackedSize: unpacked,
		RootfsSize:   rootfsSize,
		Config:       img.Config,
		BootArgs:     BootArgs,
		Rootfs:       out,
		Created:      time.Now().UTC(),
		Notes:        notes,
	}
}

// writeMetadata writes m next to its rootfs.
func writeMetadata(m *Metadata) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(filepath.Dir(m.Rootfs), MetadataFile), append(data, '\n'))
}
