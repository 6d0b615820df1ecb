package smtp

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base32"
	"errors"
	"io"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/cluster/command"
)

// Data receives the message (DATA or BDAT), stores it with one replicated
// command and answers 250 only once that command is committed and applied.
func (s *session) Data(r io.Reader) error {
	start := time.Now()
	s.mu.Lock()
	t, user := s.tx, s.user
	s.mu.Unlock()
	if !t.active || len(t.local)+len(t.remote) == 0 {
		return s.fail(&replyNoTransaction)
	}
	body, err := readMessage(r, s.srv.cfg.MaxMessageBytes, s.srv.cfg.MaxLineLength, t.size)
	if err != nil {
		rep := asReply(err)
		switch {
		case errors.Is(err, errBareNewline):
			s.log.Info("smtp: message refused: bare CR or LF", "from", t.from)
		case rep.Text == replyAborted.Text:
			s.log.Info("smtp: message transfer aborted; nothing stored", "err", err, "from", t.from)
		}
		return s.fail(rep)
	}
	if n := countHeader(body, "received"); n > s.srv.cfg.MaxHops {
		s.log.Info("smtp: message refused: routing loop", "received", n, "from", t.from)
		return s.fail(&replyLoop)
	}
	now := time.Now()
	id := newID()
	if s.kind.submission() {
		body = completeHeaders(body, s.srv.cfg.Hostname, now)
	}

	cmd := &command.Deliver{BodySize: int64(len(body)), From: t.from, InternalDate: now.UnixNano(), EnvID: t.envID, Ret: t.ret}
	returnPath := "Return-Path: <" + formatAddress(t.from) + ">\r\n"
	for _, tg := range t.local {
		cmd.Targets = append(cmd.Targets, command.Target{UserID: tg.userID,
			Prefix: []byte(returnPath + s.received(id, tg.rcpt, user != nil, t.utf8, now))})
	}
	if len(t.remote) > 0 {
		cmd.Queue = t.remote
		forRcpt := ""
		if len(t.remote) == 1 {
			forRcpt = t.remote[0].Address
		}
		cmd.QueuePrefix = []byte(s.received(id, forRcpt, user != nil, t.utf8, now))
	}
	cmd.Blob, cmd.Body = s.srv.store().Compress(body)

	// 250 once the message is stored on a majority: the durability an
	// acknowledgement promises, without waiting for it to be applied (a
	// recipient removed since RCPT simply gets nothing, as if removed a
	// moment later).
	index, err := s.srv.cfg.Backend.ProposeCommitted(s.srv.ctx, cmd)
	if err != nil {
		return s.fail(asReply(err))
	}
	s.mu.Lock()
	s.written = index
	s.mu.Unlock()
	s.log.Info("smtp: message accepted", "id", id, "from", t.from, "local", len(t.local), "remote", len(t.remote),
		"size", len(body), "user", userAddr(user), "index", index, "took", time.Since(start).Round(time.Microsecond))
	// go-smtp sends a *SMTPError as it is: this is how the 250 carries the ID.
	return &gosmtp.SMTPError{Code: 250, EnhancedCode: gosmtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + id}
}

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// newID makes a message ID for logs and trace headers.
func newID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// received is the Received header of RFC 5321 section 4.4, for one
// recipient (or none: rcpt "").
func (s *session) received(id, rcpt string, authed, utf8 bool, now time.Time) string {
	var b strings.Builder
	b.Grow(256)
	b.WriteString("Received: from ")
	ip := "unknown"
	if s.c.ip.IsValid() {
		ip = s.c.ip.String()
		if s.c.ip.Is6() {
			ip = "IPv6:" + ip
		}
	}
	if validHelo(s.helo) {
		b.WriteString(s.helo)
		b.WriteString(" ([" + ip + "])")
	} else {
		b.WriteString("[" + ip + "] (helo=" + sanitizeHelo(s.helo) + ")")
	}
	b.WriteString("\r\n\tby ")
	b.WriteString(s.srv.cfg.Hostname)
	b.WriteString(" (Flotilla) with ")
	proto := "ESMTP"
	if utf8 {
		proto = "UTF8SMTP"
	}
	if s.tls != nil {
		proto += "S"
	}
	if authed {
		proto += "A"
	}
	b.WriteString(proto)
	if s.tls != nil {
		b.WriteString("\r\n\t(" + tls.VersionName(s.tls.Version) + " " + tls.CipherSuiteName(s.tls.CipherSuite) + ")")
	}
	b.WriteString("\r\n\tid ")
	b.WriteString(id)
	if rcpt != "" {
		b.WriteString("\r\n\tfor <" + formatAddress(rcpt) + ">")
	}
	b.WriteString("; ")
	b.WriteString(now.Format(time.RFC1123Z))
	b.WriteString("\r\n")
	return b.String()
}

var (
	errBareNewline = errors.New("bare CR or LF in message data")
	errLineTooLong = errors.New("line too long in message data")
)

// readMessage reads a whole message from go-smtp's DATA or BDAT reader and
// checks it as it comes: every line ends in CRLF (no bare CR, no bare LF:
// SMTP smuggling needs one of them), no line is longer than maxLine octets
// with its CRLF, and the whole is at most max octets. It stops at the first
// violation; go-smtp then discards the rest of the transfer up to the real
// end of data. sizeHint is the SIZE the client declared.
func readMessage(r io.Reader, max int64, maxLine int, sizeHint int64) ([]byte, error) {
	n := int64(16 << 10)
	if sizeHint > 0 {
		n = min(sizeHint+1024, max+1)
	}
	buf := make([]byte, 0, n)
	sc := lineScanner{maxLine: maxLine}
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):cap(buf)])
		if m > 0 {
			if serr := sc.scan(buf[len(buf) : len(buf)+m]); serr != nil {
				return nil, serr
			}
			buf = buf[:len(buf)+m]
			if int64(len(buf)) > max {
				return nil, gosmtp.ErrDataTooLarge
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if sc.cr {
		return nil, &Reply{Code: replyBareNewline.Code, Enhanced: replyBareNewline.Enhanced, Text: replyBareNewline.Text, Err: errBareNewline}
	}
	return buf, nil
}

// lineScanner checks line endings and lengths across the chunks of a stream.
type lineScanner struct {
	maxLine int
	lineLen int  // octets of the current line so far, without CR
	cr      bool // the last chunk ended in CR
}

func (l *lineScanner) scan(p []byte) error {
	for len(p) > 0 {
		if l.cr {
			if p[0] != '\n' {
				return bareNewline()
			}
			l.cr, l.lineLen, p = false, 0, p[1:]
			continue
		}
		nl := bytes.IndexByte(p, '\n')
		seg := p
		if nl >= 0 {
			seg = p[:nl]
		}
		cr := bytes.IndexByte(seg, '\r')
		text := len(seg) // the line's text ends at its first CR or LF
		if cr >= 0 {
			text = cr
		}
		l.lineLen += text
		switch {
		case l.lineLen+2 > l.maxLine:
			return &Reply{Code: replyLineTooLong.Code, Enhanced: replyLineTooLong.Enhanced, Text: replyLineTooLong.Text, Err: errLineTooLong}
		case cr >= 0 && cr != len(seg)-1:
			return bareNewline() // CR followed by something other than LF
		case nl >= 0 && cr < 0:
			return bareNewline() // LF without CR
		case nl < 0:
			l.cr = cr >= 0
			return nil
		}
		l.lineLen, p = 0, p[nl+1:]
	}
	return nil
}

func bareNewline() error {
	r := replyBareNewline
	r.Err = errBareNewline
	return &r
}

// headerFields calls fn with the name of each field of the message's header
// section (up to the first empty line), until fn returns false. Lines end
// in CRLF (readMessage checked).
func headerFields(msg []byte, fn func(name []byte) bool) {
	for len(msg) > 0 {
		eol := bytes.Index(msg, []byte("\r\n"))
		line := msg
		if eol >= 0 {
			line, msg = msg[:eol], msg[eol+2:]
		} else {
			msg = nil
		}
		if len(line) == 0 {
			return
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // folded
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return // not a header field: the body started without an empty line
		}
		if !fn(bytes.TrimRight(line[:colon], " \t")) {
			return
		}
	}
}

// countHeader counts the header fields named name (lower case).
func countHeader(msg []byte, name string) int {
	n := 0
	headerFields(msg, func(f []byte) bool {
		if len(f) == len(name) && strings.EqualFold(string(f), name) {
			n++
		}
		return true
	})
	return n
}

// completeHeaders adds Date and Message-ID to a submitted message that lacks
// them (RFC 6409 section 8), at the top of its header.
func completeHeaders(msg []byte, host string, now time.Time) []byte {
	hasDate, hasID := false, false
	headerFields(msg, func(f []byte) bool {
		switch {
		case strings.EqualFold(string(f), "date"):
			hasDate = true
		case strings.EqualFold(string(f), "message-id"):
			hasID = true
		}
		return !(hasDate && hasID)
	})
	if hasDate && hasID {
		return msg
	}
	var add []byte
	if !hasDate {
		add = append(add, "Date: "+now.Format(time.RFC1123Z)+"\r\n"...)
	}
	if !hasID {
		add = append(add, "Message-ID: <"+newID()+newID()+"@"+host+">\r\n"...)
	}
	return append(add, msg...)
}
