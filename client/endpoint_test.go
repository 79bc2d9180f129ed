package client

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

func TestEndpoint(t *testing.T) {
	for _, c := range []struct {
		route        string
		params       []string
		method, path string
	}{
		{api.RouteVersion, nil, "GET", "/v1/version"},
		{api.RouteVMStart, []string{"web"}, "POST", "/v1/vms/web/start"},
		{api.RouteVMPortRemove, []string{"web", "127.0.0.1:8080:80/tcp"}, "DELETE", "/v1/vms/web/ports/127.0.0.1:8080:80%2Ftcp"},
		{api.RouteSessionLogs, []string{"web", "s-1"}, "GET", "/v1/vms/web/sessions/s-1/logs"},
		// Whatever a name holds stays one path segment.
		{api.RouteVMShow, []string{"a/b?c#d e"}, "GET", "/v1/vms/a%2Fb%3Fc%23d%20e"},
		{api.RouteVMShow, []string{""}, "GET", "/v1/vms/"},
	} {
		m, p := endpoint(c.route, c.params...)
		if m != c.method || p != c.path {
			t.Errorf("endpoint(%q, %q) = %s %s, want %s %s", c.route, c.params, m, p, c.method, c.path)
		}
		if u, err := url.Parse("http://banger" + p); err != nil || strings.Count(u.EscapedPath(), "/") != strings.Count(strings.SplitN(c.route, " ", 2)[1], "/") {
			t.Errorf("endpoint(%q, %q) = %s: the number of path segments changed (%v)", c.route, c.params, p, err)
		}
	}
}

func TestEndpointWrongParameterCount(t *testing.T) {
	for _, c := range []struct {
		route  string
		params []string
	}{
		{api.RouteVMShow, nil},
		{api.RouteVMShow, []string{"a", "b"}},
		{api.RouteVersion, []string{"a"}},
		{"/v1/version", nil},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("endpoint(%q, %q) did not panic", c.route, c.params)
				}
			}()
			endpoint(c.route, c.params...)
		}()
	}
}

func TestDecodeError(t *testing.T) {
	resp := func(status int) *http.Response {
		req, _ := http.NewRequest("GET", "http://banger/v1/vms/..", nil)
		return &http.Response{StatusCode: status, Status: http.StatusText(status), Body: http.NoBody, Request: req}
	}
	if err := decodeError(resp(301)); !IsInvalidArgument(err) {
		t.Errorf("a redirect decodes to %v, want invalid_argument", err)
	}
	r := resp(404)
	r.Body = nopBody(`{"error":{"code":"not_found","message":"vm \"x\": not found"}}`)
	if err := decodeError(r); !IsNotFound(err) || err.Error() != `vm "x": not found` {
		t.Errorf("a not_found envelope decodes to %v", err)
	}
	r = resp(502)
	r.Body = nopBody("bad gateway")
	if err := decodeError(r); CodeOf(err) != CodeInternal || !strings.Contains(err.Error(), "bad gateway") {
		t.Errorf("a body without envelope decodes to %v, want internal with the body", err)
	}
}

func nopBody(s string) *readCloser { return &readCloser{strings.NewReader(s)} }

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }
