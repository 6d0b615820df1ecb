package pop3

import (
	"context"
	"crypto/md5"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net"
	"strings"

	"github.com/emersion/go-sasl"
)

// ConnInfo describes the client connection of a session. Backends and SASL
// mechanisms receive a copy; it changes when a session starts TLS.
type ConnInfo struct {
	Remote, Local net.Addr

	// TLS is the state of the TLS connection, nil on a cleartext one.
	TLS *tls.ConnectionState

	// PasswordOK reports whether the session accepts a password sent
	// without a SASL security layer: true with TLS, on a loopback or Unix
	// socket connection, or when Server.AllowInsecureAuth is set. USER/PASS
	// follow it; a Server.SASL function should offer PLAIN and LOGIN only
	// when it is true.
	PasswordOK bool
}

// Backend authenticates users and opens their maildrops. Its methods are
// called from many sessions at once. An error that is, or wraps, an *Error
// (ErrAuthFailed, ErrLocked, ErrLoginDelay or one of the backend's own)
// chooses the reply; any other error is answered -ERR with the SYS/TEMP
// response code and logged.
type Backend interface {
	// Login checks USER/PASS credentials and returns the user's maildrop,
	// not yet locked. Wrong credentials: ErrAuthFailed.
	Login(ctx context.Context, c ConnInfo, user, pass string) (Maildrop, error)

	// Open returns the maildrop of identity, which a SASL exchange has just
	// authenticated (SASLServer.Identity).
	Open(ctx context.Context, c ConnInfo, identity string) (Maildrop, error)
}

// APOPBackend is a Backend that also supports APOP (RFC 1939 section 7).
// The greeting carries an APOP timestamp only when the Backend implements
// it. APOP needs a password-equivalent secret on the server and MD5, so
// implement it knowingly; CheckAPOP does the comparison.
type APOPBackend interface {
	Backend
	// APOP checks digest, the lower-case hex MD5 of banner followed by the
	// user's shared secret. banner is the timestamp of this session's
	// greeting, angle brackets included.
	APOP(ctx context.Context, c ConnInfo, user, banner, digest string) (Maildrop, error)
}

// Message is one message of a maildrop as a session sees it.
type Message struct {
	// UIDL is the message's unique-id (RFC 1939 section 7): 1 to 70
	// characters from 0x21 to 0x7E, unique in the maildrop and never reused
	// for another message.
	UIDL string
	// Size is the exact number of octets Maildrop.Open returns for the
	// message, lines ending in CRLF.
	Size int64
}

// Maildrop is one user's mailbox as POP3 sees it. A session calls its
// methods from one goroutine; Close is always called exactly once, also when
// Lock or Messages fail and when the connection drops.
type Maildrop interface {
	// Lock takes the exclusive lock on the maildrop, cluster-wide. Another
	// session holding it: ErrLocked.
	Lock(ctx context.Context) error

	// Messages returns the maildrop's messages at lock time, in order:
	// message number n is element n-1. A session calls it once, after Lock.
	Messages(ctx context.Context) ([]Message, error)

	// Open returns the raw RFC 5322 bytes of a message, lines ending in
	// CRLF. A session stops reading early for TOP.
	Open(ctx context.Context, uidl string) (io.ReadCloser, error)

	// Delete removes messages. It is called at most once, on QUIT (the
	// UPDATE state), never for a dropped connection. Any error is reported
	// to the client as "some deleted messages not removed".
	Delete(ctx context.Context, uidls []string) error

	// Close releases the lock, if taken, and everything else.
	Close() error
}

// SASLServer is a server-side SASL mechanism (a go-sasl sasl.Server) that
// also tells which identity it authenticated.
type SASLServer interface {
	sasl.Server
	// Identity returns the authenticated identity once Next has returned
	// done with a nil error. The session passes it to Backend.Open.
	Identity() string
}

// NewSASLServer pairs a go-sasl server with a function reporting the
// identity it authenticated, typically one reading a variable set by the
// mechanism's authenticator callback.
func NewSASLServer(s sasl.Server, identity func() string) SASLServer {
	return saslServer{s, identity}
}

type saslServer struct {
	sasl.Server
	identity func() string
}

func (s saslServer) Identity() string { return s.identity() }

// CheckAPOP reports whether digest is the APOP digest of banner and secret,
// comparing in constant time. Upper- and lower-case hex are accepted.
func CheckAPOP(banner, secret, digest string) bool {
	sum := md5.Sum([]byte(banner + secret))
	want := hex.EncodeToString(sum[:])
	return subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(digest))) == 1
}
