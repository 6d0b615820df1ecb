package smtp

import (
	"errors"

	"github.com/emersion/go-sasl"

	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

// AuthMechanisms lists what EHLO advertises: nothing on a cleartext
// connection from another host (AUTH only after STARTTLS there), nothing
// once authenticated.
func (s *session) AuthMechanisms() []string {
	if !s.secure || s.authenticated() != nil {
		return nil
	}
	return s.srv.mechanisms().Names(true)
}

// Auth starts a SASL exchange (RFC 4954).
func (s *session) Auth(mech string) (sasl.Server, error) {
	if s.srv.closing.Load() {
		return nil, s.fail(&replyShuttingDown)
	}
	if !s.secure {
		return nil, s.fail(&replyAuthTLS)
	}
	s.mu.Lock()
	authed, inTx := s.user != nil, s.tx.active
	s.mu.Unlock()
	switch {
	case authed:
		return nil, s.fail(&replyAuthTwice)
	case inTx:
		return nil, s.fail(&replyAuthInTx)
	}
	srv, res, err := s.srv.mechanisms().New(s.srv.ctx, mech, true)
	if err != nil {
		return nil, s.fail(authReply(err))
	}
	return &saslServer{s: s, srv: srv, res: res}, nil
}

// saslServer maps the exchange's errors to replies and records the user
// when it succeeds.
type saslServer struct {
	s   *session
	srv sasl.Server
	res *auth.Result
}

var errAuthUserGone = errors.New("authenticated user vanished")

func (x *saslServer) Next(resp []byte) ([]byte, bool, error) {
	ch, done, err := x.srv.Next(resp)
	if err != nil {
		return nil, true, x.failed(authReply(err))
	}
	if !done {
		return ch, false, nil
	}
	var u storage.User
	lerr := x.s.srv.store().View(func(tx *storage.Tx) error {
		var err error
		u, err = tx.User(x.res.Username)
		return err
	})
	if lerr != nil || u.Disabled {
		if lerr == nil {
			lerr = errAuthUserGone
		}
		return nil, true, x.failed(replyAuthFailed.with(lerr))
	}
	x.s.mu.Lock()
	x.s.user = &u
	x.s.mu.Unlock()
	x.s.log.Info("smtp: authenticated", "user", u.Address, "mechanism", x.res.Mechanism)
	return nil, true, nil
}

func (x *saslServer) failed(r *Reply) error {
	if r.Code == replyAuthFailed.Code {
		x.s.log.Info("smtp: authentication failed", "mechanism", x.res.Mechanism, "err", r.Err)
		if x.s.c.countAuthFailure() {
			r = &Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Text: "Too many authentication failures", Close: true, Err: r.Err}
		}
	}
	return x.s.fail(r)
}
