package pop3

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// maxSASLRounds bounds the challenges of one AUTH exchange.
const maxSASLRounds = 16

func (s *session) cmdUser(arg string) error {
	if !s.info.PasswordOK {
		if s.srv.TLSConfig != nil && s.info.TLS == nil {
			s.fail("AUTH", "cleartext login not allowed here; use STLS first")
		} else {
			s.fail("AUTH", "cleartext login not allowed here")
		}
		return nil
	}
	name := strings.Trim(arg, " ")
	if name == "" {
		s.fail("", "missing argument")
		return nil
	}
	s.user = name
	s.ok("send PASS")
	return nil
}

func (s *session) cmdPass(arg string) error {
	// The password is the whole argument, spaces included (RFC 1939
	// section 7).
	user := s.user
	s.user = ""
	if user == "" {
		s.fail("", "send USER first")
		return nil
	}
	if arg == "" {
		s.fail("", "missing argument")
		return nil
	}
	drop, err := s.srv.Backend.Login(s.ctx, s.info, user, arg)
	if err != nil || drop == nil {
		s.authFailed(err, "USER", user)
		return nil
	}
	return s.enter(drop, "USER", user)
}

func (s *session) cmdApop(arg string) error {
	ab, ok := s.srv.Backend.(APOPBackend)
	if !ok {
		s.fail("", "APOP not supported")
		return nil
	}
	a, ok := s.args(arg, 2, 2)
	if !ok {
		return nil
	}
	user, digest := a[0], a[1]
	if !isHex(digest, 32) {
		s.authFailed(ErrAuthFailed, "APOP", user)
		return nil
	}
	drop, err := ab.APOP(s.ctx, s.info, user, s.banner, strings.ToLower(digest))
	if err != nil || drop == nil {
		s.authFailed(err, "APOP", user)
		return nil
	}
	return s.enter(drop, "APOP", user)
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// mechanisms returns the SASL mechanisms offered now, keyed by upper-case
// name. Names that are not valid SASL names (RFC 4422 section 3.1) are
// dropped.
func (s *session) mechanisms() map[string]func() SASLServer {
	if s.srv.SASL == nil {
		return nil
	}
	offered := s.srv.SASL(s.ctx, s.info)
	mechs := make(map[string]func() SASLServer, len(offered))
	for name, f := range offered {
		name = strings.ToUpper(name)
		if f != nil && validMechanism(name) {
			mechs[name] = f
		}
	}
	return mechs
}

func validMechanism(name string) bool {
	if name == "" || len(name) > 20 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (s *session) cmdAuth(arg string) error {
	a, ok := s.args(arg, 0, 2)
	if !ok {
		return nil
	}
	if len(a) == 0 {
		// Not in RFC 5034, but clients of RFC 1734 ask this way.
		s.ok("SASL mechanisms follow")
		for _, name := range s.mechanismNames() {
			s.writeLine(name)
		}
		s.writeLine(".")
		return nil
	}
	name := strings.ToUpper(a[0])
	newMech := s.mechanisms()[name]
	if newMech == nil {
		s.fail("", "unsupported authentication mechanism")
		return nil
	}
	var resp []byte // nil: no initial response
	if len(a) == 2 {
		var err error
		if resp, err = decodeResponse(a[1]); err != nil {
			s.fail("", "invalid base64 in initial response")
			return nil
		}
	}

	mech := newMech()
	for round := 0; ; round++ {
		chal, done, err := mech.Next(resp)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				s.log.Debug("pop3: SASL mechanism failed", "mechanism", name, "err", err)
				err = ErrAuthFailed
			}
			s.authFailed(err, "AUTH "+name, "")
			return nil
		}
		if done && len(chal) == 0 {
			break
		}
		if round >= maxSASLRounds {
			s.authFailed(ErrAuthFailed, "AUTH "+name, "")
			return nil
		}
		// A challenge; or, when done, additional data on success, which
		// POP3 carries as a last challenge answered by an empty response
		// (RFC 5034 section 4).
		s.writeLine("+ " + base64.StdEncoding.EncodeToString(chal))
		line, err := s.readLine(s.srv.maxSASLLine())
		if errors.Is(err, errLineTooLong) {
			s.fail("", "line too long")
			return nil
		}
		if err != nil {
			return err
		}
		if string(line) == "*" {
			s.fail("", "authentication cancelled")
			return nil
		}
		if resp, err = decodeResponse(string(line)); err != nil {
			s.fail("", "invalid base64 in response")
			return nil
		}
		if done {
			if len(resp) != 0 {
				s.authFailed(ErrAuthFailed, "AUTH "+name, "")
				return nil
			}
			break
		}
	}
	identity := mech.Identity()
	drop, err := s.srv.Backend.Open(s.ctx, s.info, identity)
	if err != nil || drop == nil {
		s.authFailed(err, "AUTH "+name, identity)
		return nil
	}
	return s.enter(drop, "AUTH "+name, identity)
}

// decodeResponse decodes a SASL response; "=" is the empty initial
// response. The result is never nil.
func decodeResponse(s string) ([]byte, error) {
	if s == "=" {
		return []byte{}, nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if b == nil {
		b = []byte{}
	}
	return b, err
}

// authFailed answers a failed authentication attempt and counts it unless
// the failure was the server's (a temporary error: a client retrying during
// an outage must not be cut off as if it guessed passwords). A nil err is a
// Backend returning neither maildrop nor error.
func (s *session) authFailed(err error, method, user string) {
	if code, _, _ := replyFor(err, ""); err == nil || code != "SYS/TEMP" {
		s.authFailures++
	}
	if err == nil {
		err = errors.New("backend returned no maildrop and no error")
	}
	s.log.Info("pop3: authentication failed", "method", method, "user", user, "err", err)
	s.failErr(err, "authentication failed")
}

// enter locks a maildrop and enters TRANSACTION. Whatever goes wrong, the
// maildrop is closed and the session stays in AUTHORIZATION.
func (s *session) enter(drop Maildrop, method, user string) error {
	msgs, err := s.lock(drop)
	if err != nil {
		if cerr := drop.Close(); cerr != nil {
			s.log.Error("pop3: closing maildrop", "err", cerr)
		}
		s.log.Info("pop3: cannot open maildrop", "method", method, "user", user, "err", err)
		s.failErr(err, "maildrop unavailable")
		return nil
	}
	s.state = stateTransaction
	s.user = ""
	s.drop = drop
	s.msgs = msgs
	s.deleted = make([]bool, len(msgs))
	s.countLive()
	s.log.Info("pop3: login", "method", method, "user", user, "tls", s.info.TLS != nil, "messages", s.live)
	s.ok("maildrop locked and ready, " + strconv.Itoa(s.live) + " messages (" + strconv.FormatInt(s.liveSz, 10) + " octets)")
	return nil
}

func (s *session) lock(drop Maildrop) ([]Message, error) {
	if err := drop.Lock(s.ctx); err != nil {
		return nil, err
	}
	msgs, err := drop.Messages(s.ctx)
	if err != nil {
		return nil, err
	}
	if err := checkMessages(msgs); err != nil {
		s.log.Error("pop3: invalid maildrop listing", "err", err)
		return nil, &Error{Code: "SYS/TEMP", Text: "maildrop unavailable", Err: err}
	}
	return msgs, nil
}

// checkMessages enforces what RFC 1939 asks of unique-ids and sizes.
func checkMessages(msgs []Message) error {
	seen := make(map[string]struct{}, len(msgs))
	for i, m := range msgs {
		if m.UIDL == "" || len(m.UIDL) > 70 {
			return errors.New("message " + strconv.Itoa(i+1) + ": unique-id length " + strconv.Itoa(len(m.UIDL)))
		}
		for j := 0; j < len(m.UIDL); j++ {
			if c := m.UIDL[j]; c < 0x21 || c > 0x7e {
				return errors.New("message " + strconv.Itoa(i+1) + ": invalid character in unique-id")
			}
		}
		if _, dup := seen[m.UIDL]; dup {
			return errors.New("message " + strconv.Itoa(i+1) + ": duplicate unique-id " + m.UIDL)
		}
		seen[m.UIDL] = struct{}{}
		if m.Size < 0 {
			return errors.New("message " + strconv.Itoa(i+1) + ": negative size")
		}
	}
	return nil
}

func (s *session) cmdStls(arg string) error {
	if _, ok := s.args(arg, 0, 0); !ok {
		return nil
	}
	switch {
	case s.info.TLS != nil:
		s.fail("", "already using TLS")
		return nil
	case s.srv.TLSConfig == nil:
		s.fail("", "STLS not available")
		return nil
	case s.r.Buffered() > 0:
		// Cleartext sent after STLS and before the handshake would be read
		// as if it came over TLS: a command injection. Refuse and close.
		s.log.Info("pop3: data pipelined after STLS; closing")
		s.fail("", "STLS must be the last command of a pipeline")
		return errClose
	}
	s.ok("begin TLS negotiation")
	if err := s.w.Flush(); err != nil {
		return err
	}
	tc := tls.Server(s.conn, s.srv.TLSConfig)
	s.mu.Lock()
	s.conn = tc
	s.mu.Unlock()
	if err := s.handshake(tc); err != nil {
		s.log.Info("pop3: TLS handshake failed", "err", err)
		return err
	}
	s.r.Reset(tc)
	s.w.Reset(deadlineWriter{tc, s.srv.writeTimeout()})
	s.user = "" // forget what was said in the clear (RFC 2595 section 4)
	return nil
}
