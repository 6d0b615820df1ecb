package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/emersion/go-sasl"
	"golang.org/x/crypto/argon2"
)

// Mechanism names, as advertised in EHLO, CAPABILITY and CAPA.
const (
	ScramSHA256 = "SCRAM-SHA-256"
	Plain       = "PLAIN"
	Login       = "LOGIN"
	CramMD5     = "CRAM-MD5"
)

// Errors of an exchange. The protocol sessions map them to reply codes; an
// error matching none of them (a failing Lookup, a cancelled context) is a
// temporary server-side failure.
var (
	// ErrUnknownUser is what a Lookup returns (possibly wrapped) for a login
	// name with no account. Mechanisms never pass it on: the client sees
	// ErrBadCredentials, exactly as for a wrong password.
	ErrUnknownUser = errors.New("auth: unknown user")
	// ErrBadCredentials: wrong password, unknown user, or a user without
	// the secret the mechanism needs.
	ErrBadCredentials = errors.New("auth: invalid credentials")
	// ErrAuthzDenied: the client asked to act as an authorization identity
	// other than the one it authenticated as, which we do not allow.
	ErrAuthzDenied = errors.New("auth: authorization identity differs from authentication identity")
	// ErrMalformed: the client broke the mechanism's syntax or sequence.
	ErrMalformed = errors.New("auth: malformed SASL exchange")
	// ErrUnsupported: an unknown or disabled mechanism, or a feature of one
	// we do not offer (SCRAM channel binding).
	ErrUnsupported = errors.New("auth: unsupported SASL mechanism or feature")
	// ErrEncryptionRequired: a mechanism that sends the password in clear
	// was asked for on a connection that is neither TLS nor loopback.
	ErrEncryptionRequired = errors.New("auth: mechanism requires an encrypted connection")
)

// Lookup returns the secrets of a login name (an email address as the client
// typed it: normalising it is Lookup's business), or an error matching
// ErrUnknownUser if there is no such account.
type Lookup func(ctx context.Context, username string) (Secrets, error)

// Result is filled in when an exchange succeeds, i.e. when Next returns
// done with a nil error; until then Username is empty.
type Result struct {
	Mechanism string
	Username  string // the authenticated login name, as passed to Lookup
}

// Mechanisms creates server-side SASL exchanges. It holds configuration only,
// so one value serves every connection of a listener; it is safe for
// concurrent use and must not be copied after first use.
type Mechanisms struct {
	Lookup Lookup
	// AllowCRAMMD5 offers CRAM-MD5. It works only for accounts whose
	// Secrets were derived with Params.CRAMMD5; others fail with
	// ErrBadCredentials.
	AllowCRAMMD5 bool
	// Hostname ends CRAM-MD5 challenges; "localhost" if empty.
	Hostname string
	// DecoyParams is the cost of the work done for an unknown user so that
	// it takes as long as for a real one: an argon2id hash for PLAIN and
	// LOGIN, and the iteration count of the made-up SCRAM salt. Set it to
	// the Params accounts are derived with; zero fields mean DefaultParams.
	DecoyParams Params
	// DecoyKey keys the made-up SCRAM salts of unknown users. A real user's
	// salt never changes, so a decoy salt must not change either, across
	// connections, restarts and nodes, or asking twice tells the users
	// apart. Give every node the same persistent random key; if nil, a
	// random key per Mechanisms value is used, which only holds within
	// one process.
	DecoyKey []byte
	// DecoyKeyFunc, if set, is asked for the key each time one is needed
	// (a cluster learns its shared secret only after it forms); an empty
	// answer falls back to DecoyKey and then to the per-process key.
	DecoyKeyFunc func() []byte

	decoyOnce sync.Once
	decoyKey  []byte

	// Test hooks for the RFC examples, which use fixed nonces.
	scramNonce    func() string
	cramChallenge func() string
}

// Names lists the mechanisms to advertise, strongest first. Mechanisms that
// send the password in clear are listed only when tlsOrLoopback.
func (m *Mechanisms) Names(tlsOrLoopback bool) []string {
	names := []string{ScramSHA256}
	if tlsOrLoopback {
		names = append(names, Plain, Login)
	}
	if m.AllowCRAMMD5 {
		names = append(names, CramMD5)
	}
	return names
}

// New starts an exchange of mechanism name (case-insensitive) for one
// connection. tlsOrLoopback is the same flag as for Names: New enforces it
// too, so that a client naming an unadvertised mechanism gets nowhere. ctx
// is passed to Lookup and, once cancelled, abandons the exchange. The Result
// is filled in when the exchange succeeds.
//
// The first Next call takes the client's initial response, or nil if it sent
// none. An error from Next ends the exchange (done is true then); it matches
// one of the sentinel errors above, or else is a Lookup or context failure,
// which should be reported as temporary. Further calls fail with
// ErrMalformed.
func (m *Mechanisms) New(ctx context.Context, name string, tlsOrLoopback bool) (sasl.Server, *Result, error) {
	if m.Lookup == nil {
		return nil, nil, errors.New("auth: Mechanisms.Lookup is not set")
	}
	name = strings.ToUpper(name)
	var mech mechanism
	switch name {
	case ScramSHA256:
		mech = &scramServer{m: m}
	case Plain, Login:
		if !tlsOrLoopback {
			return nil, nil, fmt.Errorf("%w: %s", ErrEncryptionRequired, name)
		}
		if name == Plain {
			mech = &plainServer{m: m}
		} else {
			mech = &loginServer{m: m}
		}
	case CramMD5:
		if !m.AllowCRAMMD5 {
			return nil, nil, fmt.Errorf("%w: %s is disabled", ErrUnsupported, name)
		}
		mech = &cramServer{m: m}
	default:
		return nil, nil, fmt.Errorf("%w: %q", ErrUnsupported, name)
	}
	res := &Result{Mechanism: name}
	return &exchange{ctx: ctx, mech: mech, res: res}, res, nil
}

// mechanism is one step function per mechanism; exchange does the
// bookkeeping they share.
type mechanism interface {
	// step handles one client response (nil: no initial response). It
	// returns the next challenge, or the authenticated login name, which
	// ends the exchange.
	step(ctx context.Context, response []byte) (challenge []byte, user string, err error)
}

type exchange struct {
	ctx      context.Context
	mech     mechanism
	res      *Result
	finished bool
}

// Next implements sasl.Server. On failure it returns done and the error;
// callers check the error first.
func (x *exchange) Next(response []byte) (challenge []byte, done bool, err error) {
	if x.finished {
		return nil, true, fmt.Errorf("%w: %s exchange already finished", ErrMalformed, x.res.Mechanism)
	}
	if err := x.ctx.Err(); err != nil {
		x.finished = true
		return nil, true, fmt.Errorf("auth: %s exchange abandoned: %w", x.res.Mechanism, err)
	}
	challenge, user, err := x.mech.step(x.ctx, response)
	switch {
	case err != nil:
		x.finished = true
		return nil, true, err
	case user != "":
		x.finished = true
		x.res.Username = user
		return nil, true, nil
	}
	return challenge, false, nil
}

// checkLogin rejects login names no account can have, before any lookup.
func checkLogin(user string) error {
	switch {
	case user == "":
		return fmt.Errorf("%w: empty login name", ErrMalformed)
	case !utf8.ValidString(user) || strings.IndexByte(user, 0) >= 0:
		return fmt.Errorf("%w: login name is not valid UTF-8 text", ErrMalformed)
	}
	return nil
}

// verifyPassword is the verification of PLAIN and LOGIN. Unknown users cost
// an argon2id hash like known ones, so timing does not tell them apart.
func (m *Mechanisms) verifyPassword(ctx context.Context, user, password string) error {
	if checkPasswordText(password) != nil {
		return ErrBadCredentials
	}
	s, err := m.Lookup(ctx, user)
	switch {
	case errors.Is(err, ErrUnknownUser):
		m.decoyHash(password)
		return ErrBadCredentials
	case err != nil:
		return fmt.Errorf("auth: looking up %q: %w", user, err)
	case s.Argon2id == "":
		m.decoyHash(password)
		return ErrBadCredentials
	case !s.Verify(password):
		return ErrBadCredentials
	}
	return nil
}

func (m *Mechanisms) decoyParams() Params {
	p, d := m.DecoyParams, DefaultParams()
	if p.Memory == 0 || p.Time == 0 || p.Threads == 0 {
		p.Memory, p.Time, p.Threads = d.Memory, d.Time, d.Threads
	}
	if p.ScramIter == 0 {
		p.ScramIter = d.ScramIter
	}
	return p
}

func (m *Mechanisms) decoyHash(password string) {
	p := m.decoyParams()
	var salt [saltLen]byte
	argon2.IDKey([]byte(password), salt[:], p.Time, p.Memory, p.Threads, argonKeyLen)
}

// decoyScram makes up SCRAM secrets for a login name without any, the same
// every time for the same name (see DecoyKey). No client can answer them:
// the stored key is not the hash of anything known.
func (m *Mechanisms) decoyScram(user string) (salt []byte, iter int, storedKey, serverKey []byte) {
	m.decoyOnce.Do(func() {
		m.decoyKey = m.DecoyKey
		if len(m.decoyKey) == 0 {
			m.decoyKey = randomBytes(32)
		}
	})
	key := m.decoyKey
	if m.DecoyKeyFunc != nil {
		if k := m.DecoyKeyFunc(); len(k) > 0 {
			key = k
		}
	}
	derive := func(label string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(label))
		h.Write([]byte{0})
		h.Write([]byte(user))
		return h.Sum(nil)
	}
	return derive("scram salt")[:saltLen], m.decoyParams().ScramIter, derive("scram stored key"), derive("scram server key")
}
