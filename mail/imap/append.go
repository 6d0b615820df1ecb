package imap

import (
	"errors"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// appendArgs are APPEND's arguments before the message.
type appendArgs struct {
	mailbox string
	flags   []string
	date    time.Time
	utf8    bool // UTF8 (~{n}) form (RFC 6855)
	binary  bool // literal8 (~{n}, RFC 3516)
}

// parseAppendHead reads "mailbox [flags] [date-time] " up to the message
// literal, leaving p at its "{" or "~{" (or "UTF8 (").
func parseAppendHead(p *parser) appendArgs {
	var a appendArgs
	a.mailbox = p.mailbox()
	p.sp()
	if p.peek() == '(' {
		a.flags = p.flagList()
		p.sp()
	}
	if p.peek() == '"' {
		a.date = p.dateTime()
		p.sp()
	}
	if p.takeWord("UTF8") {
		p.sp()
		p.expect('(')
		a.utf8 = true
	}
	if p.take('~') {
		a.binary = true
	}
	if p.peek() != '{' && p.err == nil {
		p.fail("expected message literal")
	}
	return a
}

// errDiskLow refuses an APPEND while the node's disk is nearly full: a
// temporary failure (RFC 5530's UNAVAILABLE) the client can retry.
var errDiskLow = no("UNAVAILABLE", "server storage nearly full, try again later")

// appendLiteralCheck decides, while an APPEND is read, whether the literal
// announced at the end of buf is the message, and refuses it early (before
// the client sends it) if the session is not logged in, the mailbox does not
// exist or the message would go over quota.
func (s *session) appendLiteralCheck(buf []byte, n int64) (isMessage bool, refuse error) {
	p := &parser{b: trimEOL(buf), utf8: s.utf8}
	p.tag()
	p.sp()
	if !p.takeWord("APPEND") {
		return false, nil
	}
	p.sp()
	a := parseAppendHead(p)
	if p.err != nil {
		return false, nil
	}
	// p is at the final literal's "{": that is the message.
	if s.state == stateNotAuth {
		return true, bad("CLIENTBUG", "APPEND is not allowed now")
	}
	if n > s.srv.appendLimit() {
		return true, no("TOOBIG", "message is over the APPENDLIMIT")
	}
	if s.srv.diskLow() {
		return true, errDiskLow
	}
	err := s.view(func(tx *storage.Tx) error {
		if _, err := tx.Mailbox(s.user.ID, a.mailbox); err != nil {
			return tryCreate{err}
		}
		u, err := tx.UserByID(s.user.ID)
		if err != nil {
			return err
		}
		if u.QuotaBytes > 0 {
			used, err := tx.UsedBytes(s.user.ID)
			if err != nil {
				return err
			}
			if used+n > u.QuotaBytes {
				return storage.ErrQuota
			}
		}
		return nil
	})
	return true, err
}

func cmdAppend(s *session, tag string, p *parser, uid bool) (string, string, error) {
	a := parseAppendHead(p)
	var msg []byte
	if a.binary {
		msg = p.literal8()
	} else {
		msg = p.literal()
	}
	if a.utf8 {
		p.expect(')')
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	flags, err := checkFlags(a.flags)
	if err != nil {
		return "", "", err
	}
	if int64(len(msg)) > s.srv.appendLimit() {
		return "", "", no("TOOBIG", "message is over the APPENDLIMIT")
	}
	date := a.date
	if date.IsZero() {
		date = time.Now()
	}
	var mb storage.Mailbox
	if err := s.view(func(tx *storage.Tx) error {
		var err error
		mb, err = tx.Mailbox(s.user.ID, a.mailbox)
		return err
	}); err != nil {
		return "", "", tryCreate{err}
	}
	hash, compressed := s.srv.Cluster.Store().Compress(msg)
	resp, err := s.propose(&command.Deliver{
		Blob: hash, Body: compressed, BodySize: int64(len(msg)), InternalDate: date.UnixNano(),
		Targets: []command.Target{{UserID: s.user.ID, Mailbox: mb.Name, Flags: flags, EnforceQuota: true, Exact: true}},
	})
	if err != nil {
		return "", "", err
	}
	if len(resp.IDs) == 0 || resp.IDs[0] == 0 {
		// Refused at apply time: the mailbox went away, or the quota.
		err := s.view(func(tx *storage.Tx) error {
			_, err := tx.Mailbox(s.user.ID, a.mailbox)
			return err
		})
		if errors.Is(err, storage.ErrNotFound) {
			return "", "", tryCreate{err}
		}
		return "", "", storage.ErrQuota
	}
	return "APPENDUID " + uitoa(mb.UIDValidity) + " " + uitoa(uint32(resp.IDs[0])), "APPEND completed", nil
}
