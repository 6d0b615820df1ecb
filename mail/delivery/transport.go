package delivery

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// target is one server to try, at one address.
type target struct {
	addr string // ip:port
	name string // host name (SNI, certificate check, reports)
	tls  string
	host *Host // credentials, certificates (relays and routes)
}

func (t target) poolKey() string {
	k := t.addr + "|" + t.name + "|" + t.tls
	if t.host != nil {
		k += "|" + t.host.Username + "|" + t.host.CertFile
	}
	return k
}

func (t target) String() string { return fmt.Sprintf("%s[%s]", t.name, t.addr) }

// permanentError ends the attempt for every recipient of a group.
type groupError struct {
	o    command.Outcome
	text string
}

// targets lists the servers to try for a destination, best first.
func (w *Worker) targets(ctx context.Context, d dest, st *Settings) ([]target, *groupError) {
	res := w.opt.Resolver
	if d.kind != "mx" {
		hosts := d.hosts
		if d.mode == Spread && len(hosts) > 1 {
			i := w.spreadStart(d.key, len(hosts))
			hosts = append(append([]Host(nil), hosts[i:]...), hosts[:i]...)
		}
		var out []target
		var last error
		for i := range hosts {
			h := &hosts[i]
			host, port, _ := net.SplitHostPort(h.hostPort())
			ips, err := res.LookupIP(ctx, host)
			if err != nil {
				last = err
				continue
			}
			mode := h.TLS
			if mode == "" {
				mode = TLSMay
			}
			for _, ip := range ips {
				out = append(out, target{addr: net.JoinHostPort(ip.String(), port), name: host, tls: mode, host: h})
			}
		}
		if len(out) == 0 {
			return nil, &groupError{command.Deferred, fmt.Sprintf("4.4.3 %s %s: no address for its hosts: %v", d.kind, strings.TrimPrefix(d.key, d.kind+":"), last)}
		}
		return out, nil
	}

	mode := st.TLS[d.domain]
	if mode == "" {
		mode = TLSMay
	}
	mxs, err := res.LookupMX(ctx, d.domain)
	if err != nil {
		var de *DNSError
		if errors.As(err, &de) && de.NotFound {
			return nil, &groupError{command.Bounced, fmt.Sprintf("5.1.2 domain %s does not exist (%v)", d.domain, err)}
		}
		return nil, &groupError{command.Deferred, fmt.Sprintf("4.4.3 cannot find the mail servers of %s: %v", d.domain, err)}
	}
	implicit := len(mxs) == 0
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, &groupError{command.Bounced, fmt.Sprintf("5.1.10 domain %s accepts no mail (null MX, RFC 7505)", d.domain)}
	}
	if implicit {
		mxs = []*net.MX{{Host: d.domain}}
	}
	var out []target
	var last error
	notFound := 0
	for _, mx := range mxs {
		host := strings.TrimSuffix(mx.Host, ".")
		ips, err := res.LookupIP(ctx, host)
		if err != nil {
			var de *DNSError
			if errors.As(err, &de) && de.NotFound {
				notFound++
			}
			last = err
			continue
		}
		for _, ip := range ips {
			if w.isSelf(ip) {
				return nil, &groupError{command.Bounced, fmt.Sprintf("5.4.6 mail for %s loops back to this cluster: its MX host %s is %s, an address of this cluster", d.domain, host, ip)}
			}
			out = append(out, target{addr: net.JoinHostPort(ip.String(), strconv.Itoa(w.opt.MXPort)), name: host, tls: mode})
		}
	}
	if len(out) > 0 {
		return out, nil
	}
	switch {
	case implicit && (last == nil || notFound > 0):
		return nil, &groupError{command.Bounced, fmt.Sprintf("5.1.2 domain %s has no MX and no address records", d.domain)}
	case notFound == len(mxs):
		return nil, &groupError{command.Bounced, fmt.Sprintf("5.4.4 no address records for the MX hosts of %s", d.domain)}
	case last == nil:
		return nil, &groupError{command.Bounced, fmt.Sprintf("5.4.4 no address records for the MX hosts of %s", d.domain)}
	}
	return nil, &groupError{command.Deferred, fmt.Sprintf("4.4.3 cannot find the addresses of the mail servers of %s: %v", d.domain, last)}
}

// deliverGroup hands one entry's recipients at one destination over in
// one transaction, trying the destination's servers in turn.
func (w *Worker) deliverGroup(ctx context.Context, st *Settings, q *storage.QueueEntry, msg []byte, g *group) map[string]outcome {
	out := map[string]outcome{}
	all := func(o command.Outcome, text, remote string) map[string]outcome {
		for _, r := range g.rcpts {
			out[r.Address] = outcome{o: o, text: text, remote: remote}
		}
		return out
	}
	targets, gerr := w.targets(ctx, g.dest, st)
	if gerr != nil {
		return all(gerr.o, gerr.text, "")
	}
	sem := w.sem(g.dest.key, st.PerDestination)
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return all(command.Deferred, "4.3.2 node stopping", "")
	}
	defer func() { <-sem }()

	last := "4.4.1 no server could be reached"
	lastRemote := ""
	for _, t := range targets {
		for try := 0; try < 2; try++ {
			c, reused, err := w.conn(ctx, t, st)
			if err != nil {
				last, lastRemote = w.describe(err, t), t.name
				var r *Reply
				if errors.As(err, &r) && r.Permanent() && (t.tls == TLSRequire || t.tls == TLSVerify) && strings.HasPrefix(r.Enhanced, "5.7") {
					// Refused TLS or authentication is the same at every
					// server of a destination: no point trying on.
					return all(command.Deferred, last, lastRemote)
				}
				break
			}
			if limit := c.maxSize(); limit > 0 && int64(len(msg)) > limit {
				w.pool.put(t.poolKey(), c)
				return all(command.Bounced, fmt.Sprintf("552 5.3.4 message size %d exceeds the limit %d of %s", len(msg), limit, t), t.name)
			}
			mailParams, rcptParams := params(c, q, msg, g.rcpts)
			rcpts := make([]string, len(g.rcpts))
			for i, r := range g.rcpts {
				rcpts[i] = r.Address
			}
			res, err := c.send(q.From, mailParams, rcpts, rcptParams, msg)
			if err != nil {
				c.Close()
				w.pool.done(c)
				last, lastRemote = w.describe(err, t), t.name
				if reused && try == 0 {
					continue // the server closed an idle connection: a fresh one
				}
				break
			}
			accepted := 0
			for i, r := range g.rcpts {
				var e error
				switch {
				case res.mail != nil:
					e = res.mail
				case res.rcpts[i] != nil:
					e = res.rcpts[i]
				case res.data != nil:
					e = res.data
				}
				if e == nil {
					out[r.Address] = outcome{o: command.Delivered, text: "250 accepted by " + t.String(), remote: t.name, noDSN: !c.has("DSN")}
					accepted++
					continue
				}
				var rp *Reply
				errors.As(e, &rp)
				o := command.Deferred
				if rp.Permanent() {
					o = command.Bounced
				}
				out[r.Address] = outcome{o: o, text: rp.Error() + " (from " + t.String() + ")", remote: t.name}
			}
			if accepted > 0 {
				w.messages.Add(1)
			}
			w.pool.put(t.poolKey(), c)
			return out
		}
	}
	return all(command.Deferred, last, lastRemote)
}

// describe words a connection failure for the queue and reports.
func (w *Worker) describe(err error, t target) string {
	var r *Reply
	if errors.As(err, &r) {
		return r.Error() + " (from " + t.String() + ")"
	}
	var ce *connError
	if errors.As(err, &ce) && ce.timeout {
		return fmt.Sprintf("4.4.2 %s: %v", t, ce.err)
	}
	return fmt.Sprintf("4.4.1 %s: %v", t, errors.Unwrap(err))
}

// params are the MAIL and RCPT parameters of a transaction.
func params(c *client, q *storage.QueueEntry, msg []byte, rcpts []storage.QueueRecipient) (string, []string) {
	var mp strings.Builder
	if c.has("SIZE") {
		fmt.Fprintf(&mp, " SIZE=%d", len(msg))
	}
	if c.has("8BITMIME") && has8bit(msg) {
		mp.WriteString(" BODY=8BITMIME")
	}
	dsn := c.has("DSN")
	if dsn && (q.Ret == "FULL" || q.Ret == "HDRS") {
		mp.WriteString(" RET=" + q.Ret)
	}
	if dsn && q.EnvID != "" {
		mp.WriteString(" ENVID=" + xtext(q.EnvID))
	}
	rp := make([]string, len(rcpts))
	for i, r := range rcpts {
		if !dsn {
			continue
		}
		if r.Notify != "" {
			rp[i] += " NOTIFY=" + strings.ToUpper(r.Notify)
		}
		if r.ORcpt != "" {
			typ, addr, ok := strings.Cut(r.ORcpt, ";")
			if !ok {
				typ, addr = "rfc822", r.ORcpt
			}
			rp[i] += " ORCPT=" + typ + ";" + xtext(addr)
		}
	}
	return mp.String(), rp
}

func has8bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// xtext encodes a DSN parameter (RFC 3461).
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 33 || c > 126 || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// conn returns a ready connection to t: an idle one, or a new one (greeted,
// TLS as the policy says, authenticated). With policy "may", a server whose
// STARTTLS fails is tried again in plain text.
func (w *Worker) conn(ctx context.Context, t target, st *Settings) (*client, bool, error) {
	if c := w.pool.get(t.poolKey()); c != nil {
		c.cmdTimeout, c.dataTime = st.CommandTimeout.D(), st.DataTimeout.D()
		return c, true, nil
	}
	c, err := w.dial(ctx, t, st, t.tls)
	if err != nil && t.tls == TLSMay {
		var ce *connError
		if errors.As(err, &ce) && strings.Contains(ce.err.Error(), "TLS handshake") {
			c, err = w.dial(ctx, t, st, TLSNone)
		}
	}
	if err != nil {
		return nil, false, err
	}
	w.pool.track(c)
	return c, false, nil
}

func (w *Worker) tlsConfig(t target) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: t.name, MinVersion: tls.VersionTLS12}
	if net.ParseIP(t.name) != nil {
		cfg.ServerName = ""
	}
	verify := t.tls == TLSVerify
	if t.host != nil {
		if t.host.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(t.host.CertFile, t.host.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{cert}
		}
		if t.host.CAFile != "" {
			pem, err := os.ReadFile(t.host.CAFile)
			if err != nil {
				return nil, fmt.Errorf("CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("CA file %s: no certificates", t.host.CAFile)
			}
			cfg.RootCAs = pool
			verify = true
		}
	}
	if !verify {
		// Opportunistic and "require": encryption against passive
		// eavesdropping; no authentication of the server (as SMTP between
		// MX hosts commonly is).
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

func (w *Worker) dial(ctx context.Context, t target, st *Settings, mode string) (*client, error) {
	d := net.Dialer{Timeout: st.ConnectTimeout.D()}
	if w.opt.LocalIP != nil && !w.opt.LocalIP.IsUnspecified() && !w.opt.LocalIP.IsLoopback() == !net.ParseIP(strings.Split(t.addr, ":")[0]).IsLoopback() {
		d.LocalAddr = &net.TCPAddr{IP: w.opt.LocalIP}
	}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return nil, &connError{peer: t.String(), err: err, timeout: isTimeout(err)}
	}
	var conn net.Conn = raw
	if mode == TLSImplicit {
		cfg, err := w.tlsConfig(t)
		if err != nil {
			raw.Close()
			return nil, &connError{peer: t.String(), err: err}
		}
		tc := tls.Client(raw, cfg)
		_ = tc.SetDeadline(time.Now().Add(st.CommandTimeout.D()))
		if err := tc.Handshake(); err != nil {
			raw.Close()
			return nil, &connError{peer: t.String(), err: fmt.Errorf("TLS handshake: %w", err)}
		}
		conn = tc
	}
	c := newClient(conn, t.String(), st.CommandTimeout.D(), st.DataTimeout.D())
	c.tls = mode == TLSImplicit
	fail := func(err error) (*client, error) {
		c.Close()
		return nil, err
	}
	if err := c.greet(w.opt.Hostname); err != nil {
		return fail(err)
	}
	switch mode {
	case TLSMay, TLSRequire, TLSVerify:
		if !c.has("STARTTLS") {
			if mode != TLSMay {
				return fail(&Reply{Code: 530, Enhanced: "4.7.0", Msg: fmt.Sprintf("4.7.0 TLS is required for %s but it offers no STARTTLS", t)})
			}
			break
		}
		cfg, err := w.tlsConfig(t)
		if err != nil {
			return fail(&connError{peer: t.String(), err: err})
		}
		if err := c.startTLS(cfg, w.opt.Hostname); err != nil {
			if mode != TLSMay {
				return fail(&Reply{Code: 454, Enhanced: "4.7.0", Msg: fmt.Sprintf("4.7.0 TLS is required for %s but STARTTLS failed: %v", t, err)})
			}
			return fail(err)
		}
	}
	if t.host != nil && t.host.Username != "" {
		if err := c.auth(t.host.Username, t.host.Password); err != nil {
			var r *Reply
			if errors.As(err, &r) {
				return fail(&Reply{Code: r.Code, Enhanced: "4.7.0", Msg: fmt.Sprintf("4.7.0 authentication as %s at %s failed: %s", t.host.Username, t, r.Error())})
			}
			return fail(err)
		}
	}
	return c, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// pool keeps idle connections for reuse, and knows every open one so that
// a stopping node can cut them.
type pool struct {
	mu     sync.Mutex
	idle   map[string][]*idleConn
	open   map[*client]struct{}
	closed bool
}

type idleConn struct {
	c     *client
	since time.Time
	uses  int
}

const (
	idleTimeout  = 10 * time.Second
	maxConnUses  = 200
	maxIdlePerTo = 32
)

func newPool() *pool {
	return &pool{idle: map[string][]*idleConn{}, open: map[*client]struct{}{}}
}

func (p *pool) track(c *client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return
	}
	p.open[c] = struct{}{}
}

func (p *pool) done(c *client) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
}

func (p *pool) get(key string) *client {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[key]
	for len(l) > 0 {
		ic := l[len(l)-1]
		l = l[:len(l)-1]
		if time.Since(ic.since) < idleTimeout {
			p.idle[key] = l
			ic.c.uses = ic.uses
			return ic.c
		}
		go p.quit(ic.c)
	}
	delete(p.idle, key)
	return nil
}

func (p *pool) put(key string, c *client) {
	c.uses++
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || c.uses >= maxConnUses || len(p.idle[key]) >= maxIdlePerTo {
		go p.quit(c)
		return
	}
	p.idle[key] = append(p.idle[key], &idleConn{c: c, since: time.Now(), uses: c.uses})
}

func (p *pool) quit(c *client) {
	c.quit()
	p.done(c)
}

func (p *pool) janitor(ctx context.Context) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		for k, l := range p.idle {
			keep := l[:0]
			for _, ic := range l {
				if time.Since(ic.since) >= idleTimeout {
					go p.quit(ic.c)
				} else {
					keep = append(keep, ic)
				}
			}
			if len(keep) == 0 {
				delete(p.idle, k)
			} else {
				p.idle[k] = keep
			}
		}
		p.mu.Unlock()
	}
}

// closeAll cuts every connection, idle or in use.
func (p *pool) closeAll() {
	p.mu.Lock()
	p.closed = true
	for c := range p.open {
		c.Close()
	}
	p.idle = map[string][]*idleConn{}
	p.mu.Unlock()
}
