package localapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/engine"
	"github.com/banger-dev/banger/internal/errdefs"
	"github.com/banger-dev/banger/internal/model"
)

// EventLog is the daemon's event log as the API serves it (events.Log).
type EventLog interface {
	List(ctx context.Context, vm string) ([]api.Event, error)
	Follow(ctx context.Context, vm string, fn func(api.Event) error) error
	Mentions(ctx context.Context, vm string) (bool, error)
}

// RequestObserver is told of every API request (the metrics).
type RequestObserver interface {
	ObserveRequest(method, route string, code int, took time.Duration)
}

// SetEventLog gives the server the event log it serves on RouteEvents.
func (s *Server) SetEventLog(l EventLog) { s.eventLog = l }

// SetRequestObserver has every request counted by o.
func (s *Server) SetRequestObserver(o RequestObserver) { s.observer = o }

// events lists the event log as a JSON array, or with follow streams it as
// JSON lines (the kept events, then each new one) until the client goes
// away or the daemon stops.
func (s *Server) events(w http.ResponseWriter, r *http.Request) error {
	if s.eventLog == nil {
		return errdefs.Unavailable("this daemon keeps no event log")
	}
	q := r.URL.Query()
	follow, err := api.ParseBoolParam(q, "follow")
	if err != nil {
		return err
	}
	vm := q.Get("vm")
	if vm != "" {
		// A filter naming nothing is an error, not an empty answer: a
		// typo would otherwise look like a quiet VM.
		if _, err := s.eng.GetVM(r.Context(), vm); errdefs.Kind(err) == errdefs.ErrNotFound {
			if ok, lerr := s.eventLog.Mentions(r.Context(), vm); lerr != nil {
				return lerr
			} else if !ok {
				return errdefs.NotFound("no vm %q, and no kept event of one", vm)
			}
		} else if err != nil {
			return err
		}
	}
	if !follow {
		evs, err := s.eventLog.List(r.Context(), vm)
		if err != nil {
			return err
		}
		return writeJSON(w, evs)
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.stoppingCtx(), cancel)
	defer stop()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fw := flushWriter{w}
	fw.Write(nil) // send the header now: a follower may wait long for the first event
	enc := json.NewEncoder(fw)
	err = s.eventLog.Follow(ctx, vm, func(ev api.Event) error { return enc.Encode(ev) })
	if err != nil && ctx.Err() == nil {
		s.log.Debug("event stream ended", "err", err)
	}
	return nil // the status is sent; the stream just ends
}

// vmStats answers a running VM's counters.
func (s *Server) vmStats(w http.ResponseWriter, r *http.Request) error {
	vm, st, err := s.eng.VMStats(r.Context(), r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, statsView(vm, st))
}

func statsView(vm model.VMRecord, st engine.Stats) api.VMStats {
	return api.VMStats{Name: vm.Name, Time: st.Time, Source: st.Source, CPUSeconds: st.CPUSeconds, MemoryBytes: st.MemoryBytes,
		DiskReadBytes: st.DiskReadBytes, DiskWriteBytes: st.DiskWriteBytes, Tap: st.Tap,
		NetRxBytes: st.NetRxBytes, NetTxBytes: st.NetTxBytes, NetRxPackets: st.NetRxPackets, NetTxPackets: st.NetTxPackets,
		LastActivity: st.LastActivity, IdleTimeoutSeconds: int64(st.IdleTimeout / time.Second), ExpiresAt: st.ExpiresAt}
}

// vmTTL changes a VM's TTL.
func (s *Server) vmTTL(w http.ResponseWriter, r *http.Request) error {
	var req api.TTLRequest
	if err := decode(r, &req, false); err != nil {
		return err
	}
	if req.TTLSeconds < 0 {
		return errdefs.Invalid("invalid ttl %ds: want a positive number of seconds", req.TTLSeconds)
	}
	vm, err := s.eng.SetTTL(r.Context(), r.PathValue("name"), engine.TTLChange{
		TTL: time.Duration(req.TTLSeconds) * time.Second, Add: req.Add, Clear: req.Clear, Action: model.TTLAction(req.Action)})
	if err != nil {
		return err
	}
	return writeJSON(w, s.view(r.Context(), vm, false))
}

// lifetimeOf reads a create request's lifetime; bad values are refused by
// the engine, which knows max_ttl.
func lifetimeOf(req api.CreateVMRequest) (engine.Lifetime, error) {
	if req.TTLSeconds < 0 || req.IdleTimeoutSeconds < 0 {
		return engine.Lifetime{}, errdefs.Invalid("invalid lifetime: ttl %ds, idle timeout %ds; want positive numbers of seconds", req.TTLSeconds, req.IdleTimeoutSeconds)
	}
	return engine.Lifetime{TTL: time.Duration(req.TTLSeconds) * time.Second, TTLAction: model.TTLAction(req.TTLAction),
		IdleTimeout: time.Duration(req.IdleTimeoutSeconds) * time.Second}, nil
}

// stoppingCtx is done once the server shuts down, so long streams end
// instead of holding the shutdown up.
func (s *Server) stoppingCtx() context.Context {
	s.stopOnce.Do(func() { s.stopping, s.stop = context.WithCancel(context.Background()) })
	return s.stopping
}

// statusRecorder keeps the status a handler sent, for the request metrics,
// and passes on flushing and hijacking (streams and exec).
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(p)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, fmt.Errorf("connection cannot be hijacked")
	}
	r.code = http.StatusSwitchingProtocols // exec writes its 101 on the raw connection
	return h.Hijack()
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// ServeMetrics serves g's Prometheus exposition on l (GET /metrics, and
// / for convenience) until ctx is done. It runs beside the API socket and
// shares nothing with it: no caller check (the listener is a root-owned
// socket or a loopback address, see metrics.Listen), no other route.
func (s *Server) ServeMetrics(ctx context.Context, l net.Listener, g prometheus.Gatherer) error {
	h := promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slogPrinter{s}, Timeout: 30 * time.Second})
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	mux.Handle("GET /{$}", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

type slogPrinter struct{ s *Server }

func (p slogPrinter) Println(v ...any) { p.s.log.Warn("metrics: " + fmt.Sprintln(v...)) }
