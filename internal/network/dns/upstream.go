package dns

import (
	"context"

	mdns "github.com/miekg/dns"
)

// forward sends q to the upstream resolver over the client's transport and
// returns the packed answer, or SERVFAIL when the upstream fails or is slow.
func (s *Server) forward(q *mdns.Msg, tcp bool) []byte {
	client := mdns.Client{Net: "udp", Timeout: upstreamTimeout}
	maxSize := mdns.MinMsgSize
	if tcp {
		client.Net = "tcp"
		maxSize = mdns.MaxMsgSize
	} else if opt := q.IsEdns0(); opt != nil {
		maxSize = max(maxSize, int(opt.UDPSize()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), upstreamTimeout)
	defer cancel()
	resp, _, err := client.ExchangeContext(ctx, q, s.upstream)
	if err != nil {
		s.logger.Debug("forwarding dns query", "name", q.Question[0].Name, "upstream", s.upstream, "err", err)
		m := new(mdns.Msg)
		m.SetRcode(q, mdns.RcodeServerFailure)
		m.RecursionAvailable = true
		return pack(m, maxSize)
	}
	resp.Id = q.Id
	return pack(resp, maxSize)
}
