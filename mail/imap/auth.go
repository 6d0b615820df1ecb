package imap

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

// errHandled: the handler wrote its own tagged response.
var errHandled = errors.New("imap: response already written")

// maxAuthFailures closes a session after that many failed logins.
const maxAuthFailures = 3

func cmdCapability(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	s.out.raw("* CAPABILITY ").raw(s.capabilities()).crlf()
	return "", "", nil
}

func cmdNoop(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	return "", "", p.err
}

func cmdLogout(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	s.out.raw("* BYE Flotilla IMAP logging out\r\n")
	s.state = stateLogout
	return "", "", nil
}

func (s *session) passwordOK() bool { return s.isTLS || s.loopback || s.srv.AllowInsecureAuth }

func cmdStartTLS(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if s.srv.TLSConfig == nil || s.isTLS {
		return "", "", bad("CLIENTBUG", "STARTTLS is not available on this connection")
	}
	if s.br.Buffered() > 0 {
		// Commands pipelined behind STARTTLS would run as if encrypted.
		s.tagged(tag, bad("CLIENTBUG", "data after STARTTLS"))
		s.closeNow = true
		return "", "", errHandled
	}
	s.okTagged(tag, "", "Begin TLS negotiation now")
	if err := s.flushOut(); err != nil {
		s.closeNow = true
		return "", "", errHandled
	}
	tc := tls.Server(s.conn, s.srv.TLSConfig)
	_ = tc.SetDeadline(time.Now().Add(orDur(s.srv.WriteTimeout, DefaultWriteTimeout)))
	if err := tc.HandshakeContext(s.ctx); err != nil {
		s.log.Debug("STARTTLS handshake failed", "err", err)
		s.closeNow = true
		return "", "", errHandled
	}
	_ = tc.SetDeadline(time.Time{})
	s.setConn(tc)
	s.isTLS = true
	return "", "", errHandled
}

func cmdLogin(s *session, tag string, p *parser, uid bool) (string, string, error) {
	user := p.astring()
	p.sp()
	pass := p.astring()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if !s.passwordOK() {
		return "", "", no("PRIVACYREQUIRED", "LOGIN is disabled here; use STARTTLS or port 993 first")
	}
	if strings.ContainsRune(user, 0) || strings.ContainsRune(pass, 0) {
		return "", "", s.authFailed(auth.ErrBadCredentials)
	}
	x, res, err := s.srv.Mechanisms.New(s.ctx, auth.Plain, true)
	if err != nil {
		return "", "", err
	}
	if _, _, err := x.Next([]byte("\x00" + user + "\x00" + pass)); err != nil {
		return "", "", s.authFailed(err)
	}
	return s.loggedIn(res.Username)
}

func cmdAuthenticate(s *session, tag string, p *parser, uid bool) (string, string, error) {
	mech := p.atom()
	var initial []byte
	hasInitial := false
	if p.take(' ') {
		ir := p.word(func(c byte) bool { return isAtomChar(c) || c == '=' }, "initial response")
		if p.err != nil {
			return "", "", p.err
		}
		hasInitial = true
		if ir != "=" {
			var err error
			if initial, err = base64.StdEncoding.DecodeString(ir); err != nil {
				return "", "", bad("CLIENTBUG", "initial response is not base64")
			}
		} else {
			initial = []byte{}
		}
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	x, res, err := s.srv.Mechanisms.New(s.ctx, mech, s.passwordOK())
	if err != nil {
		return "", "", err
	}
	var response []byte
	if hasInitial {
		response = initial
	}
	for {
		challenge, done, err := x.Next(response)
		if err != nil {
			return "", "", s.authFailed(err)
		}
		if done {
			break
		}
		s.out.raw("+ ").raw(base64.StdEncoding.EncodeToString(challenge)).crlf()
		if err := s.flushOut(); err != nil {
			return "", "", err
		}
		line, tooLong, err := s.readLine(16 << 10)
		if err != nil {
			s.closeNow = true
			return "", "", errHandled
		}
		if tooLong {
			return "", "", bad("TOOBIG", "SASL response too long")
		}
		line = trimEOL(line)
		if string(line) == "*" {
			return "", "", bad("", "authentication cancelled")
		}
		if string(line) == "=" {
			// An empty response written as SASL-IR writes an empty initial
			// response: go-imap's client does this after SCRAM's
			// server-final message.
			response = []byte{}
		} else if response, err = base64.StdEncoding.DecodeString(string(line)); err != nil {
			return "", "", bad("CLIENTBUG", "SASL response is not base64")
		}
	}
	return s.loggedIn(res.Username)
}

func (s *session) authFailed(err error) error {
	if errors.Is(err, auth.ErrBadCredentials) || errors.Is(err, auth.ErrAuthzDenied) {
		s.authFailures++
		s.log.Info("IMAP authentication failed", "err", err)
		if s.authFailures >= maxAuthFailures {
			s.closeNow = true
		}
	}
	return err
}

// loggedIn enters the authenticated state as the user a mechanism has
// just authenticated.
func (s *session) loggedIn(username string) (string, string, error) {
	var u storage.User
	err := s.srv.Cluster.Store().View(func(tx *storage.Tx) error {
		var err error
		u, err = tx.User(username)
		return err
	})
	if err != nil || u.Disabled {
		return "", "", s.authFailed(auth.ErrBadCredentials)
	}
	s.user = u
	s.state = stateAuth
	s.srv.hub.add(u.ID, s)
	s.log = s.log.With("user", u.Address)
	s.log.Debug("IMAP login")
	return "CAPABILITY " + s.capabilities(), "logged in", nil
}

func cmdEnable(s *session, tag string, p *parser, uid bool) (string, string, error) {
	var caps []string
	for p.ok() {
		caps = append(caps, p.atom())
		if !p.take(' ') {
			break
		}
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	var on []string
	for _, c := range caps {
		switch strings.ToUpper(c) {
		case "CONDSTORE":
			if !s.condstore {
				s.enableCondstore()
				on = append(on, "CONDSTORE")
			}
		case "UTF8=ACCEPT":
			if !s.utf8 {
				s.utf8, s.out.utf8 = true, true
				on = append(on, "UTF8=ACCEPT")
			}
		case "IMAP4REV2":
			if !s.rev2 {
				s.rev2 = true
				s.utf8, s.out.utf8 = true, true
				on = append(on, "IMAP4rev2")
			}
		}
	}
	s.out.raw("* ENABLED")
	for _, c := range on {
		s.out.sp().raw(c)
	}
	s.out.crlf()
	return "", "", nil
}

// enableCondstore turns CONDSTORE on; a selected mailbox then reports its
// HIGHESTMODSEQ (RFC 7162 section 3.1).
func (s *session) enableCondstore() {
	if s.condstore {
		return
	}
	s.condstore = true
	if s.sel != nil {
		s.out.raw("* OK [HIGHESTMODSEQ ").num64(s.sel.modseq).raw("] CONDSTORE enabled\r\n")
	}
}

// cmdID answers ID (RFC 2971) and logs what the client says of itself.
func cmdID(s *session, tag string, p *parser, uid bool) (string, string, error) {
	var fields []any
	if !p.takeWord("NIL") {
		n := 0
		p.list(func() {
			k, _ := p.nstring()
			p.sp()
			v, _ := p.nstring()
			n++
			if n > 30 || len(k) > 30 || len(v) > 1024 {
				p.failErr(bad("CLIENTBUG", "ID parameters too long or too many"))
				return
			}
			fields = append(fields, "id."+strings.ToLower(cleanText(k)), cleanText(v))
		})
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if len(fields) > 0 {
		s.log.Info("IMAP client ID", fields...)
	}
	version := s.srv.Version
	if version == "" {
		version = "dev"
	}
	s.out.raw(`* ID ("name" "Flotilla" "vendor" "Flotilla" "version" `).str(version).raw(")\r\n")
	return "", "", nil
}
