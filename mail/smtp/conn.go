package smtp

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// listener wraps a TCP listener: it counts connections against the limits,
// refuses those over them, and hands go-smtp connections whose every read
// and write has a deadline. For implicit TLS it makes the *tls.Conn itself,
// over the wrapped connection, so that go-smtp sees TLS and we still see
// the socket.
type listener struct {
	net.Listener
	srv  *Server
	kind Kind
	tls  *tls.Config
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c, ok := l.srv.register(raw, l.kind)
		if !ok {
			continue
		}
		if l.tls != nil {
			return tls.Server(c, l.tls), nil
		}
		return c, nil
	}
}

// conn is one client connection, below TLS when there is TLS. Reads and
// writes get their own deadlines (go-smtp's timeouts are off: it sets a
// read deadline per command, which would bound a whole DATA transfer). It
// also carries what outlives one go-smtp session (EHLO and STARTTLS start
// new ones): the counters of errors and failed AUTHs, and the shutdown
// state.
type conn struct {
	net.Conn
	srv      *Server
	id       uint64
	kind     Kind
	ip       netip.Addr // invalid for non-IP connections
	release  func()     // gives its place back to the connection limits
	started  time.Time
	deadline time.Time // the session ends here, whatever it is doing

	wmu  sync.Mutex // guards held and orders writes
	held []byte     // the first lines of a multi-line reply, see Write

	mu              sync.Mutex
	inRead          bool
	inTx            bool     // a mail transaction is under way: let it finish
	top             net.Conn // what go-smtp writes to (the *tls.Conn when TLS), while a session exists
	aborted         bool     // shutdown: no more input is taken
	closeAfterWrite bool
	closed          bool
	errors          int
	authFailures    int
	trusted         map[string]bool // relay trust by settings, computed once per connection
}

// Read reads with a deadline: the idle timeout, capped by the end of the
// session. During shutdown a read outside a mail transaction ends the
// session with 421 instead.
func (c *conn) Read(b []byte) (int, error) {
	c.mu.Lock()
	if c.aborted || c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if c.srv.closing.Load() && !c.inTx {
		c.mu.Unlock()
		c.abort()
		return 0, net.ErrClosed
	}
	c.inRead = true
	c.mu.Unlock()

	d := time.Now().Add(c.srv.cfg.ReadTimeout)
	if d.After(c.deadline) {
		d = c.deadline
	}
	_ = c.Conn.SetReadDeadline(d)
	n, err := c.Conn.Read(b)

	c.mu.Lock()
	c.inRead = false
	aborted := c.aborted
	c.mu.Unlock()
	if aborted {
		return 0, net.ErrClosed
	}
	if err != nil && isTimeout(err) {
		// go-smtp puts the text of some errors in its replies: let it be
		// this, not the socket's addresses.
		err = errTimeout{}
	}
	return n, err
}

// errTimeout is a read that timed out.
type errTimeout struct{}

func (errTimeout) Error() string   { return "timeout" }
func (errTimeout) Timeout() bool   { return true }
func (errTimeout) Temporary() bool { return true }

// Write writes with the write timeout, and closes the connection after it
// when the reply being written said so (421).
//
// On a plaintext connection the lines of a multi-line reply are held until
// its last line and go out in one write: go-smtp flushes every line of its
// replies, and EHLO's eleven lines had cost eleven syscalls and segments
// per session. The client can act on nothing before the last line, so
// holding the others delays nothing. Under TLS the bytes here are records and pass as they
// come.
func (c *conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	plain := c.top == c
	c.mu.Unlock()

	c.wmu.Lock()
	if plain && len(c.held)+len(b) <= maxHeldReply && continuesReply(b) {
		c.held = append(c.held, b...)
		c.wmu.Unlock()
		return len(b), nil
	}
	out := b
	if len(c.held) > 0 {
		out = append(c.held, b...)
		c.held = c.held[:0]
	}
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	n, err := c.Conn.Write(out)
	c.wmu.Unlock()
	n = max(0, n-(len(out)-len(b)))

	c.mu.Lock()
	closeNow := c.closeAfterWrite
	c.mu.Unlock()
	if closeNow {
		c.Close()
	}
	return n, err
}

// maxHeldReply bounds what Write holds back of one multi-line reply.
const maxHeldReply = 4096

// continuesReply reports whether b ends in a reply line that another
// follows ("250-PIPELINING\r\n"): three digits and a hyphen.
func continuesReply(b []byte) bool {
	if !bytes.HasSuffix(b, []byte("\r\n")) {
		return false
	}
	line := b[bytes.LastIndexByte(b[:len(b)-2], '\n')+1:]
	return len(line) >= 6 && isDigit(line[0]) && isDigit(line[1]) && isDigit(line[2]) && line[3] == '-'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// Deadlines are ours (see Read and Write); what go-smtp and crypto/tls set is
// ignored.
func (c *conn) SetDeadline(time.Time) error      { return nil }
func (c *conn) SetReadDeadline(time.Time) error  { return nil }
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// Close closes the socket once and releases the connection's slot.
func (c *conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	err := c.Conn.Close()
	c.srv.unregister(c)
	return err
}

// interrupt is shutdown's first phase for one connection: one waiting for a
// command is told 421 and closed now; one in a command or transaction is
// left to finish it (Read then ends it).
func (c *conn) interrupt() {
	c.mu.Lock()
	idle := c.inRead && !c.inTx
	c.mu.Unlock()
	if idle {
		c.abort()
	}
}

// abort sends 421 4.3.2 if a session's connection is known to write it on
// (after STARTTLS and before the next EHLO it is not: then just close), and
// closes the connection. No more input is taken from it.
func (c *conn) abort() {
	c.mu.Lock()
	if c.aborted || c.closed {
		c.mu.Unlock()
		return
	}
	c.aborted = true
	top := c.top
	c.mu.Unlock()
	if top != nil {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		r := replyShuttingDown
		_, _ = top.Write([]byte(formatReply(c.srv.cfg.Hostname, &r)))
	}
	c.Close()
}

// closeAfterReply makes the next write (the reply now being given) the last.
func (c *conn) closeAfterReply() {
	c.mu.Lock()
	c.closeAfterWrite = true
	c.mu.Unlock()
}

// countError counts a failed command and reports whether the connection is
// now over its limit.
func (c *conn) countError() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errors++
	return c.errors > c.srv.cfg.MaxErrors
}

func (c *conn) countAuthFailure() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.authFailures++
	return c.authFailures >= c.srv.cfg.MaxAuthFailures
}

func (c *conn) setTx(on bool) {
	c.mu.Lock()
	c.inTx = on
	c.mu.Unlock()
}

func (c *conn) setTop(top net.Conn) {
	c.mu.Lock()
	c.top = top
	c.mu.Unlock()
}

func formatReply(host string, r *Reply) string {
	return fmt.Sprintf("%d %d.%d.%d %s %s\r\n", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], host, r.Text)
}
