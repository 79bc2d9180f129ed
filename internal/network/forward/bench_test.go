package forward

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"testing"
)

// benchChunk is the size of one write in the throughput benchmarks.
const benchChunk = 64 << 10

// tcpSinkServer reads each connection to EOF and answers with the number of
// bytes it read, so the sender knows everything arrived.
func tcpSinkServer(b testing.TB) int {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				binary.Write(c, binary.BigEndian, n)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// benchThroughput streams b.N chunks to addr and waits for the sink's count.
func benchThroughput(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(chunk); err != nil {
			b.Fatal(err)
		}
	}
	c.(*net.TCPConn).CloseWrite()
	var got int64
	if err := binary.Read(c, binary.BigEndian, &got); err != nil {
		b.Fatalf("reading sink count: %v", err)
	}
	b.StopTimer()
	if got != int64(b.N)*benchChunk {
		b.Fatalf("sink read %d bytes, sent %d", got, int64(b.N)*benchChunk)
	}
}

// benchRoundTrip measures one-byte ping-pongs over one connection to addr.
func benchRoundTrip(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := []byte{0}
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func forwardTo(b *testing.B, port int) string {
	f := startForwarder(b, Options{}, TCP, port, newVM("127.0.0.1"))
	return f.Addr().String()
}

// BenchmarkTCPDirect is the baseline for BenchmarkTCPForward: the same stream
// straight to the sink.
func BenchmarkTCPDirect(b *testing.B) {
	benchThroughput(b, net.JoinHostPort("127.0.0.1", strconv.Itoa(tcpSinkServer(b))))
}

// BenchmarkTCPForward streams through a forwarder to the sink (MB/s).
func BenchmarkTCPForward(b *testing.B) {
	benchThroughput(b, forwardTo(b, tcpSinkServer(b)))
}

// BenchmarkTCPRoundTripDirect is the latency baseline: 1-byte echo round trip.
func BenchmarkTCPRoundTripDirect(b *testing.B) {
	benchRoundTrip(b, net.JoinHostPort("127.0.0.1", strconv.Itoa(tcpEchoServer(b))))
}

// BenchmarkTCPRoundTripForward is the 1-byte echo round trip via a forwarder.
func BenchmarkTCPRoundTripForward(b *testing.B) {
	benchRoundTrip(b, forwardTo(b, tcpEchoServer(b)))
}

// TestForwardBenchRatio prints forwarded/direct ratios for throughput and
// round-trip latency, as the median of several alternating rounds so that
// load from other processes hits both sides alike. It only reports (no speed
// assertion) and runs when BANGER_FORWARD_BENCH=1:
//
//	BANGER_FORWARD_BENCH=1 go test ./internal/network/forward -run ForwardBenchRatio -v
func TestForwardBenchRatio(t *testing.T) {
	if os.Getenv("BANGER_FORWARD_BENCH") != "1" {
		t.Skip("set BANGER_FORWARD_BENCH=1 to measure forwarding against direct connections")
	}
	const rounds = 5
	mbps := func(r testing.BenchmarkResult) float64 {
		return float64(r.Bytes) * float64(r.N) / r.T.Seconds() / 1e6
	}
	nsPerOp := func(r testing.BenchmarkResult) float64 { return float64(r.NsPerOp()) }
	var direct, forward, rttDirect, rttForward []float64
	for range rounds {
		direct = append(direct, mbps(testing.Benchmark(BenchmarkTCPDirect)))
		forward = append(forward, mbps(testing.Benchmark(BenchmarkTCPForward)))
		rttDirect = append(rttDirect, nsPerOp(testing.Benchmark(BenchmarkTCPRoundTripDirect)))
		rttForward = append(rttForward, nsPerOp(testing.Benchmark(BenchmarkTCPRoundTripForward)))
	}
	mid := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	d, f := mid(direct), mid(forward)
	rd, rf := mid(rttDirect), mid(rttForward)
	t.Logf("throughput: direct %.0f MB/s, forward %.0f MB/s, ratio %.2fx", d, f, f/d)
	t.Logf("round trip: direct %.1f µs, forward %.1f µs, ratio %.2fx, added %.1f µs", rd/1e3, rf/1e3, rf/rd, (rf-rd)/1e3)
}
