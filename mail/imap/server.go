package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/cluster/listen"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

// Cluster is what the server needs of a node: the local store for reads,
// Propose for writes (which returns once this node has applied the write),
// and ProposeCommitted with WaitApplied for writes whose answer needs no
// state (it returns at commit; the session waits for the apply before it
// next reads). *cluster.Node implements it.
type Cluster interface {
	Store() *storage.Store
	Propose(ctx context.Context, c command.Command) (command.Response, uint64, error)
	ProposeCommitted(ctx context.Context, c command.Command) (uint64, error)
	WaitApplied(ctx context.Context, index uint64) error
}

// Defaults for the zero values of the Server's limits.
const (
	DefaultMaxCommandSize = 64 << 10 // a command line with its small literals
	DefaultMaxLiteralSize = 64 << 10 // one literal outside APPEND
	DefaultAppendLimit    = 64 << 20 // one message (APPENDLIMIT)
	DefaultIdleTimeout    = 30 * time.Minute
	DefaultLoginTimeout   = time.Minute
	DefaultWriteTimeout   = time.Minute
	DefaultMaxBadCommands = 10
	// Connections at once, in all and from one IP address; beyond them a
	// client gets BYE [UNAVAILABLE].
	DefaultMaxConnections      = 2000
	DefaultMaxConnectionsPerIP = 200
)

// Server is an IMAP4rev1 server (RFC 3501) with the extensions listed in
// doc.go, on one node of the cluster. Set its fields before the first Serve
// and do not change them afterwards.
type Server struct {
	// Cluster is the node: reads from its store, writes through Propose.
	Cluster Cluster
	// Mechanisms runs LOGIN (as PLAIN) and AUTHENTICATE; its Lookup must be
	// set (see Lookup).
	Mechanisms *auth.Mechanisms
	// TLSConfig enables STARTTLS; for implicit TLS (993) wrap the listener
	// with tls.NewListener.
	TLSConfig *tls.Config
	// Logger receives one logger per session; nil discards.
	Logger *slog.Logger
	// AllowInsecureAuth permits LOGIN and PLAIN on cleartext connections
	// from other hosts (loopback is always allowed).
	AllowInsecureAuth bool
	// Version is reported by ID.
	Version string

	MaxCommandSize int   // octets of a command outside APPEND's message
	MaxLiteralSize int   // octets of one literal outside APPEND
	AppendLimit    int64 // octets of one APPENDed message (APPENDLIMIT)
	IdleTimeout    time.Duration
	LoginTimeout   time.Duration
	WriteTimeout   time.Duration
	MaxBadCommands int // BAD responses in a row before the session is closed
	// DiskLow reports that the node's disk is nearly full (see
	// cluster.DiskGuard); APPEND is then refused with NO [UNAVAILABLE].
	// nil checks nothing.
	DiskLow func() bool
	// MaxConnections and MaxConnectionsPerIP cap the sessions of all of
	// Serve's listeners together (0: the defaults).
	MaxConnections      int
	MaxConnectionsPerIP int

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	wg        sync.WaitGroup
	closing   atomic.Bool
	done      chan struct{}
	hubOnce   sync.Once
	hub       *hub
	headers   *headerCache
	lastID    atomic.Uint64
	limits    *listen.Limits
}

// refuse turns a client away over the connection limits: BYE [UNAVAILABLE]
// (RFC 5530) in clear text; under implicit TLS the connection is only
// closed, so that refused clients cost no handshake.
func (s *Server) refuse(c net.Conn, why string) {
	s.logger().Warn("imap: connection refused", "remote", c.RemoteAddr().String(), "reason", why)
	listen.Refuse(c, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n")
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("imap: server closed")

func (s *Server) init() {
	s.hubOnce.Do(func() {
		s.done = make(chan struct{})
		s.listeners = map[net.Listener]struct{}{}
		s.sessions = map[*session]struct{}{}
		s.hub = newHub()
		s.headers = newHeaderCache(defaultHeaderCache)
		s.limits = &listen.Limits{Max: orInt(s.MaxConnections, DefaultMaxConnections),
			PerIP: orInt(s.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)}
		s.Cluster.Store().Observe(s.hub.publish)
	})
}

func (s *Server) diskLow() bool { return s.DiskLow != nil && s.DiskLow() }

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func orInt(v, d int) int {
	if v > 0 {
		return v
	}
	return d
}

func orDur(v, d time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return d
}

func (s *Server) appendLimit() int64 {
	if s.AppendLimit > 0 {
		return s.AppendLimit
	}
	return DefaultAppendLimit
}

// Serve accepts connections on l and runs a session for each, until
// Shutdown or ctx ends (which closes every session at once). A listener from
// tls.NewListener gives implicit TLS.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	if s.Cluster == nil || s.Mechanisms == nil {
		return errors.New("imap: Server.Cluster and Server.Mechanisms are required")
	}
	s.init()
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	err := listen.Accept(ctx, l, s.closing.Load, s.logger().With("server", "imap"), func(c net.Conn) bool {
		release, refused := s.limits.Admit(c.RemoteAddr())
		if refused != "" {
			s.refuse(c, refused)
			return true
		}
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			release()
			return false
		}
		sess := newSession(s, c)
		s.sessions[sess] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			stop := context.AfterFunc(ctx, func() { sess.raw.Close() })
			defer stop()
			sess.run()
			release()
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
		}()
		return true
	})
	if errors.Is(err, listen.ErrClosing) {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting, tells every session BYE at its next command
// boundary (at once for sessions waiting for a command or in IDLE), and
// waits for them until ctx ends; then it closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.Cluster == nil {
		return nil
	}
	s.init()
	s.mu.Lock()
	if s.closing.CompareAndSwap(false, true) {
		close(s.done)
	}
	for l := range s.listeners {
		l.Close()
	}
	for sess := range s.sessions {
		sess.wakeForShutdown()
	}
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for sess := range s.sessions {
		sess.raw.Close()
	}
	s.mu.Unlock()
	<-finished
	return ctx.Err()
}

// Lookup returns an auth.Lookup that reads a user's secrets from the store.
// Disabled accounts are unknown users.
func Lookup(st *storage.Store) auth.Lookup {
	return func(ctx context.Context, username string) (auth.Secrets, error) {
		var u storage.User
		err := st.View(func(tx *storage.Tx) error {
			var err error
			u, err = tx.User(username)
			return err
		})
		switch {
		case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrInvalid):
			return auth.Secrets{}, auth.ErrUnknownUser
		case err != nil:
			return auth.Secrets{}, err
		case u.Disabled:
			return auth.Secrets{}, auth.ErrUnknownUser
		}
		return auth.Secrets(u.Secrets), nil
	}
}

// sessionCount is the number of open sessions.
func (s *Server) sessionCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// waitApplied waits until the local store has applied log index idx.
//
// cluster.Node.Propose is meant to return only then, but on a follower it
// may return a little early: raft reports an index as applied once it has
// handed it to the FSM, before the FSM has written it (see the report on
// cluster/fsm.go wait). Reading the store's own applied index closes that
// gap, so a session always reads its own writes.
func (s *Server) waitApplied(ctx context.Context, idx uint64) error {
	st := s.Cluster.Store()
	for i := 0; ; i++ {
		next := s.hub.committed()
		applied, err := st.Applied()
		if err != nil {
			return err
		}
		if applied >= idx {
			return nil
		}
		// Commits without events publish nothing: poll too, backing off.
		t := time.NewTimer(time.Millisecond << min(i, 4))
		select {
		case <-next:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		t.Stop()
	}
}
