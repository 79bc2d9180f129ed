package dns

import (
	"encoding/binary"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzHandle feeds arbitrary packets to the query path. Plain `go test` runs
// only the seeds; explore with
//
//	go test ./internal/network/dns -run '^$' -fuzz FuzzHandle -fuzztime 30s
func FuzzHandle(f *testing.F) {
	seed := func(name string, qtype uint16, edns bool) []byte {
		q := new(mdns.Msg)
		q.SetQuestion(name, qtype)
		if edns {
			q.SetEdns0(4096, true)
		}
		b, err := q.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	valid := seed("web.banger.internal.", mdns.TypeA, false)
	f.Add(valid)
	f.Add(seed("WEB.banger.internal.", mdns.TypeAAAA, true))
	f.Add(seed("nope.banger.internal.", mdns.TypeANY, false))
	f.Add(seed("banger.internal.", mdns.TypeSOA, true))
	f.Add(seed("example.com.", mdns.TypeMX, false))
	f.Add(seed(`a\.b.banger.internal.`, mdns.TypeA, false))
	f.Add([]byte{})
	f.Add(valid[:headerLen])
	f.Add(append(valid[:headerLen:headerLen], 0xC0, headerLen, 0, 1, 0, 1))
	notify := append([]byte(nil), valid...)
	notify[2] |= byte(mdns.OpcodeNotify) << 3
	f.Add(notify)

	s := New("", "", nil)
	s.Set("web", netip.MustParseAddr("172.30.0.2"))
	s.Set("v6", netip.MustParseAddr("fd00::2"))

	f.Fuzz(func(t *testing.T, req []byte) {
		out := s.Handle(req)
		if out == nil {
			return
		}
		if len(req) < headerLen || req[2]&0x80 != 0 {
			t.Fatalf("answered a packet that must be dropped: %x", req)
		}
		if len(out) > ednsUDPSize {
			t.Fatalf("UDP response of %d bytes exceeds %d", len(out), ednsUDPSize)
		}
		var r mdns.Msg
		if err := r.Unpack(out); err != nil {
			t.Fatalf("response %x does not parse: %v", out, err)
		}
		if r.Id != binary.BigEndian.Uint16(req) || !r.Response {
			t.Fatalf("response id=%d qr=%v to request id %d", r.Id, r.Response, binary.BigEndian.Uint16(req))
		}
	})
}
