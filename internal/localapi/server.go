// Package localapi is bangerd's HTTP API on its unix socket: one handler map
// of thin handlers over the engine and the inventory, the exec stream, the
// caller check (SO_PEERCRED), strict request decoding, and the only place
// where an error's kind becomes a wire code and an HTTP status.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/inventory"
	"golang.org/x/sys/unix"
)

// Server serves the API.
type Server struct {
	cfg  config.Config
	eng  *engine.Engine
	inv  *inventory.Inventory
	log  *slog.Logger
	list listCache

	// ReadHeaderTimeout bounds how long a connection may take to send its
	// request headers (default readHeaderTimeout); tests shorten it.
	ReadHeaderTimeout time.Duration

	listener   net.Listener
	httpServer *http.Server
	shutdownCh chan struct{}
	shutOnce   sync.Once

	eventLog EventLog        // RouteEvents (observe.go)
	observer RequestObserver // counts requests (metrics)
	stopOnce sync.Once
	stopping context.Context // done when the server shuts down (stoppingCtx)
	stop     context.CancelFunc
}

// Timeouts and limits of the HTTP server. Streaming routes (exec, logs,
// image build) write for as long as they need: there is no write timeout.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 60 * time.Second // a whole request, body included
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
)

// New makes a server over the engine and the inventory; it follows the
// engine's events for its list cache.
func New(cfg config.Config, eng *engine.Engine, inv *inventory.Inventory, logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, eng: eng, inv: inv, log: logger, shutdownCh: make(chan struct{})}
	eng.Subscribe(s.list.follow)
	return s
}

// ShutdownRequested is closed when a client asked the daemon to stop.
func (s *Server) ShutdownRequested() <-chan struct{} { return s.shutdownCh }

// Listen opens the API socket. A leftover socket is dialed first: an answer
// means a daemon already serves it; silence means it is stale and removed.
func (s *Server) Listen() error {
	path := s.cfg.Socket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("a daemon already answers on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	// Create the socket with no access, then set owner and mode: there is no
	// window in which it is world-connectable.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	mode := os.FileMode(0o600)
	if gid, ok := LookupGroup(s.cfg.Group); ok {
		if err := os.Chown(path, os.Getuid(), gid); err == nil {
			mode = 0o660
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return err
	}
	s.listener = l
	return nil
}

// LookupGroup returns the gid of a group name.
func LookupGroup(name string) (int, bool) {
	if name == "" {
		return 0, false
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, false
	}
	gid, err := strconv.Atoi(g.Gid)
	return gid, err == nil
}

// Serve serves the API until ctx is done or a shutdown is requested.
func (s *Server) Serve(ctx context.Context) error {
	if s.listener == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	rht := s.ReadHeaderTimeout
	if rht <= 0 {
		rht = readHeaderTimeout
	}
	s.httpServer = &http.Server{
		Handler:           s.Handler(),
		ConnContext:       peerCredContext,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ReadHeaderTimeout: rht,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	s.stoppingCtx()
	s.httpServer.RegisterOnShutdown(s.stop)
	errc := make(chan error, 1)
	go func() { errc <- s.httpServer.Serve(s.listener) }()
	select {
	case <-ctx.Done():
	case <-s.shutdownCh:
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.httpServer.Shutdown(sctx)
	return nil
}

func (s *Server) requestShutdown() { s.shutOnce.Do(func() { close(s.shutdownCh) }) }

type ctxKey int

const peerKey ctxKey = 0

// peerCred is the caller of one connection, from SO_PEERCRED: identity comes
// from the kernel, never from anything the client sends.
type peerCred struct {
	ok       bool
	pid      int32
	uid, gid uint32
}

func peerCredContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return context.WithValue(ctx, peerKey, peerCred{})
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return context.WithValue(ctx, peerKey, peerCred{})
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if cred == nil {
		return context.WithValue(ctx, peerKey, peerCred{})
	}
	return context.WithValue(ctx, peerKey, peerCred{ok: true, pid: cred.Pid, uid: cred.Uid, gid: cred.Gid})
}

// authorized reports whether the caller may use the API: root, the daemon's
// own user, or a member of the banger group.
func (s *Server) authorized(p peerCred) bool {
	if !p.ok {
		return false
	}
	if p.uid == 0 || int(p.uid) == os.Getuid() {
		return true
	}
	gid, ok := LookupGroup(s.cfg.Group)
	if !ok {
		return false
	}
	if int(p.gid) == gid {
		return true
	}
	// Supplementary groups of the calling process, from the kernel's view.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Groups:"); ok {
			for _, g := range strings.Fields(rest) {
				if g == strconv.Itoa(gid) {
					return true
				}
			}
		}
	}
	return false
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handler maps every route in internal/api to its handler: the one handler map.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for pattern, fn := range map[string]handlerFunc{
		api.RouteVersion:        s.version,
		api.RouteVMList:         s.vmList,
		api.RouteVMCreate:       s.vmCreate,
		api.RouteVMShow:         s.vmShow,
		api.RouteVMDelete:       s.vmDelete,
		api.RouteVMStart:        s.vmStart,
		api.RouteVMStop:         s.vmStop,
		api.RouteVMRestart:      s.vmRestart,
		api.RouteVMSuspend:      s.vmSuspend,
		api.RouteVMResume:       s.vmResume,
		api.RouteVMSnapshot:     s.vmSnapshot,
		api.RouteVMFork:         s.vmFork,
		api.RouteSnapshotList:   s.snapshotList,
		api.RouteSnapshotShow:   s.snapshotShow,
		api.RouteSnapshotDelete: s.snapshotDelete,
		api.RoutePoolList:       s.poolList,
		api.RoutePoolCreate:     s.poolCreate,
		api.RoutePoolShow:       s.poolShow,
		api.RoutePoolDelete:     s.poolDelete,
		api.RoutePoolClaim:      s.poolClaim,
		api.RouteVMLogs:         s.vmLogs,
		api.RouteVMExec:         s.vmExec,
		api.RouteVMWait:         s.vmWaitSSH,
		api.RouteVMStats:        s.vmStats,
		api.RouteVMTTL:          s.vmTTL,
		api.RouteVMPorts:        s.portList,
		api.RouteVMPortAdd:      s.portAdd,
		api.RouteVMPortRemove:   s.portRemove,
		api.RouteSessionList:    s.sessionList,
		api.RouteSessionStart:   s.sessionStart,
		api.RouteSessionLogs:    s.sessionLogs,
		api.RouteSessionSend:    s.sessionSend,
		api.RouteSessionStop:    s.sessionStop,
		api.RouteImageList:      s.imageList,
		api.RouteImageImport:    s.imageImport,
		api.RouteImageBuild:     s.imageBuild,
		api.RouteImagePull:      s.imagePull,
		api.RouteImagePrune:     s.imagePrune,
		api.RouteImageShow:      s.imageShow,
		api.RouteImageDelete:    s.imageDelete,
		api.RouteEvents:         s.events,
		api.RouteDoctor:         s.doctor,
		api.RouteGC:             s.gc,
		api.RouteShutdown:       s.shutdown,
	} {
		mux.Handle(pattern, s.wrap(pattern, fn))
	}
	mux.Handle("/", s.wrap("", func(w http.ResponseWriter, r *http.Request) error {
		return errdefs.NotFound("no route %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

// wrap serves route (an api.Route* pattern; "" for no route) with fn:
// version header, caller check, body limit, errors as envelopes, and the
// request counted by route and code.
func (s *Server) wrap(route string, fn handlerFunc) http.Handler {
	method, path, _ := strings.Cut(route, " ")
	if route == "" {
		path = "other"
	}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		began := time.Now()
		w := &statusRecorder{ResponseWriter: rw}
		if s.observer != nil {
			defer func() {
				m := method
				if m == "" {
					m = r.Method
				}
				code := w.code
				if code == 0 {
					code = http.StatusOK // net/http's answer to a handler that wrote nothing
				}
				s.observer.ObserveRequest(m, path, code, time.Since(began))
			}()
		}
		w.Header().Set(api.VersionHeader, api.Version)
		p, _ := r.Context().Value(peerKey).(peerCred)
		if !s.authorized(p) {
			s.log.Warn("refused caller", "uid", p.uid, "pid", p.pid)
			e := &api.Error{Code: api.CodePermissionDenied, Message: fmt.Sprintf("permission denied: uid %d is not root and not in group %q", p.uid, s.cfg.Group)}
			writeError(w, e, api.HTTPStatus(e.Code))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)
		if err := fn(w, r); err != nil {
			e := toAPIError(err)
			if e.Code == api.CodeInternal {
				s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, e, api.HTTPStatus(e.Code))
		}
	})
}

// toAPIError gives every error its wire code, from its errdefs kind. It is
// the only place that does.
func toAPIError(err error) *api.Error {
	var e *api.Error
	if errors.As(err, &e) {
		return e
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return api.Errorf(api.CodeInvalidArgument, "request body over %d bytes", api.MaxBodyBytes)
	}
	code := api.CodeInternal
	switch errdefs.Kind(err) {
	case errdefs.ErrNotFound:
		code = api.CodeNotFound
	case errdefs.ErrAlreadyExists:
		code = api.CodeAlreadyExists
	case errdefs.ErrInvalidArgument:
		code = api.CodeInvalidArgument
	case errdefs.ErrConflict:
		code = api.CodeConflict
	case errdefs.ErrUnavailable:
		code = api.CodeUnavailable
	case errdefs.ErrNoSpace:
		code = api.CodeNoSpace
	}
	return &api.Error{Code: code, Message: err.Error()}
}

func writeError(w http.ResponseWriter, e *api.Error, status int) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.ErrorEnvelope{Error: e})
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: one object, no unknown fields, no
// trailing data, no null; an empty body is allowed where the request has
// only optional fields.
func decode(r *http.Request, v any, allowEmpty bool) error {
	return api.DecodeJSON(r.Body, v, allowEmpty)
}

// progress is a streamed text answer of progress lines (image build and
// pull), each sent as it is written.
type progress struct {
	w     io.Writer
	start time.Time
}

// startProgress answers 200 with a text body that progress lines follow.
func startProgress(w http.ResponseWriter) *progress {
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	return &progress{w: flushWriter{w}, start: time.Now()}
}

func (p *progress) say(format string, args ...any) { fmt.Fprintf(p.w, format+"\n", args...) }

// step is a line of the work's own progress, stamped with the seconds since
// the start.
func (p *progress) step(line string) { p.say("[%5.1fs] %s", p.elapsed(), line) }

func (p *progress) elapsed() float64 { return time.Since(p.start).Seconds() }

// flushWriter flushes each write, for streamed responses.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

func (s *Server) version(w http.ResponseWriter, r *http.Request) error {
	ready := false
	select {
	case <-s.eng.Ready():
		ready = true
	default:
	}
	return writeJSON(w, api.VersionResponse{Version: api.Version, PID: os.Getpid(), Socket: s.cfg.Socket, Config: s.cfg.File, Ready: ready})
}

func (s *Server) shutdown(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, struct{}{})
	s.requestShutdown()
	return nil
}
