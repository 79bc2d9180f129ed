package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/failpoint"
)

// apiClient talks to one Firecracker API socket. micro-http reads bodies by
// Content-Length only, so every body is sent from a byte slice (never
// chunked), with the exact Content-Type it accepts.
type apiClient struct {
	sock string
	http *http.Client
}

func newAPIClient(sock string) *apiClient {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableCompression: true,
		MaxIdleConns:       1,
		IdleConnTimeout:    5 * time.Second,
	}
	return &apiClient{sock: sock, http: &http.Client{Transport: tr}}
}

func (c *apiClient) close() { c.http.CloseIdleConnections() }

// apiError is a non-2xx answer from Firecracker. Its text names the call and
// carries Firecracker's own message, e.g.
// "firecracker PUT /boot-source: Boot source error: The kernel file cannot be opened...".
type apiError struct {
	method, path string
	status       int
	message      string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("firecracker %s %s: %s", e.method, e.path, e.message)
}

// do sends one request; body is marshalled to JSON when non-nil; out, when
// non-nil, receives the decoded 200 body.
// Failpoints around every Firecracker API call that changes something
// (tests only): a counted spec picks the Nth call.
var (
	fpCallBefore = failpoint.New("vmm.firecracker.call.before")
	fpCallAfter  = failpoint.New("vmm.firecracker.call.after")
)

func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	if method != http.MethodGet {
		if err := fpCallBefore.Hit(ctx); err != nil {
			return fmt.Errorf("firecracker %s %s: %w", method, path, err)
		}
		defer func() { fpCallAfter.Hit(ctx) }()
	}
	var rd io.Reader
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("firecracker %s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.ContentLength = int64(len(payload))
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &apiError{method: method, path: path, status: resp.StatusCode, message: faultText(resp.StatusCode, data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

// faultText extracts Firecracker's message: logic errors come as
// {"fault_message":...}, micro-http protocol errors as {"error":...}.
func faultText(status int, data []byte) string {
	var f struct {
		FaultMessage string `json:"fault_message"`
		Error        string `json:"error"`
	}
	if json.Unmarshal(data, &f) == nil {
		switch {
		case f.FaultMessage != "":
			return f.FaultMessage
		case f.Error != "":
			return strings.TrimSuffix(f.Error, "\nAll previous unanswered requests will be dropped.")
		}
	}
	if s := strings.TrimSpace(string(data)); s != "" {
		return fmt.Sprintf("status %d: %s", status, s)
	}
	return fmt.Sprintf("status %d", status)
}

// instanceInfo is GET / (InstanceInfo in the swagger file).
type instanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

func (c *apiClient) describe(ctx context.Context) (instanceInfo, error) {
	var info instanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}
