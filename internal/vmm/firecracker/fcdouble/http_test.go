package fcdouble

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

func TestStatusLineAndHeadersAreMicroHTTPs(t *testing.T) {
	_, sock, _ := startDouble(t, Config{ID: "abc"})
	r := call(t, sock, "GET", "/", "")
	if r.statusLine != "HTTP/1.1 200 " {
		t.Fatalf("status line %q, want %q (no reason phrase)", r.statusLine, "HTTP/1.1 200 ")
	}
	if r.headers["Server"] != "Firecracker API" || r.headers["Connection"] != "keep-alive" || r.headers["Content-Type"] != "application/json" {
		t.Fatalf("headers %v", r.headers)
	}
	if r.body != `{"app_name":"Firecracker","id":"abc","state":"Not started","vmm_version":"`+Version+`"}` {
		t.Fatalf("GET / body %s", r.body)
	}
	r = call(t, sock, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`)
	if r.statusLine != "HTTP/1.1 204 " {
		t.Fatalf("status line %q, want %q", r.statusLine, "HTTP/1.1 204 ")
	}
	if _, ok := r.headers["Content-Length"]; ok {
		t.Fatalf("204 carries Content-Length: %v", r.headers)
	}
}

func TestKeepAliveServesSeveralRequestsPerConnection(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		io.WriteString(c, "GET /version HTTP/1.1\r\n\r\n")
		if r := readResponse(t, br); r.status != 200 || !strings.Contains(r.body, Version) {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
}

func TestContentTypeRule(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	body := `{"vcpu_count":1,"mem_size_mib":64}`
	send := func(ct string) rawResponse {
		return rawCall(t, sock, fmt.Sprintf("PUT /machine-config HTTP/1.1\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s", ct, len(body), body))
	}
	for _, ok := range []string{"application/json", "text/plain", "application/json; charset=utf-8"} {
		mustNoContent(t, send(ok), "Content-Type "+ok)
	}
	r := send("application/x-www-form-urlencoded")
	if r.status != 400 || !strings.Contains(r.body, `"error":"Invalid header. Reason: Unsupported value. Key:Content-Type`) ||
		!strings.Contains(r.body, `All previous unanswered requests will be dropped.`) {
		t.Fatalf("bad Content-Type answered %d %s", r.status, r.body)
	}
}

func TestPayloadLimit(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	r := rawCall(t, sock, "PUT /mmds HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 51201\r\n\r\n")
	if r.status != 400 || !strings.Contains(r.body, `"error":"Request payload with size 51201 is larger than the limit of 51200 allowed by server.`) {
		t.Fatalf("oversized body answered %d %s", r.status, r.body)
	}
}

func TestBodyLessAndChunkedPut(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	if msg := faultOf(t, rawCall(t, sock, "PUT /machine-config HTTP/1.1\r\n\r\n")); msg != "Empty PUT request." {
		t.Fatalf("body-less PUT: %q", msg)
	}
	// micro-http does not read chunked bodies: the PUT arrives empty.
	if msg := faultOf(t, rawCall(t, sock, "PUT /machine-config HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")); msg != "Empty PUT request." {
		t.Fatalf("chunked PUT: %q", msg)
	}
	if msg := faultOf(t, rawCall(t, sock, "PATCH /machine-config HTTP/1.1\r\n\r\n")); msg != "Empty PATCH request." {
		t.Fatalf("body-less PATCH: %q", msg)
	}
	if msg := faultOf(t, call(t, sock, "GET", "/", `{}`)); msg != "GET request cannot have a body." {
		t.Fatalf("GET with body: %q", msg)
	}
}

func TestUnknownRoute(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	cases := map[[2]string]string{
		{"PATCH", "/boot-source"}: "Invalid request method and/or path: PATCH boot-source.",
		{"PUT", "/actions/x"}:     "Invalid request method and/or path: PUT actions.",
	}
	for c, want := range cases {
		if msg := faultOf(t, call(t, sock, c[0], c[1], `{"a":1}`)); msg != want {
			t.Errorf("%s %s: %q, want %q", c[0], c[1], msg, want)
		}
	}
	if msg := faultOf(t, call(t, sock, "GET", "/nope/deeper", "")); msg != "Invalid request method and/or path: GET nope." {
		t.Errorf("GET /nope/deeper: %q", msg)
	}
	r := rawCall(t, sock, "POST /actions HTTP/1.1\r\n\r\n")
	if r.status != 400 || !strings.Contains(r.body, `"error":"Invalid HTTP Method`) {
		t.Errorf("POST answered %d %s", r.status, r.body)
	}
}

func TestEleventhConnectionGets503(t *testing.T) {
	_, sock, _ := startDouble(t, Config{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < maxConnections; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// A round trip proves the server accepted and counts this connection.
		io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
		if r := readResponse(t, bufio.NewReader(c)); r.status != 200 {
			t.Fatalf("connection %d: status %d", i+1, r.status)
		}
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := readResponse(t, bufio.NewReader(c))
	if r.status != 503 || r.body != `{"error":"Too many open connections"}` {
		t.Fatalf("11th connection: %d %s", r.status, r.body)
	}
	// Once one closes, a new connection is served again.
	conns[0].Close()
	conns = conns[1:]
	var last rawResponse
	for i := 0; i < 100; i++ { // the server notices the close asynchronously
		if last = call(t, sock, "GET", "/", ""); last.status == 200 {
			break
		}
	}
	if last.status != 200 {
		t.Fatalf("after a close: status %d", last.status)
	}
}

func TestPayloadLimitFlag(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	done := make(chan int, 1)
	go func() {
		done <- Main(context.Background(), []string{"--api-sock", sock, "--http-api-max-payload-size", "16"}, io.Discard, io.Discard)
	}()
	waitSocket(t, sock)
	r := call(t, sock, "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":64}`)
	if r.status != 400 || !strings.Contains(r.body, "larger than the limit of 16 allowed by server") {
		t.Fatalf("body above --http-api-max-payload-size: %d %s", r.status, r.body)
	}
}
