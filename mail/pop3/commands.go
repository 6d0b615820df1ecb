package pop3

import (
	"errors"
	"math"
	"slices"
	"strconv"
)

type handler struct {
	auth, trans bool // valid in AUTHORIZATION, in TRANSACTION
	fn          func(s *session, arg string) error
}

// commands maps each keyword to its handler. A handler writes exactly one
// reply and returns nil, or returns an error that ends the session.
var commands = map[string]handler{
	"CAPA": {true, true, (*session).cmdCapa},
	"QUIT": {true, true, (*session).cmdQuit},
	"USER": {true, false, (*session).cmdUser},
	"PASS": {true, false, (*session).cmdPass},
	"APOP": {true, false, (*session).cmdApop},
	"AUTH": {true, false, (*session).cmdAuth},
	"STLS": {true, false, (*session).cmdStls},
	"STAT": {false, true, (*session).cmdStat},
	"LIST": {false, true, (*session).cmdList},
	"UIDL": {false, true, (*session).cmdUidl},
	"RETR": {false, true, (*session).cmdRetr},
	"TOP":  {false, true, (*session).cmdTop},
	"DELE": {false, true, (*session).cmdDele},
	"RSET": {false, true, (*session).cmdRset},
	"NOOP": {false, true, (*session).cmdNoop},
}

func (s *session) dispatch(line []byte) error {
	cmd, err := parseCommand(line)
	switch {
	case errors.Is(err, errEmptyLine):
		s.fail("", "empty command")
		return nil
	case errors.Is(err, errControlChars):
		s.fail("", "invalid characters in command")
		return nil
	case err != nil:
		s.fail("", "unknown command")
		return nil
	}
	h, ok := commands[cmd.name]
	if !ok {
		s.fail("", "unknown command")
		return nil
	}
	if cmd.name != "AUTH" && len(line)+2 > s.srv.maxLine() {
		s.fail("", "line too long")
		return nil
	}
	switch {
	case s.state == stateAuthorization && !h.auth:
		s.fail("", "not authenticated")
		return nil
	case s.state == stateTransaction && !h.trans:
		s.fail("", "command not valid after authentication")
		return nil
	}
	return h.fn(s, cmd.arg)
}

// args splits arg and checks the count, replying on a mismatch.
func (s *session) args(arg string, min, max int) ([]string, bool) {
	a := fields(arg)
	switch {
	case len(a) < min:
		s.fail("", "missing argument")
		return nil, false
	case len(a) > max:
		s.fail("", "too many arguments")
		return nil, false
	}
	return a, true
}

// message parses a message number and returns its index, replying when it
// is invalid, out of range or marked deleted.
func (s *session) message(arg string) (int, bool) {
	n, ok := parseNumber(arg)
	switch {
	case !ok:
		s.fail("", "invalid message number")
		return 0, false
	case n < 1 || n > len(s.msgs):
		s.fail("", "no such message")
		return 0, false
	case s.deleted[n-1]:
		s.fail("", "message "+strconv.Itoa(n)+" already deleted")
		return 0, false
	}
	return n - 1, true
}

func (s *session) cmdCapa(arg string) error {
	if _, ok := s.args(arg, 0, 0); !ok {
		return nil
	}
	s.ok("capability list follows")
	s.writeLine("TOP")
	s.writeLine("UIDL")
	if s.state == stateAuthorization && s.info.PasswordOK {
		s.writeLine("USER")
	}
	s.writeLine("RESP-CODES")
	s.writeLine("AUTH-RESP-CODE")
	s.writeLine("PIPELINING")
	if s.state == stateAuthorization {
		if mechs := s.mechanismNames(); len(mechs) > 0 {
			line := "SASL"
			for _, m := range mechs {
				line += " " + m
			}
			s.writeLine(line)
		}
		if s.srv.TLSConfig != nil && s.info.TLS == nil {
			s.writeLine("STLS")
		}
	}
	expire := s.srv.Expire
	if expire == "" {
		expire = "NEVER"
	}
	s.writeLine("EXPIRE " + sanitize(expire))
	s.writeLine("IMPLEMENTATION Flotilla")
	s.writeLine(".")
	return nil
}

func (s *session) cmdQuit(arg string) error {
	if _, ok := s.args(arg, 0, 0); !ok {
		return nil
	}
	if s.state == stateAuthorization {
		s.ok("bye")
		return errQuit
	}

	// UPDATE: delete, release the lock, then answer.
	var uidls []string
	for i, m := range s.msgs {
		if s.deleted[i] {
			uidls = append(uidls, m.UIDL)
		}
	}
	var delErr error
	if len(uidls) > 0 {
		delErr = s.drop.Delete(s.ctx, uidls)
	}
	closeErr := s.drop.Close()
	s.drop = nil
	if closeErr != nil {
		s.log.Error("pop3: closing maildrop", "err", closeErr)
	}
	if delErr != nil {
		s.log.Error("pop3: deleting messages", "err", delErr, "count", len(uidls))
		s.fail("SYS/TEMP", "some deleted messages not removed")
		return errQuit
	}
	s.log.Info("pop3: logout", "deleted", len(uidls))
	s.ok("bye, " + strconv.Itoa(s.live) + " messages left")
	return errQuit
}

func (s *session) cmdStat(arg string) error {
	if _, ok := s.args(arg, 0, 0); !ok {
		return nil
	}
	s.ok(strconv.Itoa(s.live) + " " + strconv.FormatInt(s.liveSz, 10))
	return nil
}

func (s *session) cmdList(arg string) error {
	a, ok := s.args(arg, 0, 1)
	if !ok {
		return nil
	}
	if len(a) == 1 {
		if i, ok := s.message(a[0]); ok {
			s.ok(strconv.Itoa(i+1) + " " + strconv.FormatInt(s.msgs[i].Size, 10))
		}
		return nil
	}
	s.ok(strconv.Itoa(s.live) + " messages (" + strconv.FormatInt(s.liveSz, 10) + " octets)")
	for i, m := range s.msgs {
		if !s.deleted[i] {
			s.writeLine(strconv.Itoa(i+1) + " " + strconv.FormatInt(m.Size, 10))
		}
	}
	s.writeLine(".")
	return nil
}

func (s *session) cmdUidl(arg string) error {
	a, ok := s.args(arg, 0, 1)
	if !ok {
		return nil
	}
	if len(a) == 1 {
		if i, ok := s.message(a[0]); ok {
			s.ok(strconv.Itoa(i+1) + " " + s.msgs[i].UIDL)
		}
		return nil
	}
	s.ok("unique-id listing follows")
	for i, m := range s.msgs {
		if !s.deleted[i] {
			s.writeLine(strconv.Itoa(i+1) + " " + m.UIDL)
		}
	}
	s.writeLine(".")
	return nil
}

func (s *session) cmdRetr(arg string) error {
	a, ok := s.args(arg, 1, 1)
	if !ok {
		return nil
	}
	i, ok := s.message(a[0])
	if !ok {
		return nil
	}
	return s.sendMessage(i, -1)
}

func (s *session) cmdTop(arg string) error {
	a, ok := s.args(arg, 2, 2)
	if !ok {
		return nil
	}
	i, ok := s.message(a[0])
	if !ok {
		return nil
	}
	lines, ok := parseNumber(a[1])
	if !ok {
		s.fail("", "invalid number of lines")
		return nil
	}
	return s.sendMessage(i, min(lines, math.MaxInt32))
}

// sendMessage answers RETR (bodyLines < 0) and TOP. Once "+OK" is out, a
// failure can only be reported by closing the connection.
func (s *session) sendMessage(i, bodyLines int) error {
	m := s.msgs[i]
	rc, err := s.drop.Open(s.ctx, m.UIDL)
	if err != nil {
		s.failErr(err, "cannot read message")
		return nil
	}
	defer rc.Close()
	if bodyLines < 0 {
		s.ok(strconv.FormatInt(m.Size, 10) + " octets")
	} else {
		s.ok("top of message follows")
	}
	n, err := writeMessage(s.w, rc, messageBufferSize, bodyLines)
	if err != nil {
		s.log.Error("pop3: sending message", "uidl", m.UIDL, "err", err)
		return err
	}
	if bodyLines < 0 && n != m.Size {
		s.log.Warn("pop3: message size differs from listed size", "uidl", m.UIDL, "listed", m.Size, "read", n)
	}
	return nil
}

func (s *session) cmdDele(arg string) error {
	a, ok := s.args(arg, 1, 1)
	if !ok {
		return nil
	}
	i, ok := s.message(a[0])
	if !ok {
		return nil
	}
	s.deleted[i] = true
	s.live--
	s.liveSz -= s.msgs[i].Size
	s.ok("message " + strconv.Itoa(i+1) + " deleted")
	return nil
}

func (s *session) cmdRset(arg string) error {
	if _, ok := s.args(arg, 0, 0); !ok {
		return nil
	}
	clear(s.deleted)
	s.countLive()
	s.ok("maildrop has " + strconv.Itoa(s.live) + " messages (" + strconv.FormatInt(s.liveSz, 10) + " octets)")
	return nil
}

func (s *session) cmdNoop(arg string) error {
	if _, ok := s.args(arg, 0, 0); !ok {
		return nil
	}
	s.ok("")
	return nil
}

func (s *session) countLive() {
	s.live, s.liveSz = 0, 0
	for i, m := range s.msgs {
		if !s.deleted[i] {
			s.live++
			s.liveSz += m.Size
		}
	}
}

// mechanismNames returns the names of the SASL mechanisms offered now,
// upper case and sorted.
func (s *session) mechanismNames() []string {
	mechs := s.mechanisms()
	names := make([]string, 0, len(mechs))
	for name := range mechs {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}
