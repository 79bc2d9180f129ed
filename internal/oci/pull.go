package oci

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PullOptions configure Pull and the imports.
type PullOptions struct {
	// CacheDir holds the layer cache (required unless Cache is set); see
	// the package comment.
	CacheDir string
	// Cache, when set, is the layer cache (its Dir replaces CacheDir): the
	// image's layers are pinned in it until Image.Release, and it is
	// trimmed to its bound once they are all there.
	Cache *LayerCache
	// MaxSize refuses an image whose layers add up to more than this many
	// bytes as the manifest declares them, before anything is downloaded
	// (0: no limit).
	MaxSize int64
	// Insecure lets Pull talk plain HTTP to the registry (a local registry
	// without TLS). Loopback registries get HTTP anyway.
	Insecure bool
	// Keychain finds credentials; nil means authn.DefaultKeychain (the
	// user's docker config and its credential helpers).
	Keychain authn.Keychain
	// ResponseTimeout bounds the wait for a response's headers, and
	// IdleTimeout the time a layer download may go without receiving a
	// byte; 0 means 30 s and 60 s.
	ResponseTimeout time.Duration
	IdleTimeout     time.Duration
	// Progress, when set, is called as each layer is fetched (from one
	// goroutine at a time).
	Progress func(Progress)
	// Transport replaces the HTTP transport the timeouts are set on (tests).
	Transport http.RoundTripper
}

// useCache makes Cache's directory the cache directory.
func (o *PullOptions) useCache() {
	if o.Cache != nil {
		o.CacheDir = o.Cache.Dir
	}
}

// Progress reports one layer's download. Done == Total when it is complete;
// Cached means it was already in the cache and nothing was downloaded.
type Progress struct {
	Layer  int // 0-based, bottom first
	Layers int
	Digest string
	Done   int64
	Total  int64
	Cached bool
}

// Pull resolves ref (any reference the docker CLI accepts) on its registry
// to a linux/amd64 image and makes sure all its layers are in the cache,
// verified. It refuses an image for another platform, an index without
// linux/amd64, and an image larger than opts.MaxSize; on failure nothing is
// left in the cache but complete, verified blobs.
func Pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	img, err := pull(ctx, ref, opts)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	return img, nil
}

func pull(ctx context.Context, ref string, opts PullOptions) (*Image, error) {
	opts.useCache()
	if opts.CacheDir == "" {
		return nil, errors.New("no cache directory")
	}
	var nameOpts []name.Option
	if opts.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadImage, err)
	}
	kc := opts.Keychain
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	idle := opts.IdleTimeout
	if idle <= 0 {
		idle = 60 * time.Second
	}
	rt := &idleTransport{inner: opts.Transport, idle: idle}
	if rt.inner == nil {
		rt.inner = newTransport(opts.ResponseTimeout)
	}
	ropts := []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(kc),
		remote.WithTransport(rt),
		remote.WithUserAgent("banger"),
		// A stalled or failing registry is reported, not retried for minutes.
		remote.WithRetryBackoff(remote.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Steps: 2}),
	}
	desc, err := remote.Get(r, ropts...)
	if err != nil {
		return nil, classifyRemote(err)
	}
	var (
		v1img  v1.Image
		digest = desc.Digest.String()
	)
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, classifyRemote(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, classifyRemote(err)
		}
		d, err := choosePlatform(im.Manifests)
		if err != nil {
			return nil, err
		}
		if v1img, err = idx.Image(d.Digest); err != nil {
			return nil, classifyRemote(err)
		}
		digest = d.Digest.String()
	case desc.MediaType.IsImage():
		if v1img, err = desc.Image(); err != nil {
			return nil, classifyRemote(err)
		}
	default:
		return nil, fmt.Errorf("%w: %s is a %s, not an image", ErrBadImage, ref, desc.MediaType)
	}
	res, err := resolveV1(v1img, digest)
	if err != nil {
		return nil, classifyRemote(err)
	}
	res.source = r.String()
	return res.fetch(ctx, opts)
}

// choosePlatform picks linux/amd64 from an index's manifests.
func choosePlatform(ms []v1.Descriptor) (v1.Descriptor, error) {
	var seen []string
	for _, m := range ms {
		if m.Platform == nil {
			continue
		}
		p := m.Platform.OS + "/" + m.Platform.Architecture
		if m.Platform.Variant != "" {
			p += "/" + m.Platform.Variant
		}
		if m.Platform.OS == "linux" && m.Platform.Architecture == "amd64" && m.MediaType.IsImage() {
			return m, nil
		}
		seen = append(seen, p)
	}
	return v1.Descriptor{}, fmt.Errorf("%w: the index has %v", ErrPlatform, seen)
}

// classifyRemote adds a kind to go-containerregistry's transport errors.
func classifyRemote(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %w", ErrUnauthorized, err)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		for _, d := range te.Errors {
			switch d.Code {
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%w: %w", ErrUnauthorized, err)
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %w", ErrNotFound, err)
			}
		}
	}
	if errors.Is(err, ErrStalled) || errors.Is(err, ErrDigestMismatch) {
		return err
	}
	// go-containerregistry checks a manifest fetched by digest itself and
	// says so only in text.
	if strings.Contains(err.Error(), "does not match requested digest") {
		return fmt.Errorf("%w: %w", ErrDigestMismatch, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w: %w", ErrStalled, err)
	}
	return err
}

// newTransport is an HTTP transport with bounded connection and header
// waits; the body's idle deadline is idleTransport's.
func newTransport(responseTimeout time.Duration) *http.Transport {
	if responseTimeout <= 0 {
		responseTimeout = 30 * time.Second
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 15 * time.Second
	t.ResponseHeaderTimeout = responseTimeout
	return t
}

// idleTransport gives every response body an idle deadline: a read that
// waits longer than idle for a byte fails with ErrStalled. (A whole-request
// timeout would cut off large layers on slow links.)
type idleTransport struct {
	inner http.RoundTripper
	idle  time.Duration
}

func (t *idleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.inner.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = newIdleBody(resp.Body, t.idle, req.URL.Path)
	return resp, nil
}

// idleBody closes the underlying body when no Read completes for idle,
// which unblocks a Read stuck on the network.
type idleBody struct {
	body  io.ReadCloser
	idle  time.Duration
	what  string
	timer *time.Timer
	mu    sync.Mutex
	fired bool
}

func newIdleBody(body io.ReadCloser, idle time.Duration, what string) *idleBody {
	b := &idleBody{body: body, idle: idle, what: what}
	b.timer = time.AfterFunc(idle, func() {
		b.mu.Lock()
		b.fired = true
		b.mu.Unlock()
		body.Close()
	})
	return b
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.mu.Lock()
	fired := b.fired
	b.mu.Unlock()
	if fired {
		return n, fmt.Errorf("%w: no data for %s reading %s", ErrStalled, b.idle, b.what)
	}
	if n > 0 {
		b.timer.Reset(b.idle)
	}
	return n, err
}

func (b *idleBody) Close() error {
	b.timer.Stop()
	return b.body.Close()
}

// resolved is an image whose manifest and config have been read and
// checked, with a way to open each layer blob.
type resolved struct {
	source       string
	digest       string
	configDigest string
	config       Config
	layers       []Layer
	open         func(i int) (io.ReadCloser, error)
}

// resolveV1 reads a go-containerregistry image's manifest and config and
// checks its platform and digests.
func resolveV1(img v1.Image, manifestDigest string) (*resolved, error) {
	raw, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("reading manifest: %w", err)
	}
	if got := sha256Digest(raw); manifestDigest != "" && got != manifestDigest {
		return nil, fmt.Errorf("%w: manifest %s has digest %s", ErrDigestMismatch, manifestDigest, got)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%w: manifest: %w", ErrBadImage, err)
	}
	rawCfg, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", short(m.Config.Digest.String()), err)
	}
	if got := sha256Digest(rawCfg); got != m.Config.Digest.String() {
		return nil, fmt.Errorf("%w: config %s has digest %s", ErrDigestMismatch, m.Config.Digest, got)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%w: config: %w", ErrBadImage, err)
	}
	if err := checkPlatform(cfg.OS, cfg.Architecture); err != nil {
		return nil, err
	}
	if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: manifest has %d layers, config %d diff_ids", ErrBadImage, len(m.Layers), len(cfg.RootFS.DiffIDs))
	}
	r := &resolved{
		digest:       manifestDigest,
		configDigest: m.Config.Digest.String(),
		config:       configOf(cfg),
	}
	if r.digest == "" {
		r.digest = sha256Digest(raw)
	}
	for i, l := range m.Layers {
		if l.Digest.Algorithm != "sha256" || cfg.RootFS.DiffIDs[i].Algorithm != "sha256" {
			return nil, fmt.Errorf("%w: %s: only sha256 digests are supported", ErrBadImage, layerName(i, len(m.Layers), l.Digest.String()))
		}
		if !isLayerType(l.MediaType) {
			return nil, fmt.Errorf("%w: %s has media type %s", ErrBadImage, layerName(i, len(m.Layers), l.Digest.String()), l.MediaType)
		}
		r.layers = append(r.layers, Layer{
			Digest:    l.Digest.String(),
			DiffID:    cfg.RootFS.DiffIDs[i].String(),
			Size:      l.Size,
			MediaType: string(l.MediaType),
		})
	}
	r.open = func(i int) (io.ReadCloser, error) {
		l, err := img.LayerByDigest(m.Layers[i].Digest)
		if err != nil {
			return nil, err
		}
		return l.Compressed()
	}
	return r, nil
}

func isLayerType(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer:
		return true
	}
	return false
}

func checkPlatform(os, arch string) error {
	// Some image builders leave the platform out; such an image is taken
	// as amd64 and fails at boot if it is not.
	if (os == "" || os == "linux") && (arch == "" || arch == "amd64") {
		return nil
	}
	return fmt.Errorf("%w: the image is for %s/%s", ErrPlatform, os, arch)
}

func configOf(cf *v1.ConfigFile) Config {
	c := cf.Config
	return Config{Env: c.Env, WorkingDir: c.WorkingDir, User: c.User, Entrypoint: c.Entrypoint, Cmd: c.Cmd}
}
