package imap

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
)

type connState uint8

const (
	stateNotAuth connState = iota
	stateAuth
	stateSelected
	stateLogout
)

// session is one client connection. Everything but ev is touched only by
// the session's own goroutine (and, for IDLE, one reader goroutine that
// hands over a line), so no lock is held while writing to the client.
type session struct {
	srv  *Server
	id   uint64
	raw  net.Conn // the accepted connection, for other goroutines to close
	conn net.Conn // raw, or the TLS connection over it
	br   *bufio.Reader
	bw   *bufio.Writer
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc

	isTLS    bool
	loopback bool
	state    connState
	user     storage.User
	ev       eventBox
	sel      *selected

	// enabled extensions (ENABLE, or implied by use)
	condstore bool
	utf8      bool
	rev2      bool

	// pending is the log index of this session's last write answered at
	// commit (a silent STORE); the next command that reads waits for it.
	// blind holds the UIDs (of the selected mailbox) those writes touched.
	pending uint64
	blind   map[uint32]bool

	readTimeout  time.Duration
	closeNow     bool // end the session after this command's response
	badInARow    int
	authFailures int
	searchRes    []uint32 // UIDs saved by SEARCH RETURN (SAVE), for "$"
	out          resp     // untagged responses waiting for the tagged one
	msgBuf       []byte   // reused for message bytes
	bodyBuf      []byte   // reused for message bytes in SEARCH (msgBuf holds headers)
}

func newSession(srv *Server, c net.Conn) *session {
	s := &session{srv: srv, id: srv.lastID.Add(1), raw: c, conn: c}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.ev.wake = make(chan struct{}, 1)
	s.log = srv.logger().With("proto", "imap", "session", s.id, "remote", c.RemoteAddr().String())
	if tcp, ok := c.RemoteAddr().(*net.TCPAddr); ok && tcp.IP.IsLoopback() {
		s.loopback = true
	}
	s.setConn(c)
	return s
}

func (s *session) setConn(c net.Conn) {
	s.conn = c
	s.br = bufio.NewReaderSize(&deadlineReader{s: s}, 16<<10)
	s.bw = bufio.NewWriterSize(&deadlineWriter{s: s}, 32<<10)
}

// deadlineReader sets the read deadline before each read, so that every
// wait for the client is bounded by the session's current timeout.
type deadlineReader struct{ s *session }

func (r *deadlineReader) Read(p []byte) (int, error) {
	s := r.s
	_ = s.conn.SetReadDeadline(time.Now().Add(s.readTimeout))
	if s.srv.closing.Load() {
		return 0, errShutdown
	}
	return s.conn.Read(p)
}

type deadlineWriter struct{ s *session }

func (w *deadlineWriter) Write(p []byte) (int, error) {
	s := w.s
	_ = s.conn.SetWriteDeadline(time.Now().Add(orDur(s.srv.WriteTimeout, DefaultWriteTimeout)))
	return s.conn.Write(p)
}

var errShutdown = errors.New("imap: server shutting down")

func (s *session) wakeForShutdown() { _ = s.raw.SetReadDeadline(time.Now()) }

func (s *session) run() {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic in IMAP session", "panic", v, "stack", string(stack()))
		}
		s.close()
	}()
	if tc, ok := s.conn.(*tls.Conn); ok {
		_ = tc.SetDeadline(time.Now().Add(orDur(s.srv.WriteTimeout, DefaultWriteTimeout)))
		if err := tc.HandshakeContext(s.ctx); err != nil {
			s.log.Debug("TLS handshake failed", "err", err)
			return
		}
		_ = tc.SetDeadline(time.Time{})
		s.isTLS = true
	}
	s.log.Debug("session started", "tls", s.isTLS)
	s.out.raw("* OK [CAPABILITY ").raw(s.capabilities()).raw("] Flotilla IMAP ready\r\n")
	if s.flushOut() != nil {
		return
	}
	for s.state != stateLogout {
		if s.srv.closing.Load() {
			s.bye("server shutting down")
			return
		}
		if err := s.serveOne(); err != nil {
			if errors.Is(err, errShutdown) || s.srv.closing.Load() {
				s.bye("server shutting down")
			} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
				s.bye("autologout: idle for too long")
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, errClose) {
				s.log.Debug("session ended", "err", err)
			}
			return
		}
	}
	_ = s.flushOut()
}

var errClose = errors.New("imap: closing session")

// maxDiscard is how much of a refused LITERAL+ the session reads and drops
// to stay in step with the client; a bigger one ends the session.
const maxDiscard = 1 << 20

func (s *session) close() {
	if s.user.ID != 0 {
		s.srv.hub.remove(s.user.ID, s)
	}
	s.stop()
	s.conn.Close()
}

func (s *session) bye(text string) {
	s.out.raw("* BYE ").raw(text).crlf()
	_ = s.flushOut()
}

// flushOut writes the pending responses and flushes.
func (s *session) flushOut() error {
	if len(s.out.b) > 0 {
		if _, err := s.bw.Write(s.out.b); err != nil {
			return err
		}
		s.out.reset()
		if cap(s.out.b) > 1<<20 {
			s.out.b = nil
		}
	}
	return s.bw.Flush()
}

// writeOut hands pending responses to the buffered writer without
// flushing; the session flushes when no command is waiting.
func (s *session) writeOut() error {
	if len(s.out.b) == 0 {
		return nil
	}
	_, err := s.bw.Write(s.out.b)
	s.out.reset()
	if cap(s.out.b) > 1<<20 {
		s.out.b = nil
	}
	return err
}

// serveOne reads and answers one command.
func (s *session) serveOne() error {
	if s.br.Buffered() == 0 {
		if err := s.flushOut(); err != nil {
			return err
		}
	}
	if s.state == stateNotAuth {
		s.readTimeout = orDur(s.srv.LoginTimeout, DefaultLoginTimeout)
	} else {
		s.readTimeout = orDur(s.srv.IdleTimeout, DefaultIdleTimeout)
	}
	raw, early, err := s.readCommand()
	if err != nil {
		return err
	}
	s.readTimeout = orDur(s.srv.LoginTimeout, DefaultLoginTimeout)
	if early != nil {
		// Refused before the whole command was read (a literal too big).
		s.tagged(early.tag, early.err)
		if early.closeAfter {
			s.bye("too much data")
			return errClose
		}
		return s.writeOut()
	}
	s.dispatch(raw)
	if s.badInARow >= orInt(s.srv.MaxBadCommands, DefaultMaxBadCommands) ||
		(s.state == stateNotAuth && s.badInARow >= 3) {
		s.bye("too many bad commands")
		return errClose
	}
	if s.closeNow {
		_ = s.flushOut()
		return errClose
	}
	return s.writeOut()
}

// early is a command refused while it was being read.
type early struct {
	tag        string
	err        error
	closeAfter bool
}

// readCommand reads one command: its lines and the literals between them,
// answering "+" for synchronising literals it accepts. raw is the command
// as it came, minus the final line end. Literals too big for the command
// are refused before the client sends them (synchronising) or read and
// dropped (LITERAL+, up to a bound, beyond which the session ends).
func (s *session) readCommand() (raw []byte, e *early, err error) {
	maxCmd := orInt(s.srv.MaxCommandSize, DefaultMaxCommandSize)
	var buf []byte
	appendDone := false
	msgLen := 0 // octets of APPEND's message literal, not counted against maxCmd
	for {
		line, tooLong, err := s.readLine(max(maxCmd-(len(buf)-msgLen), 0) + 2)
		if err != nil {
			return nil, nil, err
		}
		if tooLong {
			tag := tagOf(buf, line)
			if len(buf) > 0 && len(line) > 0 {
				tag = tagOf(buf, nil)
			}
			return nil, &early{tag: tag, err: bad("TOOBIG", "command line too long")}, nil
		}
		if len(buf) == 0 && len(bytes.TrimSpace(line)) == 0 {
			continue // empty line between commands: ignore
		}
		n, nonSync, isLit := trailingLiteral(line)
		buf = append(buf, line...)
		if !isLit {
			return trimEOL(buf), nil, nil
		}
		limit := int64(orInt(s.srv.MaxLiteralSize, DefaultMaxLiteralSize))
		var refuse error
		isMessage := false
		if !appendDone {
			if ok, err := s.appendLiteralCheck(buf, n); ok {
				isMessage, appendDone = true, true
				limit, refuse = s.srv.appendLimit(), err
			}
		}
		if refuse == nil && n > limit {
			refuse = no("TOOBIG", fmt.Sprintf("literal of %d octets is over the limit of %d", n, limit))
		}
		if refuse == nil && !isMessage && int64(len(buf)-msgLen)+n > int64(maxCmd) {
			refuse = no("TOOBIG", "command too long")
		}
		if refuse != nil {
			tag := tagOf(buf, nil)
			if !nonSync {
				return nil, &early{tag: tag, err: refuse}, nil
			}
			// LITERAL+: the data is on its way. Drop a little; past that,
			// end the session rather than read it all.
			if n > maxDiscard {
				return nil, &early{tag: tag, err: asBad(refuse), closeAfter: true}, nil
			}
			if err := s.discard(n); err != nil {
				return nil, nil, err
			}
			if err := s.discardLine(); err != nil {
				return nil, nil, err
			}
			return nil, &early{tag: tag, err: asBad(refuse)}, nil
		}
		if !nonSync {
			s.out.raw("+ Ready for literal data\r\n")
			if err := s.flushOut(); err != nil {
				return nil, nil, err
			}
		}
		start := len(buf)
		if isMessage {
			msgLen = int(n)
		}
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(s.br, buf[start:]); err != nil {
			return nil, nil, err
		}
	}
}

func asBad(err error) error {
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Status = "BAD"
		return &c
	}
	return err
}

// readLine reads through the next LF. A line longer than limit is read to
// its end (up to 1 MiB more) and reported as tooLong.
func (s *session) readLine(limit int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := s.br.ReadSlice('\n')
		if len(line)+len(chunk) > limit {
			tooLong = true
		}
		if !tooLong {
			line = append(line, chunk...)
		} else {
			if line != nil {
				// Keep the start, where the tag is, for the response.
				line = line[:min(len(line), 64):min(len(line), 64)]
			} else {
				line = chunk[:min(len(chunk), 64):min(len(chunk), 64)]
				line = append([]byte(nil), line...)
			}
			limit += len(chunk)
			if limit > 1<<20+DefaultMaxCommandSize*2 {
				return nil, true, errClose
			}
		}
		switch {
		case err == nil:
			return line, tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return nil, false, err
		}
	}
}

func (s *session) discard(n int64) error {
	_, err := io.CopyN(io.Discard, s.br, n)
	return err
}

func (s *session) discardLine() error {
	_, _, err := s.readLine(1 << 20)
	return err
}

// trailingLiteral finds "{n}" or "{n+}" at the end of a line.
func trailingLiteral(line []byte) (n int64, nonSync, ok bool) {
	l := trimEOL(line)
	if len(l) < 3 || l[len(l)-1] != '}' {
		return 0, false, false
	}
	open := bytes.LastIndexByte(l, '{')
	if open < 0 {
		return 0, false, false
	}
	num := l[open+1 : len(l)-1]
	if len(num) > 0 && num[len(num)-1] == '+' {
		nonSync = true
		num = num[:len(num)-1]
	}
	v, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil || v < 0 || len(num) == 0 || num[0] == '+' {
		return 0, false, false
	}
	return v, nonSync, true
}

func trimEOL(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// tagOf finds the tag of a command being read, for an early response.
func tagOf(buf, line []byte) string {
	b := buf
	if len(b) == 0 {
		b = line
	}
	end := bytes.IndexAny(b, " \r\n")
	if end < 0 {
		end = len(b)
	}
	t := string(b[:end])
	for i := 0; i < len(t); i++ {
		if !isAstringChar(t[i]) || t[i] == '+' {
			return "*"
		}
	}
	if t == "" {
		return "*"
	}
	return t
}

// tagged writes the tagged completion of a command: OK with code and text
// for a nil error, else the mapped NO or BAD.
func (s *session) tagged(tag string, err error) {
	if err == nil {
		s.badInARow = 0
		return
	}
	e, logIt := respFor(err)
	if logIt {
		s.log.Warn("IMAP command failed", "err", err)
	}
	if e.Status == "BAD" {
		s.badInARow++
	} else {
		s.badInARow = 0
	}
	s.out.raw(tag).sp().raw(e.Status).sp()
	if e.Code != "" {
		s.out.byte('[').raw(e.Code).raw("] ")
	}
	s.out.raw(cleanText(e.Text)).crlf()
}

func (s *session) okTagged(tag, code, text string) {
	s.badInARow = 0
	s.out.raw(tag).raw(" OK ")
	if code != "" {
		s.out.byte('[').raw(code).raw("] ")
	}
	s.out.raw(text).crlf()
}

// capabilities lists what the session offers in its current state.
func (s *session) capabilities() string {
	caps := []string{"IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE"}
	tlsOK := s.isTLS || s.loopback || s.srv.AllowInsecureAuth
	if s.state == stateNotAuth {
		if !s.isTLS && s.srv.TLSConfig != nil {
			caps = append(caps, "STARTTLS")
		}
		if !tlsOK {
			caps = append(caps, "LOGINDISABLED")
		}
		for _, m := range s.srv.Mechanisms.Names(tlsOK) {
			caps = append(caps, "AUTH="+m)
		}
		return strings.Join(caps, " ")
	}
	caps = append(caps, "NAMESPACE", "UNSELECT", "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE",
		"LIST-EXTENDED", "LIST-STATUS", "ESEARCH", "SEARCHRES", "STATUS=SIZE", "BINARY",
		"CONDSTORE", "QUOTA", "QUOTA=RES-STORAGE", "UTF8=ACCEPT",
		"APPENDLIMIT="+strconv.FormatInt(s.srv.appendLimit(), 10))
	return strings.Join(caps, " ")
}
