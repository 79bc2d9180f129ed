// Package client is the Go client of bangerd, banger's daemon: one typed
// method for every route of its HTTP API, which it serves on a unix socket.
// It is the only way banger's own CLI talks to the daemon, and it can be
// imported by other modules: the wire types are re-exported here under their
// own names, so no internal package is needed.
//
// A zero Client talks to the daemon at DefaultSocket; set Socket for another
// one. Errors the daemon answers with are *Error values, classified by
// IsNotFound, IsAlreadyExists, IsConflict, IsInvalidArgument and
// IsUnavailable; a daemon that cannot be reached at all gives an error that
// wraps ErrDaemonUnreachable.
//
//	c := &client.Client{Socket: "/run/banger/bangerd.sock"}
//	vm, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "web", MemoryMiB: 512})
//	if client.IsAlreadyExists(err) {
//		vm, err = c.GetVM(ctx, "web")
//	}
//	if err != nil {
//		return err
//	}
//	if _, err := c.StartVM(ctx, vm.Name); err != nil {
//		return err
//	}
//
// The API itself is described by api/openapi.yaml at the root of the
// repository; this package's tests check every request and response against it.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/banger-dev/banger/internal/api"
)

// DefaultSocket is where bangerd listens unless configured otherwise
// (run_dir /run/banger, socket unset).
const DefaultSocket = "/run/banger/bangerd.sock"

// Client talks to bangerd over its unix socket. The zero value is ready to
// use; a Client is safe for concurrent use and must not be copied after its
// first request.
type Client struct {
	// Socket is the path of the daemon's unix socket; empty means DefaultSocket.
	Socket string
	// WrapTransport, when set, wraps the HTTP transport every request goes
	// through (to log, trace or validate them). It is called once, before
	// the first request.
	WrapTransport func(http.RoundTripper) http.RoundTripper

	once sync.Once
	hc   *http.Client

	mu            sync.Mutex
	daemonVersion string
}

func (c *Client) socket() string {
	if c.Socket == "" {
		return DefaultSocket
	}
	return c.Socket
}

func (c *Client) http() *http.Client {
	c.once.Do(func() {
		socket := c.socket()
		var rt http.RoundTripper = &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConns: 4,
		}
		if c.WrapTransport != nil {
			rt = c.WrapTransport(rt)
		}
		c.hc = &http.Client{
			Transport: rt,
			// The daemon never redirects; its router does for paths it
			// cleans ("." or ".." as a name), and following would act on
			// another resource.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	})
	return c.hc
}

// DaemonVersion is the version the daemon gave on its last response, or ""
// before the first one. A daemon older or newer than ClientVersion may not
// know every route or field.
func (c *Client) DaemonVersion() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.daemonVersion
}

// endpoint turns an api.Route* pattern ("POST /v1/vms/{name}/start") into
// its method and path, replacing each {param} in order with the next of
// params, path-escaped. It is the one place the client builds a path.
func endpoint(route string, params ...string) (method, path string) {
	method, pattern, ok := strings.Cut(route, " ")
	if !ok {
		panic("client: route without a method: " + route)
	}
	var b strings.Builder
	n := 0
	for {
		open := strings.IndexByte(pattern, '{')
		if open < 0 {
			b.WriteString(pattern)
			break
		}
		end := strings.IndexByte(pattern[open:], '}')
		if end < 0 || n == len(params) {
			panic(fmt.Sprintf("client: route %q needs more than %d parameters", route, len(params)))
		}
		b.WriteString(pattern[:open])
		b.WriteString(url.PathEscape(params[n]))
		n++
		pattern = pattern[open+end+1:]
	}
	if n != len(params) {
		panic(fmt.Sprintf("client: route %q takes %d parameters, not %d", route, n, len(params)))
	}
	return method, b.String()
}

// request is one call of a route.
type request struct {
	route  string   // an api.Route* pattern
	params []string // values of the pattern's {...} in order
	query  url.Values
	// body is sent as JSON; an io.Reader is sent as it is, as
	// application/octet-stream; nil sends no body.
	body any
	// upgrade asks to switch the connection to the exec frame protocol.
	upgrade bool
}

// send sends r and returns the response when its status is 2xx (or 101 for
// an upgrade); an error envelope becomes an *Error.
func (c *Client) send(ctx context.Context, r request) (*http.Response, error) {
	method, path := endpoint(r.route, r.params...)
	if len(r.query) > 0 {
		path += "?" + r.query.Encode()
	}
	var body io.Reader
	ctype := ""
	switch v := r.body.(type) {
	case nil:
	case io.Reader:
		body, ctype = v, "application/octet-stream"
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encoding %s %s request: %w", method, path, err)
		}
		body, ctype = bytes.NewReader(b), "application/json"
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://banger"+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if r.upgrade {
		req.Header.Set("Connection", "Upgrade")
		req.Header.Set("Upgrade", api.UpgradeProtocol)
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", ErrDaemonUnreachable, c.socket(), err)
	}
	c.mu.Lock()
	c.daemonVersion = resp.Header.Get(api.VersionHeader)
	c.mu.Unlock()
	if resp.StatusCode/100 == 2 && !r.upgrade || r.upgrade && resp.StatusCode == http.StatusSwitchingProtocols {
		return resp, nil
	}
	defer resp.Body.Close()
	return nil, decodeError(resp)
}

// call sends r and decodes a JSON answer into out (when non-nil).
func (c *Client) call(ctx context.Context, r request, out any) error {
	resp, err := c.send(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decoding the answer to %s: %w", r.route, err)
	}
	return nil
}

// stream sends r and returns the answer's body for the caller to read and close.
func (c *Client) stream(ctx context.Context, r request) (io.ReadCloser, error) {
	resp, err := c.send(ctx, r)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

func decodeError(resp *http.Response) error {
	if resp.StatusCode/100 == 3 {
		return &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("invalid name in %s: names are lowercase letters, digits and inner hyphens", resp.Request.URL.Path)}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, api.MaxBodyBytes))
	var env api.ErrorEnvelope
	if json.Unmarshal(b, &env) == nil && env.Error != nil {
		return env.Error
	}
	return &Error{Code: CodeInternal, Message: fmt.Sprintf("daemon answered %s: %s", resp.Status, bytes.TrimSpace(b))}
}

// Version asks the daemon for its version, pid and readiness.
func (c *Client) Version(ctx context.Context) (VersionResponse, error) {
	var v VersionResponse
	err := c.call(ctx, request{route: api.RouteVersion}, &v)
	return v, err
}

// ListVMs lists every VM. Live facts are those cheap to get (the recorded
// process is alive); GetVM confirms them with the VMM.
func (c *Client) ListVMs(ctx context.Context) ([]VM, error) {
	var vms []VM
	err := c.call(ctx, request{route: api.RouteVMList}, &vms)
	return vms, err
}

// ListVMsJSON returns the daemon's JSON array of VMs as it streams it, for
// callers that pass it on unparsed (thousands of VMs need not be decoded).
func (c *Client) ListVMsJSON(ctx context.Context) (io.ReadCloser, error) {
	return c.stream(ctx, request{route: api.RouteVMList})
}

// CreateVM records a new VM; its disks are made when it first starts.
func (c *Client) CreateVM(ctx context.Context, req CreateVMRequest) (VM, error) {
	var vm VM
	err := c.call(ctx, request{route: api.RouteVMCreate, body: req}, &vm)
	return vm, err
}

// GetVM shows one VM, with its liveness confirmed by the VMM.
func (c *Client) GetVM(ctx context.Context, name string) (VM, error) {
	var vm VM
	err := c.call(ctx, request{route: api.RouteVMShow, params: []string{name}}, &vm)
	return vm, err
}

// DeleteVM deletes a VM and its disks. A running VM is stopped first; with
// force it is killed at once.
func (c *Client) DeleteVM(ctx context.Context, name string, force bool) error {
	q := url.Values{"force": {strconv.FormatBool(force)}}
	return c.call(ctx, request{route: api.RouteVMDelete, params: []string{name}, query: q}, nil)
}

// StartVM starts a VM (a running one is left as it is). The VM's Warnings
// say what the user should know, such as slow software emulation.
func (c *Client) StartVM(ctx context.Context, name string) (VM, error) {
	var vm VM
	err := c.call(ctx, request{route: api.RouteVMStart, params: []string{name}, body: struct{}{}}, &vm)
	return vm, err
}

// StopVM asks the guest to shut down and kills the VMM after the timeout
// (10 s when zero), or at once with Force.
func (c *Client) StopVM(ctx context.Context, name string, req StopRequest) (VM, error) {
	var vm VM
	err := c.call(ctx, request{route: api.RouteVMStop, params: []string{name}, body: req}, &vm)
	return vm, err
}

// RestartVM stops then starts a VM under one lock.
func (c *Client) RestartVM(ctx context.Context, name string, req StopRequest) (VM, error) {
	var vm VM
	err := c.call(ctx, request{route: api.RouteVMRestart, params: []string{name}, body: req}, &vm)
	return vm, err
}

// SnapshotVM takes a named snapshot of a running or suspended VM (a
// running one pauses briefly and goes on); As "" generates a name.
func (c *Client) SnapshotVM(ctx context.Context, name string, req SnapshotRequest) (Snapshot, error) {
	var out Snapshot
	err := c.call(ctx, request{route: api.RouteVMSnapshot, params: []string{name}, body: req}, &out)
	return out, err
}

// ForkVM makes new VMs from a running VM, each with its own identity, and
// starts them.
func (c *Client) ForkVM(ctx context.Context, name string, req ForkRequest) ([]VM, error) {
	var out []VM
	err := c.call(ctx, request{route: api.RouteVMFork, params: []string{name}, body: req}, &out)
	return out, err
}

// ListSnapshots lists the snapshots.
func (c *Client) ListSnapshots(ctx context.Context) ([]Snapshot, error) {
	var out []Snapshot
	err := c.call(ctx, request{route: api.RouteSnapshotList}, &out)
	return out, err
}

// GetSnapshot shows a snapshot and the VMs that still need it.
func (c *Client) GetSnapshot(ctx context.Context, name string) (Snapshot, error) {
	var out Snapshot
	err := c.call(ctx, request{route: api.RouteSnapshotShow, params: []string{name}}, &out)
	return out, err
}

// DeleteSnapshot removes a snapshot no VM still needs.
func (c *Client) DeleteSnapshot(ctx context.Context, name string) error {
	return c.call(ctx, request{route: api.RouteSnapshotDelete, params: []string{name}}, nil)
}

// CreatePool makes a warm pool: Size VMs restored from a snapshot and kept
// paused, filled in the background (Ready counts those done).
func (c *Client) CreatePool(ctx context.Context, req CreatePoolRequest) (Pool, error) {
	var out Pool
	err := c.call(ctx, request{route: api.RoutePoolCreate, body: req}, &out)
	return out, err
}

// ListPools lists the warm pools.
func (c *Client) ListPools(ctx context.Context) ([]Pool, error) {
	var out []Pool
	err := c.call(ctx, request{route: api.RoutePoolList}, &out)
	return out, err
}

// GetPool shows a pool and its members.
func (c *Client) GetPool(ctx context.Context, name string) (Pool, error) {
	var out Pool
	err := c.call(ctx, request{route: api.RoutePoolShow, params: []string{name}}, &out)
	return out, err
}

// DeletePool deletes a pool and its members (VMs claimed from it stay).
func (c *Client) DeletePool(ctx context.Context, name string) error {
	return c.call(ctx, request{route: api.RoutePoolDelete, params: []string{name}}, nil)
}

// ClaimFromPool takes a running VM from a pool (renamed to req.Name when
// given); it is an ordinary VM from then on, and the pool refills.
func (c *Client) ClaimFromPool(ctx context.Context, pool string, req ClaimRequest) (VM, error) {
	var out VM
	err := c.call(ctx, request{route: api.RoutePoolClaim, params: []string{pool}, body: req}, &out)
	return out, err
}

// SuspendVM saves a running VM's memory and device state and ends its VMM
// (its RAM is freed); the VM keeps its tap, IP, DNS name and forwards.
func (c *Client) SuspendVM(ctx context.Context, name string) (VM, error) {
	var out VM
	err := c.call(ctx, request{route: api.RouteVMSuspend, params: []string{name}, body: struct{}{}}, &out)
	return out, err
}

// ResumeVM restores a suspended VM with the same processes and network
// identity (start, exec, ssh and run resume one too).
func (c *Client) ResumeVM(ctx context.Context, name string) (VM, error) {
	var out VM
	err := c.call(ctx, request{route: api.RouteVMResume, params: []string{name}, body: struct{}{}}, &out)
	return out, err
}

// VMLogs streams the VM's console log. With follow it keeps streaming new
// output until ctx ends or the VM is deleted. The caller closes the reader.
func (c *Client) VMLogs(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	q := url.Values{"follow": {strconv.FormatBool(follow)}}
	return c.stream(ctx, request{route: api.RouteVMLogs, params: []string{name}, query: q})
}

// WaitSSH waits until the guest answers SSH, at most the request's timeout
// (60 s when zero); a guest that does not answer gives IsUnavailable.
func (c *Client) WaitSSH(ctx context.Context, name string, req WaitSSHRequest) error {
	return c.call(ctx, request{route: api.RouteVMWait, params: []string{name}, body: req}, nil)
}

// ListPorts lists a VM's port forwards as specs ("127.0.0.1:8080:80/tcp").
func (c *Client) ListPorts(ctx context.Context, name string) ([]string, error) {
	var ports []string
	err := c.call(ctx, request{route: api.RouteVMPorts, params: []string{name}}, &ports)
	return ports, err
}

// AddPort forwards a host port to the VM ([HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp])
// and returns the forward as the daemon normalised it.
func (c *Client) AddPort(ctx context.Context, name, spec string) ([]string, error) {
	var ports []string
	err := c.call(ctx, request{route: api.RouteVMPortAdd, params: []string{name}, body: api.PortRequest{Spec: spec}}, &ports)
	return ports, err
}

// RemovePort removes a VM's port forward.
func (c *Client) RemovePort(ctx context.Context, name, spec string) error {
	return c.call(ctx, request{route: api.RouteVMPortRemove, params: []string{name, spec}}, nil)
}

// ListSessions lists a VM's guest sessions with their current status (read
// from the guest, or from its work disk when the VM is stopped).
func (c *Client) ListSessions(ctx context.Context, vm string) ([]GuestSession, error) {
	var list []GuestSession
	err := c.call(ctx, request{route: api.RouteSessionList, params: []string{vm}}, &list)
	return list, err
}

// StartSession starts a command detached in a running guest and returns at
// once; its output goes to log files on the VM's work disk.
func (c *Client) StartSession(ctx context.Context, vm string, req StartSessionRequest) (GuestSession, error) {
	var gs GuestSession
	err := c.call(ctx, request{route: api.RouteSessionStart, params: []string{vm}, body: req}, &gs)
	return gs, err
}

// SessionLogsOptions selects what SessionLogs streams.
type SessionLogsOptions struct {
	Stream string // "stdout" (when empty) or "stderr"
	Tail   int    // only the last Tail lines; 0 for all
	Follow bool   // keep streaming until the session ends (running VMs only)
}

// SessionLogs streams a session's output, also after its VM stopped. The
// caller closes the reader.
func (c *Client) SessionLogs(ctx context.Context, vm, session string, o SessionLogsOptions) (io.ReadCloser, error) {
	q := url.Values{}
	if o.Stream != "" {
		q.Set("stream", o.Stream)
	}
	if o.Tail != 0 {
		q.Set("tail", strconv.Itoa(o.Tail))
	}
	if o.Follow {
		q.Set("follow", "true")
	}
	return c.stream(ctx, request{route: api.RouteSessionLogs, params: []string{vm, session}, query: q})
}

// SendSession writes data (at most MaxBodyBytes) to the stdin pipe of a
// session started with Stdin.
func (c *Client) SendSession(ctx context.Context, vm, session string, data io.Reader) error {
	return c.call(ctx, request{route: api.RouteSessionSend, params: []string{vm, session}, body: data}, nil)
}

// StopSession signals a session's process group (TERM when the request
// names no signal) and kills it after the grace period.
func (c *Client) StopSession(ctx context.Context, vm, session string, req StopSessionRequest) (GuestSession, error) {
	var gs GuestSession
	err := c.call(ctx, request{route: api.RouteSessionStop, params: []string{vm, session}, body: req}, &gs)
	return gs, err
}

// ListImages lists images.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out []Image
	err := c.call(ctx, request{route: api.RouteImageList}, &out)
	return out, err
}

// ImportImage registers an image from files on the daemon's host (absolute
// paths). The first image becomes the default.
func (c *Client) ImportImage(ctx context.Context, req ImportImageRequest) (Image, error) {
	var out Image
	err := c.call(ctx, request{route: api.RouteImageImport, body: req}, &out)
	return out, err
}

// BuildImage builds an image from Debian packages on the daemon's host.
// progress, when non-nil, gets each line the daemon reports, the last one
// included ("ok NAME ..." or "error: ..."). A build that fails after it
// started, or whose report ends without a result, returns an error with the
// daemon's message.
func (c *Client) BuildImage(ctx context.Context, req BuildImageRequest, progress func(line string)) error {
	return c.progressStream(ctx, request{route: api.RouteImageBuild, body: req}, "image build", progress)
}

// PruneImages removes cached container image layers and root filesystems
// that no registered image was made from (all of them with req.All), never
// what a pull in progress uses, and says what it removed and kept.
func (c *Client) PruneImages(ctx context.Context, req PruneImagesRequest) (PruneImagesResult, error) {
	var out PruneImagesResult
	err := c.call(ctx, request{route: api.RouteImagePrune, body: req}, &out)
	return out, err
}

// PullImage makes an image from a container image: req.Ref from a
// registry, or req.Path to an OCI layout directory, OCI archive or docker
// save tarball. progress receives each line the daemon sends; the error is
// the daemon's when the last line is "error: ...".
func (c *Client) PullImage(ctx context.Context, req PullImageRequest, progress func(line string)) error {
	return c.progressStream(ctx, request{route: api.RouteImagePull, body: req}, "image pull", progress)
}

// progressStream reads a stream of progress lines ending in "ok ..." or
// "error: ...".
func (c *Client) progressStream(ctx context.Context, r request, what string, progress func(line string)) error {
	body, err := c.stream(ctx, r)
	if err != nil {
		return err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	last := ""
	for sc.Scan() {
		last = sc.Text()
		if progress != nil {
			progress(last)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading %s progress: %w", what, err)
	}
	switch {
	case strings.HasPrefix(last, "ok "):
		return nil
	case strings.HasPrefix(last, "error: "):
		return errors.New(strings.TrimPrefix(last, "error: "))
	}
	return fmt.Errorf("%s ended without a result (last line %q)", what, last)
}

// GetImage shows an image, which VMM can boot it and which VMs use it.
func (c *Client) GetImage(ctx context.Context, name string) (Image, error) {
	var out Image
	err := c.call(ctx, request{route: api.RouteImageShow, params: []string{name}}, &out)
	return out, err
}

// DeleteImage deletes an image; one a VM uses is refused (IsConflict).
// Files of imported images stay where they are.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.call(ctx, request{route: api.RouteImageDelete, params: []string{name}}, nil)
}

// VMStats reads a running VM's CPU, memory, disk and network counters; a
// VM that is not running gives IsConflict.
func (c *Client) VMStats(ctx context.Context, name string) (VMStats, error) {
	var out VMStats
	err := c.call(ctx, request{route: api.RouteVMStats, params: []string{name}}, &out)
	return out, err
}

// SetTTL changes a VM's TTL: req.TTLSeconds from now, added to the
// current expiry with req.Add, or none with req.Clear. An expiry beyond the
// daemon's max_ttl is refused (IsInvalidArgument).
func (c *Client) SetTTL(ctx context.Context, name string, req TTLRequest) (VM, error) {
	var vm VM
	err := c.call(ctx, request{route: api.RouteVMTTL, params: []string{name}, body: req}, &vm)
	return vm, err
}

// Events lists the daemon's kept events (created, started, stopped,
// deleted, ttl-expired, vmm-exited, reconciled, gc-removed, ...), oldest
// first; vm limits them to one VM's ("" for all). A vm that neither exists
// nor appears in a kept event gives IsNotFound.
func (c *Client) Events(ctx context.Context, vm string) ([]Event, error) {
	var out []Event
	err := c.call(ctx, request{route: api.RouteEvents, query: eventsQuery(vm, false)}, &out)
	return out, err
}

// FollowEvents calls fn with the kept events (vm's only, when vm is set),
// then with each new one as it happens, until ctx ends (nil), fn fails (its
// error) or the daemon ends the stream (an error: it stopped, or this
// follower fell behind).
func (c *Client) FollowEvents(ctx context.Context, vm string, fn func(Event) error) error {
	body, err := c.stream(ctx, request{route: api.RouteEvents, query: eventsQuery(vm, true)})
	if err != nil {
		return err
	}
	defer body.Close()
	dec := json.NewDecoder(body)
	for {
		var ev Event
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.EOF) {
				return errors.New("the daemon ended the event stream")
			}
			return fmt.Errorf("reading events: %w", err)
		}
		if err := fn(ev); err != nil {
			return err
		}
	}
}

func eventsQuery(vm string, follow bool) url.Values {
	q := url.Values{}
	if vm != "" {
		q.Set("vm", vm)
	}
	if follow {
		q.Set("follow", "true")
	}
	return q
}

// Doctor checks the host and lists every host object banger owns.
func (c *Client) Doctor(ctx context.Context) (DoctorReport, error) {
	var out DoctorReport
	err := c.call(ctx, request{route: api.RouteDoctor}, &out)
	return out, err
}

// GC removes host objects no VM accounts for; with dryRun it only lists them.
func (c *Client) GC(ctx context.Context, dryRun bool) (GCResponse, error) {
	var out GCResponse
	q := url.Values{"dry_run": {strconv.FormatBool(dryRun)}}
	err := c.call(ctx, request{route: api.RouteGC, query: q, body: struct{}{}}, &out)
	return out, err
}

// Shutdown asks the daemon to exit; VMs keep running. The daemon answers
// before it stops listening.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.call(ctx, request{route: api.RouteShutdown, body: struct{}{}}, nil)
}
