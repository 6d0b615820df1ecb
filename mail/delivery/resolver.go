package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Resolver answers the DNS questions of delivery.
type Resolver interface {
	// LookupMX returns a domain's MX records (none: the domain exists but
	// has no MX). A domain that does not exist is a *DNSError NotFound.
	LookupMX(ctx context.Context, domain string) ([]*net.MX, error)
	// LookupIP returns a host's IPv4 and IPv6 addresses.
	LookupIP(ctx context.Context, host string) ([]net.IP, error)
}

// DNSError is a failed lookup. NotFound means the name does not exist
// (permanent); anything else is temporary.
type DNSError struct {
	Name     string
	Type     string
	Reason   string
	NotFound bool
}

func (e *DNSError) Error() string {
	return fmt.Sprintf("DNS %s lookup of %s: %s", e.Type, e.Name, e.Reason)
}

// DNSResolver asks one DNS server (or those of /etc/resolv.conf) over UDP,
// and over TCP when an answer is truncated.
type DNSResolver struct {
	Servers []string // host:port
	Timeout time.Duration
	// System: the servers are the system's (no --dns-resolver). Names
	// under the special-use TLDs of RFC 2606 and 6761 (test, example,
	// invalid, localhost) are then not sent to them: they never exist in
	// the public DNS, and a test cluster without its own DNS server must
	// not query the world for them. They fail temporarily, saying so.
	System bool

	// Answers are cached for their TTL (at most maxTTL; "no such name"
	// and "no records" for negTTL), and one question asked by many
	// deliveries at once goes out once.
	mu    sync.Mutex
	cache map[question]*answer
}

type question struct {
	name  string
	qtype uint16
}

type answer struct {
	done    chan struct{}
	rrs     []dns.RR
	err     error
	expires time.Time
}

const (
	maxTTL     = time.Hour
	negTTL     = 30 * time.Second
	maxEntries = 10000
)

var specialTLDs = []string{"test", "example", "invalid", "localhost"}

func specialUse(name string) bool {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	for _, t := range specialTLDs {
		if name == t || strings.HasSuffix(name, "."+t) {
			return true
		}
	}
	return false
}

// NewDNSResolver asks server (host:port), or the system's servers when
// server is empty.
func NewDNSResolver(server string) (*DNSResolver, error) {
	r := &DNSResolver{Timeout: 5 * time.Second, System: server == ""}
	if server != "" {
		if _, _, err := net.SplitHostPort(server); err != nil {
			server = net.JoinHostPort(server, "53")
		}
		r.Servers = []string{server}
		return r, nil
	}
	cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
	if err != nil {
		return nil, fmt.Errorf("DNS resolver: %w", err)
	}
	for _, s := range cc.Servers {
		r.Servers = append(r.Servers, net.JoinHostPort(s, cc.Port))
	}
	if len(r.Servers) == 0 {
		return nil, errors.New("DNS resolver: no servers in /etc/resolv.conf")
	}
	return r, nil
}

func (r *DNSResolver) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	q := question{strings.ToLower(dns.Fqdn(name)), qtype}
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[question]*answer{}
	}
	a, ok := r.cache[q]
	if ok {
		select {
		case <-a.done:
			if time.Now().After(a.expires) {
				ok = false
			}
		default: // being asked right now: wait for that answer
		}
	}
	if !ok {
		if len(r.cache) >= maxEntries {
			r.cache = map[question]*answer{}
		}
		a = &answer{done: make(chan struct{})}
		r.cache[q] = a
		r.mu.Unlock()
		a.rrs, a.err, a.expires = r.ask(ctx, name, qtype)
		close(a.done)
		return a.rrs, a.err
	}
	r.mu.Unlock()
	select {
	case <-a.done:
		return a.rrs, a.err
	case <-ctx.Done():
		return nil, &DNSError{Name: name, Type: dns.TypeToString[qtype], Reason: ctx.Err().Error()}
	}
}

// ask sends a question to the servers, each up to three times (UDP may be
// lost), and says until when the answer may be reused.
func (r *DNSResolver) ask(ctx context.Context, name string, qtype uint16) ([]dns.RR, error, time.Time) {
	now := time.Now()
	rrs, err := r.exchange(ctx, name, qtype)
	var de *DNSError
	switch {
	case err == nil && len(rrs) > 0:
		ttl := maxTTL
		for _, rr := range rrs {
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
		return rrs, nil, now.Add(ttl)
	case err == nil, errors.As(err, &de) && de.NotFound:
		return rrs, err, now.Add(negTTL)
	}
	return rrs, err, now // failures are not remembered
}

func (r *DNSResolver) exchange(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = true
	m.SetEdns0(1232, false)
	tname := dns.TypeToString[qtype]
	if r.System && specialUse(name) {
		return nil, &DNSError{Name: name, Type: tname, Reason: "a special-use name (RFC 6761) is not looked up in the system's DNS; give --dns-resolver for test domains"}
	}
	var last error
	tries := make([]string, 0, 3*len(r.Servers))
	for i := 0; i < 3; i++ {
		tries = append(tries, r.Servers...)
	}
	for _, srv := range tries {
		c := &dns.Client{Net: "udp", Timeout: r.Timeout / 3}
		in, _, err := c.ExchangeContext(ctx, m, srv)
		if err == nil && in.Truncated {
			c.Net = "tcp"
			in, _, err = c.ExchangeContext(ctx, m, srv)
		}
		if err != nil {
			reason := err.Error()
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				reason = "timed out asking " + srv
			case strings.Contains(reason, "unpack") || strings.Contains(reason, "overflow") || errors.Is(err, dns.ErrId) ||
				strings.Contains(reason, "bad rdata") || strings.Contains(reason, "buffer size too small"):
				reason = fmt.Sprintf("malformed DNS answer from %s (%v)", srv, err)
			default:
				reason = fmt.Sprintf("asking %s: %v", srv, err)
			}
			last = &DNSError{Name: name, Type: tname, Reason: reason}
			continue
		}
		switch in.Rcode {
		case dns.RcodeSuccess:
			return in.Answer, nil
		case dns.RcodeNameError:
			return nil, &DNSError{Name: name, Type: tname, Reason: "no such domain (NXDOMAIN)", NotFound: true}
		default:
			last = &DNSError{Name: name, Type: tname, Reason: fmt.Sprintf("server %s answered %s", srv, dns.RcodeToString[in.Rcode])}
		}
	}
	return nil, last
}

// LookupMX implements Resolver.
func (r *DNSResolver) LookupMX(ctx context.Context, domain string) ([]*net.MX, error) {
	rrs, err := r.query(ctx, domain, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	var out []*net.MX
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			out = append(out, &net.MX{Host: mx.Mx, Pref: mx.Preference})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Pref < out[j].Pref })
	return out, nil
}

// LookupIP implements Resolver.
func (r *DNSResolver) LookupIP(ctx context.Context, host string) ([]net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	var ips []net.IP
	var errs []error
	notFound := 0
	for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
		rrs, err := r.query(ctx, host, t)
		if err != nil {
			var de *DNSError
			if errors.As(err, &de) && de.NotFound {
				notFound++
			} else {
				errs = append(errs, err)
			}
			continue
		}
		for _, rr := range rrs {
			switch a := rr.(type) {
			case *dns.A:
				ips = append(ips, a.A)
			case *dns.AAAA:
				ips = append(ips, a.AAAA)
			}
		}
	}
	if len(ips) > 0 {
		return ips, nil
	}
	if notFound == 2 {
		return nil, &DNSError{Name: host, Type: "A", Reason: "no such domain (NXDOMAIN)", NotFound: true}
	}
	if len(errs) > 0 {
		return nil, errs[0]
	}
	return nil, nil
}
