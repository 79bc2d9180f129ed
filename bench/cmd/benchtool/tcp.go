package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"
)

// cmdTCP compares a direct TCP connection to a guest with the same
// connection through banger's port forward: throughput to a guest that
// counts the bytes it received and answers the count after EOF (so the
// time covers delivery, not buffering), and round-trip latency to a guest
// echo server. Rounds alternate direct and forwarded.
func cmdTCP(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tcp", flag.ContinueOnError)
	direct := fs.String("direct", "", "guest count server, direct (IP:PORT)")
	fwd := fs.String("forward", "", "the same through the forward (127.0.0.1:PORT)")
	echoDirect := fs.String("echo-direct", "", "guest echo server, direct")
	echoFwd := fs.String("echo-forward", "", "the same through the forward")
	size := fs.Int("bytes", 32<<20, "bytes per throughput round")
	rounds := fs.Int("rounds", 5, "rounds of each")
	pings := fs.Int("pings", 200, "round trips per latency round")
	target := fs.Float64("target", 0.8, "target forwarded/direct throughput ratio")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var dRates, fRates []float64
	for i := 0; i < *rounds; i++ {
		for _, c := range []struct {
			addr string
			out  *[]float64
		}{{*direct, &dRates}, {*fwd, &fRates}} {
			r, err := sendCounted(ctx, c.addr, *size)
			if err != nil {
				return fmt.Errorf("round %d to %s: %w", i, c.addr, err)
			}
			*c.out = append(*c.out, r)
			time.Sleep(200 * time.Millisecond) // the guest's listener restarts between connections
		}
	}
	dm, fm := median(dRates), median(fRates)
	res := "PASS"
	if fm/dm < *target {
		res = "MISS"
	}
	fmt.Printf("%-44s direct %.1f MB/s, forwarded %.1f MB/s (medians of %d, %d MiB each) = %.2fx  target>=%.2fx %s\n",
		"TCP throughput to the guest", dm, fm, *rounds, *size>>20, fm/dm, *target, res)
	if *echoDirect != "" && *echoFwd != "" {
		dl, err := retryRoundTrips(ctx, *echoDirect, *pings)
		if err != nil {
			return err
		}
		fl, err := retryRoundTrips(ctx, *echoFwd, *pings)
		if err != nil {
			return err
		}
		fmt.Printf("%-44s direct %v, forwarded %v (medians of %d) = %.2fx, +%v\n", "TCP round trip to the guest",
			dl, fl, *pings, float64(fl)/float64(dl), fl-dl)
	}
	return nil
}

// sendCounted sends n zero bytes, half-closes, and waits for the guest's
// byte count; it returns MB/s over the whole exchange.
func sendCounted(ctx context.Context, addr string, n int) (float64, error) {
	var d net.Dialer
	var conn net.Conn
	var err error
	for try := 0; try < 50; try++ { // the listener may be between connections
		if conn, err = d.DialContext(ctx, "tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	buf := make([]byte, 256<<10)
	start := time.Now()
	for left := n; left > 0; {
		k := min(left, len(buf))
		if _, err := conn.Write(buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	conn.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(conn)
	if err != nil {
		return 0, err
	}
	got, err := strconv.Atoi(strings.TrimSpace(string(reply)))
	if err != nil || got != n {
		return 0, fmt.Errorf("guest counted %q, sent %d", reply, n)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds(), nil
}

// retryRoundTrips retries a round that failed at once: the guest's echo
// listener restarts between connections, and a forwarded connection that
// arrives meanwhile is reset.
func retryRoundTrips(ctx context.Context, addr string, n int) (time.Duration, error) {
	var err error
	for try := 0; try < 5; try++ {
		time.Sleep(300 * time.Millisecond)
		var d time.Duration
		if d, err = roundTrips(ctx, addr, n); err == nil {
			return d, nil
		}
	}
	return 0, err
}

func roundTrips(ctx context.Context, addr string, n int) (time.Duration, error) {
	var d net.Dialer
	var conn net.Conn
	var err error
	for try := 0; try < 50; try++ {
		if conn, err = d.DialContext(ctx, "tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	var ds []time.Duration
	b := []byte{'x'}
	for i := 0; i < n; i++ {
		s := time.Now()
		if _, err := conn.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(conn, b); err != nil {
			return 0, err
		}
		ds = append(ds, time.Since(s))
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
