package listen

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
)

// script is a listener whose Accept returns the given results in turn and
// then, like a real listener, blocks until it is closed.
type script struct {
	mu      sync.Mutex
	results []any // net.Conn or error
	closed  chan struct{}
	once    sync.Once
}

func newScript(results ...any) *script { return &script{results: results, closed: make(chan struct{})} }

func (s *script) Accept() (net.Conn, error) {
	s.mu.Lock()
	if len(s.results) > 0 {
		r := s.results[0]
		s.results = s.results[1:]
		s.mu.Unlock()
		if c, ok := r.(net.Conn); ok {
			return c, nil
		}
		return nil, r.(error)
	}
	s.mu.Unlock()
	<-s.closed
	return nil, &net.OpError{Op: "accept", Net: "tcp", Err: net.ErrClosed}
}
func (s *script) Close() error   { s.once.Do(func() { close(s.closed) }); return nil }
func (s *script) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 143} }

func accept(t *testing.T, results ...any) (served int, err error) {
	t.Helper()
	l := newScript(results...)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	err = Accept(context.Background(), l, func() bool { return false }, log, func(c net.Conn) bool {
		served++
		c.Close()
		if served == 2 {
			l.Close()
		}
		return true
	})
	return served, err
}

func pipe() net.Conn {
	a, b := net.Pipe()
	b.Close()
	return a
}

// Out of descriptors, or a connection aborted before it was accepted: the
// listener goes on serving.
func TestAcceptSurvivesTransientErrors(t *testing.T) {
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	aborted := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}
	served, err := accept(t, pipe(), emfile, emfile, aborted, pipe())
	if served != 2 {
		t.Errorf("%d connections served after transient errors, want 2", served)
	}
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("returned %v, want the listener's closed error", err)
	}
}

func TestAcceptStops(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// The server is closing: the connection is closed unserved.
	a, b := net.Pipe()
	err := Accept(context.Background(), newScript(a), func() bool { return false }, log, func(net.Conn) bool { return false })
	if !errors.Is(err, ErrClosing) {
		t.Errorf("start refused: %v, want ErrClosing", err)
	}
	if _, werr := b.Write([]byte("x")); werr == nil {
		t.Error("the refused connection was left open")
	}
	// ctx ends: Accept closes the listener (which unblocks it) and returns
	// ctx's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Accept(ctx, newScript(), func() bool { return false }, log, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	// Shutdown: the accept error that Close caused reads as ErrClosing.
	l := newScript()
	l.Close()
	if err := Accept(context.Background(), l, func() bool { return true }, log, nil); !errors.Is(err, ErrClosing) {
		t.Errorf("closing: %v, want ErrClosing", err)
	}
}

func TestLimits(t *testing.T) {
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	a6 := &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 1001} // the same address, IPv4-mapped
	b := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1000}
	pipe := &net.UnixAddr{Name: "@", Net: "unix"}
	l := &Limits{Max: 4, PerIP: 2}
	ra1, why := l.Admit(a)
	ra2, why2 := l.Admit(a6)
	if why != "" || why2 != "" {
		t.Fatalf("first two from one address refused: %q %q", why, why2)
	}
	if _, why := l.Admit(a); why != "too many connections from this address" {
		t.Fatalf("third from one address: %q", why)
	}
	rb, why := l.Admit(b)
	if why != "" {
		t.Fatalf("another address refused: %q", why)
	}
	rp, why := l.Admit(pipe) // no IP: counts only in all
	if why != "" {
		t.Fatalf("a connection without IP refused: %q", why)
	}
	if _, why := l.Admit(b); why != "too many connections" {
		t.Fatalf("fifth in all: %q", why)
	}
	ra1()
	ra1() // a second release changes nothing
	if _, why := l.Admit(a); why != "" {
		t.Fatalf("after a release: %q", why)
	}
	if _, why := l.Admit(b); why != "too many connections" {
		t.Fatalf("double release freed two places: %q", why)
	}
	ra2()
	rb()
	rp()
	if l.total != 1 || len(l.perIP) != 1 {
		t.Fatalf("counts after releases: total %d, per IP %v", l.total, l.perIP)
	}
	if u := (&Limits{}); func() string { _, w := u.Admit(a); return w }() != "" {
		t.Fatal("zero Limits refused a connection")
	}
}
