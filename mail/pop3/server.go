package pop3

import (
	"context"
	"crypto/tls"
	"errors"
	"github.com/flotilla-mail/flotilla/cluster/listen"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero values of the Server limits.
const (
	DefaultMaxLineLength     = 255 // RFC 2449 section 4, CRLF included
	DefaultMaxSASLLineLength = 16 << 10
	DefaultIdleTimeout       = 10 * time.Minute // RFC 1939 section 3: at least 10 minutes
	DefaultWriteTimeout      = time.Minute
	DefaultMaxErrors         = 10
	DefaultMaxAuthFailures   = 3
	// Sessions at once, in all and from one IP address; beyond them a
	// client gets "-ERR [SYS/TEMP]".
	DefaultMaxConnections      = 2000
	DefaultMaxConnectionsPerIP = 200
)

// Server is a POP3 server. Set its fields before the first Serve and do not
// change them afterwards. One Server may Serve several listeners, e.g. port
// 110 and, wrapped with tls.NewListener, port 995.
type Server struct {
	// Backend authenticates users and opens maildrops. Required. APOP is
	// offered when it also implements APOPBackend.
	Backend Backend

	// TLSConfig enables STLS (RFC 2595) on cleartext connections; nil
	// offers no STLS. For implicit TLS (port 995) wrap the listener with
	// tls.NewListener instead: Serve finds the *tls.Conn, runs the
	// handshake under WriteTimeout and does not offer STLS on it.
	TLSConfig *tls.Config

	// Hostname goes into the APOP timestamp of the greeting; empty means
	// os.Hostname.
	Hostname string

	// Logger receives one logger per session; nil discards. Passwords and
	// SASL data are never logged.
	Logger *slog.Logger

	// SASL returns the SASL mechanisms offered on a connection (RFC 5034),
	// keyed by name, matched case-insensitively; each call of a value
	// starts one exchange. It is called for each CAPA and AUTH, so the
	// offer may depend on c: PLAIN only when c.PasswordOK, EXTERNAL only
	// with a client certificate. ctx is the session's context, valid until
	// the session ends. nil offers no AUTH mechanisms.
	SASL func(ctx context.Context, c ConnInfo) map[string]func() SASLServer

	// AllowInsecureAuth lets USER/PASS through on cleartext connections
	// from other hosts. Without it, USER is refused with "-ERR [AUTH]"
	// (and not advertised by CAPA) until STLS, except on loopback and Unix
	// socket connections.
	AllowInsecureAuth bool

	// Expire is the argument of the EXPIRE capability (RFC 2449 section
	// 6.7); empty means "NEVER". Set it, e.g. to "30", if the store
	// removes messages clients have not deleted.
	Expire string

	// MaxLineLength limits command lines, CRLF included; 0 means
	// DefaultMaxLineLength. AUTH lines and SASL responses are limited by
	// MaxSASLLineLength instead (0: DefaultMaxSASLLineLength), as RFC 5034
	// wants room for any response a mechanism needs. An over-long line is
	// discarded and answered "-ERR line too long"; the session goes on,
	// unless the line runs on past 64 KiB more, then it is closed.
	MaxLineLength     int
	MaxSASLLineLength int

	// IdleTimeout bounds the wait for each line from the client
	// (0: DefaultIdleTimeout); the session then ends without UPDATE.
	// WriteTimeout bounds each write to the client and the TLS handshake
	// (0: DefaultWriteTimeout).
	IdleTimeout  time.Duration
	WriteTimeout time.Duration

	// MaxErrors closes a session after that many -ERR replies in a row
	// (0: DefaultMaxErrors). MaxAuthFailures closes it after that many
	// failed authentication attempts in all (0: DefaultMaxAuthFailures).
	MaxErrors       int
	MaxAuthFailures int

	// MaxConnections and MaxConnectionsPerIP cap the sessions of all of
	// Serve's listeners together (0: DefaultMaxConnections,
	// DefaultMaxConnectionsPerIP).
	MaxConnections      int
	MaxConnectionsPerIP int

	// noLoopbackExemption makes loopback connections count as insecure;
	// for tests of the cleartext policy.
	noLoopbackExemption bool

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup // sessions; Add only under mu while !closing
	closing   atomic.Bool
	lastID    atomic.Uint64
	hostOnce  sync.Once
	host      string
	limits    *listen.Limits // made by addListener
}

// Serve accepts connections on l and runs a session for each. It returns
// ErrServerClosed after Shutdown, ctx.Err() when ctx is done, or the
// listener's error when it is closed otherwise. Other accept errors (EMFILE
// among them) are retried with a delay (cluster/listen). Cancelling ctx is
// the hard stop: it closes l and every session started by this Serve,
// without UPDATE; Shutdown is the graceful one. Sessions outlive Serve's
// return; Shutdown waits for them.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.Backend == nil {
		return errors.New("pop3: Server.Backend is nil")
	}
	if !s.addListener(l) {
		l.Close()
		return ErrServerClosed
	}
	defer s.removeListener(l)
	err := listen.Accept(ctx, l, s.closing.Load, s.logger().With("server", "pop3"), func(c net.Conn) bool {
		return s.startSession(ctx, c)
	})
	if errors.Is(err, listen.ErrClosing) {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops the server gracefully: it closes the listeners, tells each
// session waiting for a command "server shutting down" (SYS/TEMP) and
// closes it (a session busy with a command finishes that command first),
// and waits for all sessions to end. None of them enters UPDATE, so nothing
// is deleted for a session that did not QUIT. When ctx is done first, the
// remaining connections are closed at once and ctx.Err() is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	ls := make([]net.Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	for _, sess := range s.sessionList() {
		sess.interrupt()
	}

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, sess := range s.sessionList() {
			sess.cancel()
		}
		return ctx.Err()
	}
}

func (s *Server) addListener(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
		s.limits = &listen.Limits{Max: orDefault(s.MaxConnections, DefaultMaxConnections),
			PerIP: orDefault(s.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)}
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) removeListener(l net.Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		list = append(list, sess)
	}
	return list
}

// startSession registers and starts a session for c, unless the server is
// shutting down.
func (s *Server) startSession(ctx context.Context, c net.Conn) bool {
	release, refused := s.limits.Admit(c.RemoteAddr())
	if refused != "" {
		s.refuse(c, refused)
		return true
	}
	sess := newSession(ctx, s, c)
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		sess.cancel()
		release()
		return false
	}
	if s.sessions == nil {
		s.sessions = make(map[*session]struct{})
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
		}()
		defer release()
		sess.serve()
	}()
	return true
}

// refuse turns a client away over the connection limits with
// "-ERR [SYS/TEMP]" (RFC 3206) in clear text; under implicit TLS the
// connection is only closed, so that refused clients cost no handshake.
func (s *Server) refuse(c net.Conn, why string) {
	s.logger().Warn("pop3: connection refused", "remote", c.RemoteAddr().String(), "reason", why)
	listen.Refuse(c, "-ERR [SYS/TEMP] Too many connections, try again later\r\n")
}

// serveConn runs one session on c in the calling goroutine, outside the
// server's bookkeeping; for fuzzing.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	newSession(ctx, s, c).serve()
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) hostname() string {
	s.hostOnce.Do(func() {
		s.host = s.Hostname
		if s.host == "" {
			s.host, _ = os.Hostname()
		}
		if s.host == "" {
			s.host = "localhost"
		}
	})
	return s.host
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func (s *Server) maxLine() int     { return orDefault(s.MaxLineLength, DefaultMaxLineLength) }
func (s *Server) maxSASLLine() int { return orDefault(s.MaxSASLLineLength, DefaultMaxSASLLineLength) }
func (s *Server) idleTimeout() time.Duration {
	return orDefault(s.IdleTimeout, DefaultIdleTimeout)
}
func (s *Server) writeTimeout() time.Duration {
	return orDefault(s.WriteTimeout, DefaultWriteTimeout)
}
func (s *Server) maxErrors() int       { return orDefault(s.MaxErrors, DefaultMaxErrors) }
func (s *Server) maxAuthFailures() int { return orDefault(s.MaxAuthFailures, DefaultMaxAuthFailures) }
