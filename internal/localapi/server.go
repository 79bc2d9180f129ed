package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/store"
	"golang.org/x/sys/unix"
)

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
func (d *Daemon) authorized(p peerCred) bool {
	if !p.ok {
		return false
	}
	if p.uid == 0 || int(p.uid) == os.Getuid() {
		return true
	}
	gid, ok := lookupGroup(d.cfg.Group)
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

// routes maps every route in internal/api to its handler.
func (d *Daemon) routes() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, fn handlerFunc) { mux.Handle(pattern, d.wrap(fn)) }
	h(api.RouteVersion, d.handleVersion)
	h(api.RouteVMList, d.handleVMList)
	h(api.RouteVMCreate, d.handleVMCreate)
	h(api.RouteVMShow, d.handleVMShow)
	h(api.RouteVMDelete, d.handleVMDelete)
	h(api.RouteVMStart, d.handleVMStart)
	h(api.RouteVMStop, d.handleVMStop)
	h(api.RouteVMRestart, d.handleVMRestart)
	h(api.RouteVMLogs, d.handleVMLogs)
	h(api.RouteVMExec, d.handleVMExec)
	h(api.RouteVMWait, d.handleVMWaitSSH)
	h(api.RouteVMPorts, d.handlePortList)
	h(api.RouteVMPortAdd, d.handlePortAdd)
	h(api.RouteVMPortRemove, d.handlePortRemove)
	h(api.RouteSessionList, d.handleSessionList)
	h(api.RouteSessionStart, d.handleSessionStart)
	h(api.RouteSessionLogs, d.handleSessionLogs)
	h(api.RouteSessionSend, d.handleSessionSend)
	h(api.RouteSessionStop, d.handleSessionStop)
	h(api.RouteImageList, d.handleImageList)
	h(api.RouteImageImport, d.handleImageImport)
	h(api.RouteImageBuild, d.handleImageBuild)
	h(api.RouteImageShow, d.handleImageShow)
	h(api.RouteImageDelete, d.handleImageDelete)
	h(api.RouteDoctor, d.handleDoctor)
	h(api.RouteGC, d.handleGC)
	h(api.RouteShutdown, d.handleShutdown)
	mux.Handle("/", d.wrap(func(w http.ResponseWriter, r *http.Request) error {
		return api.Errorf(api.CodeNotFound, "no route %s %s", r.Method, r.URL.Path)
	}))
	return mux
}

func (d *Daemon) wrap(fn handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.VersionHeader, api.Version)
		p, _ := r.Context().Value(peerKey).(peerCred)
		if !d.authorized(p) {
			d.log.Warn("refused caller", "uid", p.uid, "pid", p.pid)
			writeError(w, &api.Error{Code: "permission_denied", Message: fmt.Sprintf("permission denied: uid %d is not root and not in group %q", p.uid, d.cfg.Group)}, http.StatusForbidden)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, api.MaxBodyBytes)
		if err := fn(w, r); err != nil {
			e := toAPIError(err)
			if e.Code == api.CodeInternal {
				d.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			writeError(w, e, api.HTTPStatus(e.Code))
		}
	})
}

// toAPIError gives every error a wire code.
func toAPIError(err error) *api.Error {
	var e *api.Error
	if errors.As(err, &e) {
		return e
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return api.Errorf(api.CodeInvalidArgument, "request body over %d bytes", api.MaxBodyBytes)
	case errors.Is(err, store.ErrNotFound):
		return api.Errorf(api.CodeNotFound, "%v", err)
	case errors.Is(err, store.ErrExists):
		return api.Errorf(api.CodeAlreadyExists, "%v", err)
	case errors.Is(err, store.ErrInUse):
		return api.Errorf(api.CodeConflict, "%v", err)
	}
	return api.Errorf(api.CodeInternal, "%v", err)
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

// decode reads a JSON body strictly.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if err.Error() == "EOF" {
			return nil
		}
		return api.Errorf(api.CodeInvalidArgument, "bad request body: %v", err)
	}
	return nil
}

func (d *Daemon) handleVersion(w http.ResponseWriter, r *http.Request) error {
	ready := false
	select {
	case <-d.ready:
		ready = true
	default:
	}
	return writeJSON(w, api.VersionResponse{Version: api.Version, PID: os.Getpid(), Socket: d.cfg.Socket, Config: d.cfg.File, Ready: ready})
}

func (d *Daemon) handleShutdown(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, struct{}{})
	d.requestShutdown()
	return nil
}
