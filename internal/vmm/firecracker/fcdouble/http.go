package fcdouble

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// micro-http's limits (micro-http server.rs, Firecracker main.rs defaults).
const (
	maxConnections    = 10
	defaultMaxPayload = 51200 // --http-api-max-payload-size
	maxHeaderBytes    = 8192
)

// request is one parsed HTTP request, as micro-http would hand it over.
type request struct {
	method      string
	path        string
	version     string
	contentType string // raw header value, "" if absent
	body        []byte
}

// response is what a handler returns; status 204 carries no headers beyond
// Server/Connection, like micro-http's Response::new(NoContent).
type response struct {
	status      int
	body        []byte
	deprecation bool
}

// httpError is a protocol-level failure: micro-http answers 400 with an
// {"error": ...} body and drops the connection.
type httpError struct{ msg string }

func (e *httpError) Error() string { return e.msg }

// serveHTTP accepts connections on l until it is closed. handle is called for
// each request while holding mu, so requests are answered one at a time like
// Firecracker's single API thread.
func serveHTTP(l net.Listener, maxPayload int64, handle func(*request) response) error {
	var (
		mu     sync.Mutex // one request at a time
		connMu sync.Mutex
		conns  int
	)
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		connMu.Lock()
		full := conns >= maxConnections
		if !full {
			conns++
		}
		connMu.Unlock()
		if full {
			writeResponse(c, "HTTP/1.1", response{status: 503, body: jsonError("Too many open connections")})
			c.Close()
			continue
		}
		go func() {
			defer func() {
				c.Close()
				connMu.Lock()
				conns--
				connMu.Unlock()
			}()
			serveConn(c, &mu, maxPayload, handle)
		}()
	}
}

func serveConn(c net.Conn, mu *sync.Mutex, maxPayload int64, handle func(*request) response) {
	br := bufio.NewReader(c)
	for {
		req, err := readRequest(br, c, maxPayload)
		if err != nil {
			var he *httpError
			if errors.As(err, &he) {
				writeResponse(c, "HTTP/1.1", response{status: 400, body: jsonError(he.msg + "\nAll previous unanswered requests will be dropped.")})
			}
			return
		}
		mu.Lock()
		resp := handle(req)
		mu.Unlock()
		if err := writeResponse(c, req.version, resp); err != nil {
			return
		}
	}
}

func jsonError(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"error": msg})
	return b
}

func faultBody(msg string) []byte {
	b, _ := json.Marshal(map[string]string{"fault_message": msg})
	return b
}

// readRequest parses one request. io errors (peer gone) come back as is;
// malformed requests as *httpError.
func readRequest(br *bufio.Reader, w io.Writer, maxPayload int64) (*request, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 {
		return nil, &httpError{"Invalid request."}
	}
	req := &request{method: parts[0], version: parts[2]}
	switch req.method {
	case "GET", "PUT", "PATCH", "DELETE":
	default:
		return nil, &httpError{"Invalid HTTP Method: Unsupported HTTP method."}
	}
	if req.version != "HTTP/1.0" && req.version != "HTTP/1.1" {
		return nil, &httpError{"Invalid HTTP Version: Unsupported HTTP version."}
	}
	uri := parts[1]
	if rest, ok := strings.CutPrefix(uri, "http://"); ok {
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			return nil, &httpError{"Invalid URI: Unsupported URI."}
		}
		uri = rest[i:]
	}
	if !strings.HasPrefix(uri, "/") {
		return nil, &httpError{"Invalid URI: Unsupported URI."}
	}
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	req.path = uri

	var (
		length int64
		expect bool
		total  int
	)
	for {
		h, err := readLine(br)
		if err != nil {
			return nil, err
		}
		total += len(h)
		if total > maxHeaderBytes {
			return nil, &httpError{"Invalid request."}
		}
		if h == "" {
			break
		}
		name, value, ok := strings.Cut(h, ":")
		if !ok {
			return nil, &httpError{"Invalid header. Reason: Header is incorrectly formatted. Key: " + h}
		}
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
			if err != nil {
				return nil, &httpError{fmt.Sprintf("Invalid header. Reason: Invalid value. Key:%s; Value:%s", name, value)}
			}
			length = int64(n)
		case "content-type":
			// Only the media type counts; a parameter such as charset is ignored.
			mt, _, _ := strings.Cut(value, ";")
			switch strings.TrimSpace(mt) {
			case "application/json", "text/plain":
				req.contentType = strings.TrimSpace(value)
			default:
				return nil, &httpError{fmt.Sprintf("Invalid header. Reason: Unsupported value. Key:%s; Value:%s", name, value)}
			}
		case "transfer-encoding":
			// micro-http accepts "chunked" but never reads chunked bodies:
			// the length comes from Content-Length only, so such a PUT
			// arrives body-less.
			switch strings.TrimSpace(value) {
			case "chunked", "identity":
			default:
				return nil, &httpError{fmt.Sprintf("Invalid header. Reason: Unsupported value. Key:%s; Value:%s", name, value)}
			}
		case "expect":
			if strings.TrimSpace(value) != "100-continue" {
				return nil, &httpError{fmt.Sprintf("Invalid header. Reason: Unsupported value. Key:%s; Value:%s", name, value)}
			}
			expect = true
		}
	}
	if length > maxPayload {
		return nil, &httpError{fmt.Sprintf("Request payload with size %d is larger than the limit of %d allowed by server.", length, maxPayload)}
	}
	if length > 0 {
		if expect {
			if err := writeResponse(w, req.version, response{status: 100}); err != nil {
				return nil, err
			}
		}
		req.body = make([]byte, length)
		if _, err := io.ReadFull(br, req.body); err != nil {
			return nil, err
		}
	}
	return req, nil
}

func readLine(br *bufio.Reader) (string, error) {
	var buf bytes.Buffer
	for {
		chunk, isPrefix, err := br.ReadLine()
		if err != nil {
			return "", err
		}
		buf.Write(chunk)
		if buf.Len() > maxHeaderBytes {
			return "", &httpError{"Invalid request."}
		}
		if !isPrefix {
			return buf.String(), nil
		}
	}
}

// writeResponse writes resp the micro-http way: status line without reason
// phrase, Server and Connection headers, and for anything but 1xx/204 a
// Content-Type and a Content-Length.
func writeResponse(w io.Writer, version string, resp response) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %d \r\n", version, resp.status)
	b.WriteString("Server: Firecracker API\r\nConnection: keep-alive\r\n")
	if resp.deprecation {
		b.WriteString("Deprecation: true\r\n")
	}
	if resp.status != 100 && resp.status != 204 {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(resp.body))
	}
	b.WriteString("\r\n")
	if resp.status != 100 && resp.status != 204 {
		b.Write(resp.body)
	}
	_, err := w.Write(b.Bytes())
	return err
}
