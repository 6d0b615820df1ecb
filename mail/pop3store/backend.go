// Package pop3store is the POP3 maildrop on the replicated store: it
// implements mail/pop3's Backend and Maildrop on a cluster node.
//
// # Authentication
//
// USER/PASS and SASL (SCRAM-SHA-256 always; PLAIN and LOGIN only where the
// session allows a password in clear, see pop3.ConnInfo.PasswordOK) go
// through mail/auth, so unknown and disabled users cost the same decoy work
// as real ones and get the same answer. USER/PASS is checked by the PLAIN
// mechanism itself, so the two share every rule. APOP needs the password
// itself on the server, so a Backend does not offer it; WithAPOP does, for
// the accounts an admin gave the APOP secret (`user add --apop`), on nodes
// started with --allow-apop.
//
// A user is read from the node's local state. A name not found there is
// looked up again after a linearizable read (Node.ReadIndex), so a user just
// created through another node can log in at once.
//
// # The maildrop lock
//
// RFC 1939 wants one session per maildrop; the lock is cluster-wide, a lease
// in the replicated state (command.PopLock). Lock takes it for Lease with a
// random token; the session then renews it every RenewEvery in the
// background and releases it in Close (command.PopUnlock). A node that dies
// leaves its lease to lapse: another node takes the maildrop at most Lease
// after the last renewal. A session whose renewal fails past the end of its
// lease, or finds the lease taken over, has lost the maildrop for good: it
// deletes nothing any more.
//
// # The maildrop
//
// A user's maildrop is their INBOX, listed once after Lock from the local
// state. Propose returns only once the lock is applied on this node, so the
// listing holds everything committed before the lock: a session never misses
// a deletion made by the session that held the lock before it. A message's
// unique-id is "<UIDVALIDITY>.<UID>" of its INBOX record, the same on every
// node and never reused. Delete (QUIT) confirms the lease and then removes
// exactly the marked messages with one Expunge command; messages another
// client removed meanwhile are simply gone already.
package pop3store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/pop3"
	"github.com/flotilla-mail/flotilla/storage"
)

// Defaults for the zero values of Config.
const (
	DefaultLease          = 60 * time.Second
	DefaultProposeTimeout = 10 * time.Second
)

// Node is what the backend needs of a cluster node; *cluster.Node has it.
type Node interface {
	// ID names the node in the lock record, for people.
	ID() string
	Store() *storage.Store
	// Propose replicates a command and waits until this node applied it.
	Propose(ctx context.Context, c command.Command) (command.Response, uint64, error)
	// ReadIndex makes the next local read linearizable.
	ReadIndex(ctx context.Context) error
}

var _ Node = (*cluster.Node)(nil)

// Config configures a Backend.
type Config struct {
	Node   Node
	Logger *slog.Logger // nil discards

	// Lease is how long a maildrop lock lasts without renewal, and so how
	// long a maildrop stays locked after its node died (0: DefaultLease).
	// RenewEvery is how often a session renews it (0: a third of Lease).
	Lease, RenewEvery time.Duration
	// ProposeTimeout bounds each write to the cluster (0:
	// DefaultProposeTimeout); it is capped at a third of Lease.
	ProposeTimeout time.Duration

	// AuthParams are the Params accounts' secrets are derived with; they
	// set the cost of the decoy work done for unknown users.
	AuthParams auth.Params
	// DecoyKey keys the made-up SCRAM salts of unknown users; see
	// auth.Mechanisms.DecoyKey.
	DecoyKey []byte
	// AllowCRAMMD5 offers CRAM-MD5 (only accounts with CRAM-MD5 secrets can
	// use it); Hostname ends its challenges.
	AllowCRAMMD5 bool
	Hostname     string
}

// Backend is a pop3.Backend on a cluster node. It is safe for concurrent
// use by many sessions.
type Backend struct {
	node           Node
	log            *slog.Logger
	lease, renew   time.Duration
	proposeTimeout time.Duration
	mechs          *auth.Mechanisms
}

var _ pop3.Backend = (*Backend)(nil)

// New returns a Backend.
func New(cfg Config) (*Backend, error) {
	if cfg.Node == nil {
		return nil, errors.New("pop3store: Config.Node is nil")
	}
	b := &Backend{node: cfg.Node, log: cfg.Logger, lease: cfg.Lease, renew: cfg.RenewEvery, proposeTimeout: cfg.ProposeTimeout}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.lease <= 0 {
		b.lease = DefaultLease
	}
	if b.renew <= 0 {
		b.renew = b.lease / 3
	}
	if b.renew >= b.lease {
		return nil, fmt.Errorf("pop3store: renewal every %s does not keep a lease of %s", b.renew, b.lease)
	}
	if b.proposeTimeout <= 0 {
		b.proposeTimeout = DefaultProposeTimeout
	}
	b.proposeTimeout = min(b.proposeTimeout, b.lease/3)
	b.mechs = &auth.Mechanisms{
		Lookup:       b.lookup,
		AllowCRAMMD5: cfg.AllowCRAMMD5,
		Hostname:     cfg.Hostname,
		DecoyParams:  cfg.AuthParams,
		DecoyKey:     cfg.DecoyKey,
		DecoyKeyFunc: func() []byte { return cfg.Node.Store().Secret(storage.SecretSASLDecoy) },
	}
	return b, nil
}

// WithAPOP returns b offering APOP too (the greeting then carries a
// timestamp). Only accounts whose password was set with the APOP secret
// (auth.Params.APOP) can use it; for the others APOP fails like a wrong
// password.
func WithAPOP(b *Backend) pop3.APOPBackend { return apopBackend{b} }

type apopBackend struct{ *Backend }

func (b apopBackend) APOP(ctx context.Context, c pop3.ConnInfo, user, banner, digest string) (pop3.Maildrop, error) {
	u, err := b.user(ctx, user)
	if err != nil {
		return nil, authError(err)
	}
	if len(u.Secrets.APOP) == 0 || !pop3.CheckAPOP(banner, string(u.Secrets.APOP), digest) {
		return nil, fmt.Errorf("%w: APOP digest does not match", pop3.ErrAuthFailed)
	}
	return &maildrop{b: b.Backend, userID: u.ID, log: b.log.With("user", u.Address)}, nil
}

// Login checks USER/PASS with the PLAIN mechanism, so that both share the
// password rules, the decoy work for unknown users and the error mapping.
func (b *Backend) Login(ctx context.Context, c pop3.ConnInfo, user, pass string) (pop3.Maildrop, error) {
	srv, res, err := b.mechs.New(ctx, auth.Plain, c.PasswordOK)
	if err != nil {
		return nil, authError(err)
	}
	if _, _, err := srv.Next([]byte("\x00" + user + "\x00" + pass)); err != nil {
		return nil, authError(err)
	}
	return b.Open(ctx, c, res.Username)
}

// Open returns the maildrop of a user a SASL exchange (or Login) has just
// authenticated.
func (b *Backend) Open(ctx context.Context, c pop3.ConnInfo, identity string) (pop3.Maildrop, error) {
	u, err := b.user(ctx, identity)
	if err != nil {
		return nil, authError(err)
	}
	return &maildrop{b: b, userID: u.ID, log: b.log.With("user", u.Address)}, nil
}

// SASL is the pop3.Server.SASL function: SCRAM-SHA-256 everywhere, PLAIN
// and LOGIN only where c.PasswordOK, CRAM-MD5 when configured.
func (b *Backend) SASL(ctx context.Context, c pop3.ConnInfo) map[string]func() pop3.SASLServer {
	names := b.mechs.Names(c.PasswordOK)
	mechs := make(map[string]func() pop3.SASLServer, len(names))
	for _, name := range names {
		mechs[name] = func() pop3.SASLServer {
			srv, res, err := b.mechs.New(ctx, name, c.PasswordOK)
			if err != nil {
				return failedSASL{authError(err)}
			}
			return pop3.NewSASLServer(saslServer{srv}, func() string { return res.Username })
		}
	}
	return mechs
}

// saslServer maps the errors of an auth exchange to POP3 replies.
type saslServer struct{ sasl.Server }

func (s saslServer) Next(resp []byte) ([]byte, bool, error) {
	chal, done, err := s.Server.Next(resp)
	if err != nil {
		return nil, true, authError(err)
	}
	return chal, done, nil
}

// failedSASL is an exchange that could not start.
type failedSASL struct{ err error }

func (f failedSASL) Next([]byte) ([]byte, bool, error) { return nil, true, f.err }
func (f failedSASL) Identity() string                  { return "" }

// lookup is the auth.Lookup of the mechanisms.
func (b *Backend) lookup(ctx context.Context, username string) (auth.Secrets, error) {
	u, err := b.user(ctx, username)
	if err != nil {
		return auth.Secrets{}, err
	}
	return auth.Secrets(u.Secrets), nil
}

// user finds an enabled user by login name. No such user (or a disabled
// one) is an error matching auth.ErrUnknownUser.
func (b *Backend) user(ctx context.Context, name string) (storage.User, error) {
	u, err := b.localUser(name)
	if errors.Is(err, storage.ErrNotFound) {
		// Perhaps created through another node a moment ago: read again
		// once this node has caught up with the leader.
		if rerr := b.node.ReadIndex(ctx); rerr != nil {
			return u, fmt.Errorf("pop3store: looking up %q: %w", name, rerr)
		}
		u, err = b.localUser(name)
	}
	switch {
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrInvalid):
		return u, fmt.Errorf("%w: %w", auth.ErrUnknownUser, err)
	case err != nil:
		return u, fmt.Errorf("pop3store: looking up %q: %w", name, err)
	case u.Disabled:
		return u, fmt.Errorf("%w: %s is disabled", auth.ErrUnknownUser, u.Address)
	}
	return u, nil
}

func (b *Backend) localUser(name string) (storage.User, error) {
	var u storage.User
	err := b.node.Store().View(func(tx *storage.Tx) error {
		var err error
		u, err = tx.User(name)
		return err
	})
	return u, err
}

// authError maps an authentication failure to its reply: the client's
// fault is "-ERR [AUTH]", anything else (a failing lookup, no leader) is
// temporary.
func authError(err error) error {
	var pe *pop3.Error
	if errors.As(err, &pe) {
		return err
	}
	for _, e := range []error{auth.ErrUnknownUser, auth.ErrBadCredentials, auth.ErrAuthzDenied,
		auth.ErrMalformed, auth.ErrUnsupported, auth.ErrEncryptionRequired} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", pop3.ErrAuthFailed, err)
		}
	}
	return clusterError(err)
}

// clusterError maps the failure of a cluster read or write: a lock held by
// another session is IN-USE, no leader is SYS/TEMP saying so. Anything else
// is left to the session, which answers SYS/TEMP and logs it.
func clusterError(err error) error {
	switch {
	case errors.Is(err, storage.ErrLocked):
		return fmt.Errorf("%w: %w", pop3.ErrLocked, err)
	case errors.Is(err, cluster.ErrUnavailable):
		return &pop3.Error{Code: "SYS/TEMP", Text: "cluster unavailable, try again later", Err: err}
	}
	return err
}
