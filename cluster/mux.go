package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/listen"
)

// The cluster port carries two protocols over mutual TLS: after the
// handshake, the client's first byte says which.
const (
	protoRaft byte = 'R' // hashicorp/raft's transport
	protoRPC  byte = 'H' // HTTP: big forwarded writes, blob fetch, status, digests
	// protoForward: forwarded writes, many in flight (forward.go). Nodes
	// before it close such connections, which their followers take as
	// "use HTTP".
	protoForward byte = 'F'
)

// mux accepts cluster connections and routes them by their first byte.
type mux struct {
	ln     net.Listener
	tls    *clusterTLS
	local  net.IP // outgoing connections leave from the node's own address
	log    *slog.Logger
	raft   *chanListener
	rpc    *chanListener
	fwd    *chanListener
	wg     sync.WaitGroup
	closed chan struct{}
}

func newMux(ln net.Listener, t *clusterTLS, local net.IP, advertise net.Addr, log *slog.Logger) *mux {
	m := &mux{ln: ln, tls: t, local: local, log: log, closed: make(chan struct{})}
	m.raft = newChanListener(advertise, m.closed)
	m.rpc = newChanListener(advertise, m.closed)
	m.fwd = newChanListener(advertise, m.closed)
	return m
}

// serve accepts until the mux closes. A node whose cluster port stopped
// accepting would be cut off from its peers, so accept errors are retried
// (see listen.Accept).
func (m *mux) serve() {
	closing := func() bool {
		select {
		case <-m.closed:
			return true
		default:
			return false
		}
	}
	err := listen.Accept(context.Background(), m.ln, closing, m.log.With("server", "cluster"), func(conn net.Conn) bool {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(conn)
		}()
		return true
	})
	if !closing() {
		m.log.Error("cluster listener failed", "err", err)
	}
}

func (m *mux) route(conn net.Conn) {
	tc := tls.Server(conn, m.tls.server)
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		m.log.Warn("refused cluster connection: TLS handshake failed (is the peer's certificate from this cluster's CA?)",
			"peer", conn.RemoteAddr().String(), "err", err)
		conn.Close()
		return
	}
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil {
		conn.Close()
		return
	}
	_ = tc.SetDeadline(time.Time{})
	var l *chanListener
	switch b[0] {
	case protoRaft:
		l = m.raft
	case protoRPC:
		l = m.rpc
	case protoForward:
		l = m.fwd
	default:
		m.log.Warn("refused cluster connection: unknown protocol byte", "peer", conn.RemoteAddr().String(), "byte", b[0])
		conn.Close()
		return
	}
	select {
	case l.ch <- tc:
	case <-m.closed:
		conn.Close()
	case <-l.done:
		conn.Close()
	}
}

// dial opens a cluster connection for protocol proto.
func (m *mux) dial(ctx context.Context, addr string, proto byte) (net.Conn, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: m.tls.client}
	if m.local != nil && !m.local.IsUnspecified() {
		d.NetDialer.LocalAddr = &net.TCPAddr{IP: m.local}
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &dialError{fmt.Errorf("cluster connection to %s: %w", addr, err)}
	}
	if _, err := conn.Write([]byte{proto}); err != nil {
		conn.Close()
		return nil, &dialError{fmt.Errorf("cluster connection to %s: %w", addr, err)}
	}
	return conn, nil
}

// dialError: a cluster connection that never opened (nothing was sent).
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func (m *mux) close() {
	select {
	case <-m.closed:
		return
	default:
	}
	close(m.closed)
	m.ln.Close()
	m.wg.Wait()
}

// chanListener is a net.Listener fed by the mux. Closing it stops its
// Accept; the socket itself belongs to the mux.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{} // the mux's
	done   chan struct{} // this listener's
	once   sync.Once
}

func newChanListener(addr net.Addr, closed chan struct{}) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), closed: closed, done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

// streamLayer is raft's view of the mux.
type streamLayer struct {
	*chanListener
	m *mux
}

func (s streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.m.dial(ctx, string(addr), protoRaft)
}
