// Package listen holds the accept loop of the node's own listeners: the
// cluster port, IMAP and POP3 (go-smtp and net/http have theirs).
package listen

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ErrClosing is what Accept returns when the server is shutting down.
var ErrClosing = errors.New("listener closing")

// Accept accepts connections on l and hands each to start, until closing
// reports true (ErrClosing), ctx ends (ctx.Err(); it also closes l), or l is
// closed otherwise (its error). Any other accept error (EMFILE when the
// process is out of descriptors, ECONNABORTED, a timeout) is logged and
// retried after a delay growing from 5 ms to 1 s: a listener that returned on
// it would leave the node without that protocol until restarted. start
// returns false when the server began closing before the session could be
// registered; the connection is then closed and Accept returns ErrClosing.
func Accept(ctx context.Context, l net.Listener, closing func() bool, log *slog.Logger, start func(net.Conn) bool) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			switch {
			case closing():
				return ErrClosing
			case ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, net.ErrClosed):
				return err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn("accept failed; retrying", "addr", l.Addr().String(), "err", err, "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			continue
		}
		delay = 0
		if !start(c) {
			c.Close()
			return ErrClosing
		}
	}
}

// Limits caps the connections of one server: in all, and from one IP
// address, so that one client cannot take every descriptor of the node.
// A zero cap is no cap. Safe for concurrent use.
type Limits struct {
	Max, PerIP int

	mu    sync.Mutex
	total int
	perIP map[netip.Addr]int
}

// Admit counts a connection from addr in and returns its release, or says
// why it is refused ("too many connections", "too many connections from
// this address").
func (l *Limits) Admit(addr net.Addr) (release func(), refused string) {
	ip := IP(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.Max > 0 && l.total >= l.Max:
		return nil, "too many connections"
	case l.PerIP > 0 && ip.IsValid() && l.perIP[ip] >= l.PerIP:
		return nil, "too many connections from this address"
	}
	l.total++
	if ip.IsValid() {
		if l.perIP == nil {
			l.perIP = map[netip.Addr]int{}
		}
		l.perIP[ip]++
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.total--
			if ip.IsValid() {
				if l.perIP[ip]--; l.perIP[ip] <= 0 {
					delete(l.perIP, ip)
				}
			}
		})
	}, ""
}

// IP is the IP address of a TCP peer (IPv4-mapped ones unmapped), or
// the zero Addr for others (a pipe, a Unix socket).
func IP(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(t.IP); ok {
			return ip.Unmap()
		}
	}
	return netip.Addr{}
}

// Refuse turns a client away without blocking: it writes reply (the
// protocol's "try again later"; "" for none) within a second, then closes.
// On an implicit-TLS connection it writes nothing, so that a refusal costs
// no handshake.
func Refuse(c net.Conn, reply string) {
	if _, isTLS := c.(*tls.Conn); isTLS {
		reply = ""
	}
	go func() {
		if reply != "" {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(c, reply)
		}
		c.Close()
	}()
}
