package dns

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// BenchmarkDNSQuery measures A queries answered over UDP on loopback with
// 1,000 VMs recorded, from several parallel clients, each waiting for its
// answer before sending the next query. It reports queries per second and
// the median round-trip latency.
//
//	go test ./internal/network/dns -run '^$' -bench DNSQuery -benchtime 5s
func BenchmarkDNSQuery(b *testing.B) {
	const vms = 1000
	s := New("", "", nil)
	records := make(map[string]netip.Addr, vms)
	for i := range vms {
		records[fmt.Sprintf("vm%d", i)] = netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)})
	}
	s.Replace(records)
	udp, _ := serveLoopback(b, s)

	// Queries are packed up front so the clients measure the server.
	queries := make([][]byte, vms)
	for i := range queries {
		q := new(mdns.Msg)
		q.SetQuestion(fmt.Sprintf("vm%d.banger.internal.", i), mdns.TypeA)
		queries[i], _ = q.Pack()
	}

	var mu sync.Mutex
	var latencies []time.Duration
	b.SetParallelism(4) // clients spend most time waiting on the socket
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("udp", udp)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		buf := make([]byte, 1500)
		req := make([]byte, 0, 512)
		var mine []time.Duration
		for pb.Next() {
			req = append(req[:0], queries[rand.IntN(vms)]...)
			id := uint16(rand.Uint32())
			req[0], req[1] = byte(id>>8), byte(id)
			t0 := time.Now()
			if _, err := conn.Write(req); err != nil {
				b.Error(err)
				return
			}
			conn.SetReadDeadline(t0.Add(2 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				b.Error(err)
				return
			}
			mine = append(mine, time.Since(t0))
			if n < headerLen || buf[0] != byte(id>>8) || buf[1] != byte(id) || buf[3]&0xF != 0 {
				b.Errorf("bad answer %x", buf[:n])
				return
			}
		}
		mu.Lock()
		latencies = append(latencies, mine...)
		mu.Unlock()
	})
	elapsed := time.Since(start)
	b.StopTimer()
	if len(latencies) == 0 {
		return
	}
	slices.Sort(latencies)
	b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "q/s")
	b.ReportMetric(float64(latencies[len(latencies)/2].Microseconds()), "median-µs")
}
