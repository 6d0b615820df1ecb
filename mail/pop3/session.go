package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"
)

type state int

const (
	stateAuthorization state = iota
	stateTransaction
)

// Errors that end a session; end writes the matching last words.
var (
	errQuit           = errors.New("client quit")
	errClose          = errors.New("closing after reply")
	errIdle           = errors.New("idle timeout")
	errShuttingDown   = errors.New("server shutting down")
	errLineTooLong    = errors.New("line too long")
	errLineRunsOn     = errors.New("line too long, no end in sight")
	errTooManyErrors  = errors.New("too many errors")
	errTooManyFailure = errors.New("too many authentication failures")
)

// maxDiscard is how far past its limit an over-long line is read and
// thrown away before the session gives up on it.
const maxDiscard = 64 << 10

// bufferSize of the reader and writer of a connection.
const bufferSize = 4096

// messageBufferSize is the line buffer for RETR and TOP; longer lines are
// copied in pieces.
const messageBufferSize = 32 << 10

// longAgo is a deadline in the past: it makes a blocked Read return.
var longAgo = time.Unix(1, 0)

type session struct {
	srv    *Server
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger
	raw    net.Conn // the accepted connection, under any TLS

	mu   sync.Mutex // guards conn, for interrupt
	conn net.Conn   // raw, or TLS over raw
	r    *bufio.Reader
	w    *bufio.Writer
	info ConnInfo
	line []byte // line buffer of readLine

	banner string // APOP timestamp, empty without APOP

	state   state
	user    string // from USER, waiting for PASS
	drop    Maildrop
	msgs    []Message
	deleted []bool
	live    int   // messages not marked deleted
	liveSz  int64 // their size

	failed       bool // the last reply was -ERR
	errors       int  // -ERR replies in a row
	authFailures int
}

func newSession(ctx context.Context, srv *Server, c net.Conn) *session {
	s := &session{srv: srv, raw: c, conn: c}
	if tc, ok := c.(*tls.Conn); ok {
		s.raw = tc.NetConn() // closing it sends no close_notify, never blocks
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	context.AfterFunc(s.ctx, func() { s.raw.Close() })
	id := srv.lastID.Add(1)
	s.log = srv.logger().With("session", id, "remote", c.RemoteAddr().String())
	s.r = bufio.NewReaderSize(c, bufferSize)
	s.w = bufio.NewWriterSize(deadlineWriter{c, srv.writeTimeout()}, bufferSize)
	s.info = ConnInfo{Remote: c.RemoteAddr(), Local: c.LocalAddr()}
	s.info.PasswordOK = srv.AllowInsecureAuth || (!srv.noLoopbackExemption && isLocal(c.RemoteAddr()))
	return s
}

// deadlineWriter sets the write deadline before each write, so a client
// that stops reading cannot hold a session forever.
type deadlineWriter struct {
	c       net.Conn
	timeout time.Duration
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	d.c.SetWriteDeadline(time.Now().Add(d.timeout))
	return d.c.Write(p)
}

func isLocal(a net.Addr) bool {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return false
}

// interrupt makes a session blocked reading a command notice Shutdown.
// It only sets a deadline; it never writes.
func (s *session) interrupt() {
	s.mu.Lock()
	s.conn.SetReadDeadline(longAgo)
	s.mu.Unlock()
}

func (s *session) serve() {
	defer s.finish()
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("pop3: session panicked", "panic", v, "stack", string(debug.Stack()))
		}
	}()

	if tc, ok := s.conn.(*tls.Conn); ok {
		if err := s.handshake(tc); err != nil {
			s.log.Info("pop3: TLS handshake failed", "err", err)
			return
		}
	}
	if _, ok := s.srv.Backend.(APOPBackend); ok {
		s.banner = makeBanner(s.srv.hostname())
		s.ok("POP3 server ready " + s.banner)
	} else {
		s.ok("POP3 server ready")
	}

	for {
		line, err := s.readLine(max(s.srv.maxLine(), s.srv.maxSASLLine()))
		if err == nil {
			err = s.dispatch(line)
		} else if errors.Is(err, errLineTooLong) {
			s.fail("", "line too long")
			err = nil
		}
		if err == nil {
			err = s.count()
		}
		if err != nil {
			s.end(err)
			return
		}
	}
}

// count updates the error counters after a reply and says whether the
// session must end.
func (s *session) count() error {
	if !s.failed {
		s.errors = 0
		return nil
	}
	s.errors++
	if s.errors >= s.srv.maxErrors() {
		return errTooManyErrors
	}
	if s.authFailures >= s.srv.maxAuthFailures() {
		return errTooManyFailure
	}
	return nil
}

// end writes the last words for err, if any, and flushes.
func (s *session) end(err error) {
	switch {
	case errors.Is(err, errIdle):
		s.writeLine("-ERR autologout: idle for too long")
	case errors.Is(err, errShuttingDown):
		s.writeLine("-ERR [SYS/TEMP] server shutting down")
	case errors.Is(err, errLineRunsOn):
		s.writeLine("-ERR line too long")
	case errors.Is(err, errTooManyErrors):
		s.writeLine("-ERR too many errors, closing connection")
	case errors.Is(err, errTooManyFailure):
		s.writeLine("-ERR [AUTH] too many authentication failures, closing connection")
	case errors.Is(err, errQuit), errors.Is(err, errClose):
	default:
		// The connection is gone or broken: write nothing.
		s.log.Debug("pop3: connection ended", "err", err)
		return
	}
	s.log.Debug("pop3: closing session", "reason", err)
	s.w.Flush()
}

// finish runs when the session ends, however it ends. A maildrop still
// open here belongs to a session that did not QUIT: it is closed without
// deleting anything.
func (s *session) finish() {
	if s.drop != nil {
		if err := s.drop.Close(); err != nil {
			s.log.Error("pop3: closing maildrop", "err", err)
		}
		s.drop = nil
	}
	s.raw.Close()
	s.cancel()
}

func (s *session) handshake(tc *tls.Conn) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.srv.writeTimeout())
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	st := tc.ConnectionState()
	s.info.TLS = &st
	s.info.PasswordOK = true
	return nil
}

func makeBanner(host string) string {
	var b [12]byte
	rand.Read(b[:])
	return "<" + hex.EncodeToString(b[:]) + "@" + sanitize(host) + ">"
}

// lineBuffered reports whether a whole line waits in the read buffer.
func (s *session) lineBuffered() bool {
	n := s.r.Buffered()
	if n == 0 {
		return false
	}
	b, _ := s.r.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// readLine reads one line of at most limit octets, line ending included,
// and returns it without the ending (LF or CRLF). Output is flushed first
// unless a whole line is already buffered: that is PIPELINING. The line is
// valid until the next call.
func (s *session) readLine(limit int) ([]byte, error) {
	if !s.lineBuffered() {
		if err := s.w.Flush(); err != nil {
			return nil, err
		}
	}
	// Set the deadline, then look at the closing flag, under mu: either
	// Shutdown's interrupt comes after the deadline and the read fails, or
	// the flag is seen here.
	s.mu.Lock()
	s.conn.SetReadDeadline(time.Now().Add(s.srv.idleTimeout()))
	closing := s.srv.closing.Load()
	s.mu.Unlock()
	if closing {
		return nil, errShuttingDown
	}

	s.line = s.line[:0]
	tooLong := false
	discarded := 0
	for {
		chunk, err := s.r.ReadSlice('\n')
		if !tooLong && len(s.line)+len(chunk) > limit {
			tooLong = true
			discarded = len(s.line)
			s.line = s.line[:0]
		}
		if tooLong {
			discarded += len(chunk)
			if discarded > limit+maxDiscard {
				return nil, errLineRunsOn
			}
		} else {
			s.line = append(s.line, chunk...)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			if s.srv.closing.Load() {
				return nil, errShuttingDown
			}
			return nil, errIdle
		}
		return nil, err
	}
	if tooLong {
		return nil, errLineTooLong
	}
	line := s.line[:len(s.line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// writeLine writes a line; errors stick in s.w and surface on Flush.
func (s *session) writeLine(line string) {
	s.w.WriteString(line)
	s.w.WriteString("\r\n")
}

func (s *session) ok(text string) {
	s.failed = false
	if text == "" {
		s.writeLine("+OK")
	} else {
		s.writeLine("+OK " + text)
	}
}

// fail writes an -ERR reply with an optional response code.
func (s *session) fail(code, text string) {
	s.failed = true
	var b strings.Builder
	b.WriteString("-ERR ")
	if code != "" {
		b.WriteString("[" + sanitize(code) + "] ")
	}
	b.WriteString(sanitize(text))
	s.writeLine(b.String())
}

// failErr writes the -ERR reply err maps to (see replyFor).
func (s *session) failErr(err error, fallback string) {
	code, text, logIt := replyFor(err, fallback)
	if logIt {
		s.log.Error("pop3: backend error", "err", err)
	}
	s.fail(code, text)
}

// sanitize keeps a reply on one line.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
