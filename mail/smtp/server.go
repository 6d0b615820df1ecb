package smtp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/cluster/listen"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
	"github.com/flotilla-mail/flotilla/storage"
)

// Kind is what a listener is for.
type Kind int

const (
	// MX receives mail for the cluster's domains from other servers (port
	// 25). STARTTLS is offered; AUTH only after it (or on loopback), and
	// an authenticated user may relay as the policy allows.
	MX Kind = iota
	// Submission takes mail from the cluster's users (port 587, RFC 6409):
	// STARTTLS, and AUTH before MAIL.
	Submission
	// SubmissionTLS is Submission on implicit TLS (port 465, RFC 8314).
	SubmissionTLS
)

func (k Kind) String() string {
	switch k {
	case MX:
		return "mx"
	case Submission:
		return "submission"
	case SubmissionTLS:
		return "submissions"
	}
	return fmt.Sprintf("kind%d", int(k))
}

func (k Kind) submission() bool { return k == Submission || k == SubmissionTLS }

// Backend is what the server needs of a cluster node; *cluster.Node is one.
type Backend interface {
	// ProposeCommitted replicates a command and returns once it is
	// committed: stored on a majority of nodes. That is what a 250 means.
	ProposeCommitted(ctx context.Context, c command.Command) (uint64, error)
	// WaitApplied waits until this node has applied an index: a session
	// reads its own earlier messages (quota) before the next transaction.
	WaitApplied(ctx context.Context, index uint64) error
	// Store is this node's copy of the state, for reads.
	Store() *storage.Store
}

// Defaults for the zero values of Config.
const (
	DefaultMaxMessageBytes     = 32 << 20
	DefaultMaxRecipients       = 100
	DefaultMaxLineLength       = 2000 // twice RFC 5321's 1000, as go-smtp does
	DefaultReadTimeout         = 5 * time.Minute
	DefaultWriteTimeout        = time.Minute
	DefaultMaxSessionTime      = 30 * time.Minute
	DefaultMaxErrors           = 10
	DefaultMaxAuthFailures     = 3
	DefaultMaxConnections      = 2000
	DefaultMaxConnectionsPerIP = 200
	DefaultMaxHops             = 50 // Received headers, as Postfix's hopcount_limit
)

// Config sets up a Server. Zero limits take the defaults above.
type Config struct {
	Backend Backend
	// Hostname is the server's name in the greeting and trace headers.
	Hostname string
	// TLSConfig serves STARTTLS and implicit TLS; nil offers neither (and
	// SubmissionTLS cannot be served).
	TLSConfig *tls.Config
	Logger    *slog.Logger

	// AllowCRAMMD5 offers CRAM-MD5; it works only for accounts whose
	// secrets were derived with auth.Params.CRAMMD5.
	AllowCRAMMD5 bool
	// AllowInsecureAuth offers AUTH on cleartext connections from any
	// address, not only over TLS or from loopback.
	AllowInsecureAuth bool
	// AuthParams is the cost accounts are derived with, so that unknown
	// users cost as much as known ones (auth.Mechanisms.DecoyParams).
	AuthParams auth.Params
	// Resolver resolves the host names of trusted relay clients; nil is the
	// system resolver.
	Resolver relay.Resolver

	MaxMessageBytes int64
	MaxRecipients   int
	MaxLineLength   int
	// ReadTimeout bounds each wait for client input (a command, a piece of
	// DATA); WriteTimeout each write; MaxSessionTime a whole connection.
	ReadTimeout    time.Duration
	WriteTimeout   time.Duration
	MaxSessionTime time.Duration
	// MaxErrors closes a connection after that many refused commands;
	// MaxAuthFailures after that many failed AUTH attempts.
	MaxErrors       int
	MaxAuthFailures int
	// MaxConnections and MaxConnectionsPerIP refuse connections beyond
	// them with 421.
	MaxConnections      int
	MaxConnectionsPerIP int
	// MaxHops refuses a message with more Received headers (a loop).
	MaxHops int
	// DiskLow reports that the node's disk is nearly full (see
	// cluster.DiskGuard); MAIL is then answered 452 4.3.1. nil checks
	// nothing.
	DiskLow func() bool

	// noLoopbackExemption treats loopback like any other network: no AUTH
	// before TLS. For tests of that policy.
	noLoopbackExemption bool
}

func (c *Config) setDefaults() error {
	if c.Backend == nil {
		return errors.New("smtp: Config.Backend is nil")
	}
	if c.Hostname == "" {
		c.Hostname, _ = os.Hostname()
		if c.Hostname == "" {
			c.Hostname = "localhost"
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.MaxMessageBytes <= 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	def(&c.MaxRecipients, DefaultMaxRecipients)
	def(&c.MaxLineLength, DefaultMaxLineLength)
	def(&c.MaxErrors, DefaultMaxErrors)
	def(&c.MaxAuthFailures, DefaultMaxAuthFailures)
	def(&c.MaxConnections, DefaultMaxConnections)
	def(&c.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)
	def(&c.MaxHops, DefaultMaxHops)
	defDur(&c.ReadTimeout, DefaultReadTimeout)
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	defDur(&c.MaxSessionTime, DefaultMaxSessionTime)
	return nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("smtp: server closed")

// Server serves SMTP on any number of listeners of the three kinds.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ctx     context.Context // cancelled at the hard stop: abandons writes
	cancel  context.CancelFunc
	closing atomic.Bool
	lastID  atomic.Uint64
	checker relay.Checker
	mechs   atomic.Pointer[auth.Mechanisms]

	relayMu  sync.Mutex
	relayRaw []byte
	relaySet relay.Settings
	relayOK  bool

	mu        sync.Mutex
	listeners []net.Listener
	conns     map[*conn]struct{}
	limits    *listen.Limits
	connWG    sync.WaitGroup
}

// New makes a server; Serve starts listeners.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel,
		checker: relay.Checker{Resolver: cfg.Resolver},
		conns:   map[*conn]struct{}{}, limits: &listen.Limits{Max: cfg.MaxConnections, PerIP: cfg.MaxConnectionsPerIP},
	}, nil
}

// Serve accepts connections of the given kind on l until Shutdown (then it
// returns ErrServerClosed) or until l fails.
func (s *Server) Serve(l net.Listener, kind Kind) error {
	gs := gosmtp.NewServer(&backend{srv: s, kind: kind})
	gs.Domain = s.cfg.Hostname
	gs.MaxRecipients = s.cfg.MaxRecipients
	gs.MaxMessageBytes = s.cfg.MaxMessageBytes
	gs.MaxLineLength = s.cfg.MaxLineLength
	gs.AllowInsecureAuth = true // the session decides, per connection (see authAllowed)
	gs.EnableSMTPUTF8 = true
	gs.EnableDSN = true
	gs.ErrorLog = errorLog{s.log}
	ln := &listener{Listener: l, srv: s, kind: kind}
	if kind == SubmissionTLS {
		if s.cfg.TLSConfig == nil {
			l.Close()
			return errors.New("smtp: implicit TLS needs Config.TLSConfig")
		}
		ln.tls = s.cfg.TLSConfig
	} else {
		gs.TLSConfig = s.cfg.TLSConfig
	}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	s.log.Info("smtp listening", "kind", kind.String(), "addr", l.Addr().String())
	err := gs.Serve(ln)
	if s.closing.Load() {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops the server in two phases. First it stops accepting, tells
// every session waiting for a command 421 4.3.2 and closes it; sessions in
// a mail transaction (from MAIL on) finish it, then get the same. When ctx
// ends before every session has, the rest are cut off: their connections
// closed and their pending writes abandoned (nothing half-stored: a
// Deliver is atomic), and ctx.Err() is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	listeners := append([]net.Listener(nil), s.listeners...)
	s.mu.Unlock()
	for _, l := range listeners {
		l.Close() // Serve returns
	}
	for _, c := range s.connList() {
		go c.interrupt()
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
	}
	s.cancel()
	for _, c := range s.connList() {
		c.Close()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.log.Warn("smtp: sessions still running after the hard stop")
	}
	return ctx.Err()
}

func (s *Server) connList() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// register admits a new connection, or refuses it (421 where it can) when
// the server is closing or over its connection limits.
func (s *Server) register(raw net.Conn, kind Kind) (*conn, bool) {
	now := time.Now()
	c := &conn{Conn: raw, srv: s, id: s.lastID.Add(1), kind: kind, ip: listen.IP(raw.RemoteAddr()),
		started: now, deadline: now.Add(s.cfg.MaxSessionTime)}
	s.mu.Lock()
	why := ""
	if s.closing.Load() {
		why = "closing"
	} else {
		c.release, why = s.limits.Admit(raw.RemoteAddr())
	}
	if why == "" {
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		if kind != SubmissionTLS {
			c.top = c
		}
	}
	s.mu.Unlock()
	if why != "" {
		s.log.Warn("smtp: connection refused", "remote", raw.RemoteAddr().String(), "reason", why)
		r := reply(421, 4, 7, 0, "Too many connections, try again later")
		line := formatReply(s.cfg.Hostname, &r)
		if kind == SubmissionTLS { // TLS comes after this layer: no handshake for a refusal
			line = ""
		}
		listen.Refuse(raw, line)
		return nil, false
	}
	return c, true
}

func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	if _, ok := s.conns[c]; ok {
		delete(s.conns, c)
		c.release()
		s.connWG.Done()
	}
	s.mu.Unlock()
}

func (s *Server) store() *storage.Store { return s.cfg.Backend.Store() }

// relaySettings returns the cluster's relay policy as of tx, parsing the
// stored value only when it changed. A value that cannot be parsed (from a
// newer build, say) counts as the default, which is never an open relay.
func (s *Server) relaySettings(tx *storage.Tx) relay.Settings {
	raw := tx.Setting(relay.SettingKey)
	s.relayMu.Lock()
	defer s.relayMu.Unlock()
	if s.relayOK && bytes.Equal(raw, s.relayRaw) {
		return s.relaySet
	}
	set, err := relay.Parse(raw)
	if err != nil {
		s.log.Error("smtp: relay settings unreadable; using the default (authenticated users only)", "err", err)
	}
	s.relayRaw, s.relaySet, s.relayOK = raw, set, true
	return set
}

// mechanisms returns the SASL mechanisms. Unknown users get decoy SCRAM
// salts keyed by the cluster's shared secret, so that every node (and every
// restart) makes up the same ones.
func (s *Server) mechanisms() *auth.Mechanisms {
	if m := s.mechs.Load(); m != nil {
		return m
	}
	m := &auth.Mechanisms{Lookup: s.lookup, AllowCRAMMD5: s.cfg.AllowCRAMMD5, Hostname: s.cfg.Hostname, DecoyParams: s.cfg.AuthParams,
		DecoyKeyFunc: func() []byte { return s.store().Secret(storage.SecretSASLDecoy) }}
	s.mechs.CompareAndSwap(nil, m)
	return s.mechs.Load()
}

// lookup finds the secrets of a login name for package auth.
func (s *Server) lookup(_ context.Context, username string) (auth.Secrets, error) {
	var sec auth.Secrets
	err := s.store().View(func(tx *storage.Tx) error {
		u, err := tx.User(username)
		switch {
		case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrInvalid):
			return auth.ErrUnknownUser
		case err != nil:
			return err
		case u.Disabled:
			return auth.ErrUnknownUser
		}
		sec = auth.Secrets(u.Secrets)
		return nil
	})
	return sec, err
}

// errorLog takes go-smtp's log lines: connection errors are routine,
// recovered panics are not.
type errorLog struct{ log *slog.Logger }

func (l errorLog) Printf(format string, v ...any) { l.print(fmt.Sprintf(format, v...)) }
func (l errorLog) Println(v ...any)               { l.print(strings.TrimSuffix(fmt.Sprintln(v...), "\n")) }

func (l errorLog) print(msg string) {
	if strings.HasPrefix(msg, "panic") {
		l.log.Error("smtp: " + msg)
		return
	}
	l.log.Debug("smtp: " + msg)
}
