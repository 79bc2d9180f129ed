package dns

import (
	"encoding/binary"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"
)

// headerLen is the size of the fixed DNS header.
const headerLen = 12

// ednsUDPSize is the UDP payload size advertised in our OPT records
// (the DNS flag day 2020 recommendation).
const ednsUDPSize = 1232

// Handle answers one DNS query received over UDP and returns the packed
// response, or nil when the packet must be dropped (too short to answer, or
// itself a response). It is the whole query path without the sockets; with an
// upstream configured, names outside the zone are forwarded synchronously.
func (s *Server) Handle(req []byte) []byte {
	resp, fwd := s.answer(req, false)
	if fwd != nil {
		return s.forward(fwd, false)
	}
	return resp
}

// answer builds the response to req. For names outside the zone with an
// upstream configured it returns the parsed query to forward instead.
// tcp lifts the UDP size limit.
func (s *Server) answer(req []byte, tcp bool) (resp []byte, forward *mdns.Msg) {
	if len(req) < headerLen {
		return nil, nil
	}
	flags := binary.BigEndian.Uint16(req[2:4])
	if flags&(1<<15) != 0 {
		// QR set: a response, never answer it (no reflection loops).
		return nil, nil
	}
	if opcode := int(flags>>11) & 0xF; opcode != mdns.OpcodeQuery {
		return headerOnly(req, mdns.RcodeNotImplemented), nil
	}
	var q mdns.Msg
	if err := q.Unpack(req); err != nil || len(q.Question) != 1 {
		return headerOnly(req, mdns.RcodeFormatError), nil
	}

	m := new(mdns.Msg)
	m.SetReply(&q)
	maxSize := mdns.MaxMsgSize
	if !tcp {
		maxSize = mdns.MinMsgSize
	}
	if opt := q.IsEdns0(); opt != nil {
		if !tcp && int(opt.UDPSize()) > maxSize {
			maxSize = min(int(opt.UDPSize()), ednsUDPSize)
		}
		m.SetEdns0(ednsUDPSize, false)
		if opt.Version() != 0 {
			m.Rcode = mdns.RcodeBadVers
			return pack(m, maxSize), nil
		}
	}

	question := q.Question[0]
	qname := strings.ToLower(question.Name)
	label, inZone := s.splitZone(qname)
	if !inZone {
		if s.upstream != "" {
			return nil, &q
		}
		m.Rcode = mdns.RcodeRefused
		return pack(m, maxSize), nil
	}
	if question.Qclass != mdns.ClassINET && question.Qclass != mdns.ClassANY {
		m.Rcode = mdns.RcodeRefused
		return pack(m, maxSize), nil
	}
	m.Authoritative = true

	t := s.table.Load()
	if label == "" {
		// The zone apex: it exists, with only an SOA record.
		if question.Qtype == mdns.TypeSOA || question.Qtype == mdns.TypeANY {
			m.Answer = append(m.Answer, s.soa(t.serial))
		} else {
			m.Ns = append(m.Ns, s.soa(t.serial))
		}
		return pack(m, maxSize), nil
	}
	ip, ok := t.records[label]
	if !ok {
		m.Rcode = mdns.RcodeNameError
		m.Ns = append(m.Ns, s.soa(t.serial))
		return pack(m, maxSize), nil
	}
	if rr := addressRecord(question.Name, question.Qtype, ip); rr != nil {
		m.Answer = append(m.Answer, rr)
	} else {
		// NODATA: the name exists but has no record of this type.
		m.Ns = append(m.Ns, s.soa(t.serial))
	}
	return pack(m, maxSize), nil
}

// splitZone reports whether qname (lowercase, fully qualified) is in the zone
// and returns the part before the zone: "" for the apex, otherwise what must be
// a VM name. Names with more labels than one below the zone, or with escapes,
// are returned as they are and simply match no VM.
func (s *Server) splitZone(qname string) (label string, inZone bool) {
	if qname == s.zone {
		return "", true
	}
	rest, ok := strings.CutSuffix(qname, "."+s.zone)
	if !ok || rest == "" {
		return "", false
	}
	// "a\.banger.internal." is the label "a.banger" under "internal.": the dot
	// before the zone only separates labels when not escaped by a backslash.
	backslashes := len(rest) - len(strings.TrimRight(rest, `\`))
	if backslashes%2 == 1 {
		return "", false
	}
	return rest, true
}

// addressRecord returns the A or AAAA record answering qtype for ip, or nil
// when the name has no record of that type.
func addressRecord(name string, qtype uint16, ip netip.Addr) mdns.RR {
	hdr := mdns.RR_Header{Name: name, Class: mdns.ClassINET, Ttl: recordTTL}
	switch {
	case ip.Is4() && (qtype == mdns.TypeA || qtype == mdns.TypeANY):
		hdr.Rrtype = mdns.TypeA
		return &mdns.A{Hdr: hdr, A: ip.AsSlice()}
	case ip.Is6() && (qtype == mdns.TypeAAAA || qtype == mdns.TypeANY):
		hdr.Rrtype = mdns.TypeAAAA
		return &mdns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()}
	}
	return nil
}

// soa is the zone's SOA record. Its TTL and minimum are the negative-caching
// time (RFC 2308), kept as short as the records' so a new VM resolves at once.
func (s *Server) soa(serial uint32) mdns.RR {
	return &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: s.zone, Rrtype: mdns.TypeSOA, Class: mdns.ClassINET, Ttl: recordTTL},
		Ns:      s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  serial,
		Refresh: 3600,
		Retry:   600,
		Expire:  86400,
		Minttl:  recordTTL,
	}
}

// pack serialises m, truncating it (TC bit) when it exceeds maxSize.
func pack(m *mdns.Msg, maxSize int) []byte {
	m.Truncate(maxSize)
	out, err := m.Pack()
	if err != nil {
		// Only reachable with a question name that unpacked but does not
		// pack again; answer with the bare header rather than nothing.
		return headerOnlyFrom(m.Id, m.Opcode, mdns.RcodeServerFailure)
	}
	return out
}

// headerOnly is a response to the raw request req carrying only a header with
// rcode: used when the request cannot be parsed or is not a query.
func headerOnly(req []byte, rcode int) []byte {
	id := binary.BigEndian.Uint16(req[0:2])
	opcode := int(binary.BigEndian.Uint16(req[2:4])>>11) & 0xF
	return headerOnlyFrom(id, opcode, rcode)
}

func headerOnlyFrom(id uint16, opcode, rcode int) []byte {
	out := make([]byte, headerLen)
	binary.BigEndian.PutUint16(out[0:2], id)
	binary.BigEndian.PutUint16(out[2:4], 1<<15|uint16(opcode&0xF)<<11|uint16(rcode&0xF))
	return out
}
