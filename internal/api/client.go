package api

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
	"sync"
)

// Client talks to bangerd over its unix socket. The zero value with Socket
// set is ready to use.
type Client struct {
	Socket string

	once sync.Once
	hc   *http.Client
	// DaemonVersion is the version header of the last response.
	DaemonVersion string
}

func (c *Client) http() *http.Client {
	c.once.Do(func() {
		c.hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", c.Socket)
			},
			MaxIdleConns: 4,
		},
			// The daemon never redirects; its router does for paths it
			// cleans ("." or ".." as a name), and following would act on
			// another resource.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	})
	return c.hc
}

// ErrDaemonUnreachable wraps failures to reach the socket at all.
var ErrDaemonUnreachable = errors.New("daemon unreachable")

func (c *Client) newRequest(ctx context.Context, method, path string, in any) (*http.Request, error) {
	var body io.Reader
	if in != nil {
		switch v := in.(type) {
		case io.Reader:
			body = v
		default:
			b, err := json.Marshal(in)
			if err != nil {
				return nil, err
			}
			body = bytes.NewReader(b)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://banger"+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// Do sends a request and decodes a JSON response into out (when non-nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.raw(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}

// raw sends a request and returns the response when its status is 2xx; an
// error envelope becomes an *Error.
func (c *Client) raw(ctx context.Context, method, path string, in any) (*http.Response, error) {
	req, err := c.newRequest(ctx, method, path, in)
	if err != nil {
		return nil, err
	}
	resp, err := c.http().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %v", ErrDaemonUnreachable, c.Socket, err)
	}
	c.DaemonVersion = resp.Header.Get(VersionHeader)
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	if resp.StatusCode/100 == 3 {
		return &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("invalid name in %s: names are lowercase letters, digits and inner hyphens", resp.Request.URL.Path)}
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, MaxBodyBytes))
	var env ErrorEnvelope
	if json.Unmarshal(b, &env) == nil && env.Error != nil {
		return env.Error
	}
	return &Error{Code: CodeInternal, Message: fmt.Sprintf("daemon answered %s: %s", resp.Status, bytes.TrimSpace(b))}
}

// Stream sends a request and returns the response body for streaming.
func (c *Client) Stream(ctx context.Context, method, path string, in any) (io.ReadCloser, error) {
	resp, err := c.raw(ctx, method, path, in)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Version asks the daemon for its version.
func (c *Client) Version(ctx context.Context) (VersionResponse, error) {
	var v VersionResponse
	err := c.Do(ctx, "GET", "/v1/version", nil, &v)
	return v, err
}

// ListVMs lists VMs.
func (c *Client) ListVMs(ctx context.Context) ([]VM, error) {
	var vms []VM
	err := c.Do(ctx, "GET", "/v1/vms", nil, &vms)
	return vms, err
}

// CreateVM records a VM.
func (c *Client) CreateVM(ctx context.Context, req CreateVMRequest) (VM, error) {
	var vm VM
	err := c.Do(ctx, "POST", "/v1/vms", req, &vm)
	return vm, err
}

// GetVM shows one VM with live facts.
func (c *Client) GetVM(ctx context.Context, name string) (VM, error) {
	var vm VM
	err := c.Do(ctx, "GET", "/v1/vms/"+url.PathEscape(name), nil, &vm)
	return vm, err
}

// DeleteVM deletes a VM.
func (c *Client) DeleteVM(ctx context.Context, name string, force bool) error {
	return c.Do(ctx, "DELETE", "/v1/vms/"+url.PathEscape(name)+"?force="+strconv.FormatBool(force), nil, nil)
}

// StartVM starts a VM.
func (c *Client) StartVM(ctx context.Context, name string) (VM, error) {
	var vm VM
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/start", struct{}{}, &vm)
	return vm, err
}

// StopVM stops a VM.
func (c *Client) StopVM(ctx context.Context, name string, req StopRequest) (VM, error) {
	var vm VM
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/stop", req, &vm)
	return vm, err
}

// RestartVM stops then starts a VM.
func (c *Client) RestartVM(ctx context.Context, name string, req StopRequest) (VM, error) {
	var vm VM
	err := c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/restart", req, &vm)
	return vm, err
}

// WaitSSH waits until the guest answers SSH.
func (c *Client) WaitSSH(ctx context.Context, name string, req WaitSSHRequest) error {
	return c.Do(ctx, "POST", "/v1/vms/"+url.PathEscape(name)+"/wait-ssh", req, nil)
}

// Logs streams the VM's console log.
func (c *Client) Logs(ctx context.Context, name string, follow bool) (io.ReadCloser, error) {
	return c.Stream(ctx, "GET", "/v1/vms/"+url.PathEscape(name)+"/logs?follow="+strconv.FormatBool(follow), nil)
}

// Exec opens an exec stream: the returned connection carries frames.
func (c *Client) Exec(ctx context.Context, name string, req ExecRequest) (net.Conn, *bufio.Reader, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, nil, fmt.Errorf("%w at %s: %v", ErrDaemonUnreachable, c.Socket, err)
	}
	body, _ := json.Marshal(req)
	hreq, _ := http.NewRequest("POST", "http://banger/v1/vms/"+url.PathEscape(name)+"/exec", bytes.NewReader(body))
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", UpgradeProtocol)
	if err := hreq.Write(conn); err != nil {
		conn.Close()
		return nil, nil, err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, hreq)
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	c.DaemonVersion = resp.Header.Get(VersionHeader)
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		return nil, nil, decodeError(resp)
	}
	return conn, br, nil
}

// ListImages lists images.
func (c *Client) ListImages(ctx context.Context) ([]Image, error) {
	var out []Image
	err := c.Do(ctx, "GET", "/v1/images", nil, &out)
	return out, err
}

// ImportImage registers an image.
func (c *Client) ImportImage(ctx context.Context, req ImportImageRequest) (Image, error) {
	var out Image
	err := c.Do(ctx, "POST", "/v1/images", req, &out)
	return out, err
}

// GetImage shows an image.
func (c *Client) GetImage(ctx context.Context, name string) (Image, error) {
	var out Image
	err := c.Do(ctx, "GET", "/v1/images/"+url.PathEscape(name), nil, &out)
	return out, err
}

// DeleteImage deletes an image.
func (c *Client) DeleteImage(ctx context.Context, name string) error {
	return c.Do(ctx, "DELETE", "/v1/images/"+url.PathEscape(name), nil, nil)
}

// Doctor runs host checks.
func (c *Client) Doctor(ctx context.Context) (DoctorReport, error) {
	var out DoctorReport
	err := c.Do(ctx, "GET", "/v1/doctor", nil, &out)
	return out, err
}

// GC removes orphaned host objects.
func (c *Client) GC(ctx context.Context, dryRun bool) (GCResponse, error) {
	var out GCResponse
	err := c.Do(ctx, "POST", "/v1/gc?dry_run="+strconv.FormatBool(dryRun), struct{}{}, &out)
	return out, err
}

// Shutdown asks the daemon to exit.
func (c *Client) Shutdown(ctx context.Context) error {
	return c.Do(ctx, "POST", "/v1/daemon/shutdown", struct{}{}, nil)
}
