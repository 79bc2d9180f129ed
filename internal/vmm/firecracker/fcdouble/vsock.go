package fcdouble

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
)

// serveVsock emulates the host side of Firecracker's hybrid vsock: each
// connection sends "CONNECT <port>\n"; if the fake guest listens on that port
// (Config.VsockEcho) the double answers "OK <host port>\n" and echoes bytes,
// otherwise it closes the connection as Firecracker does on a guest RST.
func (vm *VM) serveVsock(ln *net.UnixListener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go vm.vsockConn(c)
	}
}

func (vm *VM) vsockConn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(io.LimitReader(c, 32))
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	verb, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	port, err := strconv.ParseUint(arg, 10, 32)
	if !strings.EqualFold(verb, "CONNECT") || err != nil {
		return
	}
	if vm.cfg.VsockEcho == 0 || uint32(port) != vm.cfg.VsockEcho {
		return
	}
	hostPort := atomic.AddUint32(&vm.hostPort, 1) - 1
	if _, err := fmt.Fprintf(c, "OK %d\n", hostPort); err != nil {
		return
	}
	// Bytes read past the CONNECT line (none with a well-behaved client) go first.
	if n := br.Buffered(); n > 0 {
		rest, _ := br.Peek(n)
		if _, err := c.Write(rest); err != nil {
			return
		}
	}
	_, _ = io.Copy(c, c)
}
