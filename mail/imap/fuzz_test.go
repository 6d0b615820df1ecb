package imap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

func FuzzUTF7(f *testing.F) {
	for _, s := range []string{"INBOX", "&AOQ-pfel", "&-", "a&-b", "&AGE", "&Jjo-!", "~peter/mail/&U,BTFw-/&ZeVnLIqe-", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, err := decodeUTF7(s); err == nil {
			if !utf8.ValidString(d) {
				t.Fatalf("decode(%q) = %q, not UTF-8", s, d)
			}
			e := encodeUTF7(d)
			if d2, err := decodeUTF7(e); err != nil || d2 != d {
				t.Fatalf("round trip of %q: %q -> %q, %v", s, e, d2, err)
			}
		}
		if utf8.ValidString(s) {
			e := encodeUTF7(s)
			for i := 0; i < len(e); i++ {
				if e[i] >= 0x80 {
					t.Fatalf("encode(%q) = %q has 8-bit", s, e)
				}
			}
			if d, err := decodeUTF7(e); err != nil || d != s {
				t.Fatalf("encode(%q) = %q decodes to %q, %v", s, e, d, err)
			}
		}
	})
}

// FuzzParse runs every argument parser over arbitrary text: no panic, no
// endless loop, and an error or the end of the input.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"1:*", "1,3:5,*:2", "$", "(FLAGS UID BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>)",
		"(BODY[1.2.MIME] BINARY[1] BINARY.SIZE[2] MODSEQ) (CHANGEDSINCE 5)", "ALL", "FULL",
		"OR (FROM a SUBJECT b) NOT UID 1:4 SINCE 1-Jan-2020 LARGER 100 HEADER X-Y z MODSEQ \"/flags/\\\\seen\" all 4",
		"INBOX (\\Seen $x) \" 1-Jan-2020 10:00:00 +0100\" {5}\r\nhello", "{3+}\r\nabc", "(MESSAGES UIDNEXT HIGHESTMODSEQ)",
		"(SUBSCRIBED RECURSIVEMATCH) \"\" (\"*\" \"%\") RETURN (CHILDREN STATUS (MESSAGES))",
		"(UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Deleted)", "~{3}\r\na\x00b", "UTF8 (~{3}\r\nabc)",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		run := func(fn func(p *parser)) {
			p := &parser{b: b}
			fn(p)
			if p.err == nil && p.pos > len(p.b) {
				t.Fatalf("parser ran past the end")
			}
		}
		run(func(p *parser) { p.numSet(); p.end() })
		run(func(p *parser) { parseFetchSpec(p); p.end() })
		run(func(p *parser) { parseSearchKeys(p, true); p.end() })
		run(func(p *parser) { parseAppendHead(p); p.literal() })
		run(func(p *parser) { p.statusItems(); p.end() })
		run(func(p *parser) { p.flagList(); p.end() })
		run(func(p *parser) { p.mailbox(); p.sp(); p.listMailbox() })
		run(func(p *parser) { p.astring(); p.sp(); p.nstring(); p.dateTime(); p.date() })
		run(func(p *parser) {
			p.utf8 = true
			for i := 0; i < 100 && p.ok() && !p.atEnd(); i++ {
				p.astring()
				p.take(' ')
			}
		})
		trailingLiteral(b)
		tagOf(b, nil)
	})
}

// FuzzMessage runs the MIME side (ENVELOPE, BODYSTRUCTURE, sections,
// SEARCH text) over arbitrary messages.
func FuzzMessage(f *testing.F) {
	f.Add([]byte(testMessage(1)))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=x\r\nFrom: \"A, B\" <a@b>, undisclosed:;, g: c@d, e@f;\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nContent-Type: multipart/alternative; boundary=y\r\n\r\n--y\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--y--\r\n--x--\r\n"))
	f.Add([]byte("To: (comment) <@route:a@b>, \"q\\\"x\" <x@y>\r\nContent-Disposition: attachment; filename*=utf-8''%E2%82%AC\r\nContent-Language: en, de\r\n\r\nbody"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var r resp
		h, body := splitHeader(msg)
		writeEnvelope(&r, h)
		writeBodyStructure(&r, msg, true)
		writeBodyStructure(&r, msg, false)
		for _, sec := range []section{
			{kind: 'b'}, {kind: 'b', spec: "HEADER"}, {kind: 'b', spec: "TEXT"},
			{kind: 'b', spec: "HEADER.FIELDS", fields: []string{"From", "Subject"}},
			{kind: 'b', part: []int{1}}, {kind: 'b', part: []int{1, 1}, spec: "MIME"},
			{kind: 'b', part: []int{2}, spec: "HEADER"}, {kind: 'B', part: []int{1}},
		} {
			if sec.kind == 'B' {
				binarySection(msg, &sec)
			} else {
				bodySection(msg, h, body, nil, &sec)
			}
		}
		sm := &searchMsg{raw: msg}
		sm.bodyText()
		sm.fields()
		sm.sentDate()
		if len(r.b) > 0 && bytes.Count(r.b, []byte("(")) < bytes.Count(r.b, []byte(")"))-bytes.Count(r.b, []byte("\")")) {
			// Parentheses inside strings make this rough; only a sanity net.
			_ = r
		}
	})
}

// panicCatcher records whether a session logged a recovered panic.
type panicCatcher struct {
	slog.Handler
	panics atomic.Int64
}

func (p *panicCatcher) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		p.panics.Add(1)
	}
	return nil
}

func (p *panicCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (p *panicCatcher) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *panicCatcher) WithGroup(string) slog.Handler            { return p }

// FuzzSession feeds arbitrary bytes to a logged-in session with a mailbox
// selected. The session may answer BAD, NO or BYE; it must not panic, the
// server must keep serving, and nothing it does may break the store.
func FuzzSession(f *testing.F) {
	for _, s := range []string{
		"A1 FETCH 1:* (FLAGS BODY.PEEK[])\r\n", "A2 UID STORE 1 +FLAGS (\\Seen)\r\nA3 EXPUNGE\r\n",
		"A4 APPEND INBOX {5+}\r\nhello\r\n", "A5 SEARCH OR SUBJECT a BODY b\r\n", "A6 CREATE x/y\r\nA7 RENAME x z\r\n",
		"A8 IDLE\r\nDONE\r\n", "A9 LOGIN {3}\r\n", "B1 SELECT INBOX (CONDSTORE)\r\nB2 FETCH 1 (MODSEQ) (CHANGEDSINCE 1)\r\n",
		"B3 MOVE 1 Trash\r\n", "B4 GETQUOTAROOT INBOX\r\nB5 ID NIL\r\nB6 NAMESPACE\r\n", "\r\n\r\n* * *\r\n",
		"B7 LIST (SUBSCRIBED) \"\" * RETURN (STATUS (MESSAGES))\r\n", "B8 ENABLE IMAP4rev2 CONDSTORE\r\nB9 SEARCH RETURN (SAVE) ALL\r\nC1 FETCH $ UID\r\n",
		"C2 STORE 1:* +FLAGS.SILENT (\\Deleted)\r\nC3 UID EXPUNGE 1:2\r\nC4 STORE 2 -FLAGS.SILENT (\\Deleted)\r\nC5 CLOSE\r\n",
	} {
		f.Add([]byte(s))
	}
	fuzzLog := &panicCatcher{}
	e := newEnv(f, func(s *Server) {
		s.Logger = slog.New(fuzzLog)
		s.LoginTimeout = 300 * time.Millisecond
		s.IdleTimeout = 300 * time.Millisecond
	})
	for i := 1; i <= 3; i++ {
		e.deliver("INBOX", testMessage(i))
	}
	f.Fuzz(func(t *testing.T, input []byte) {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			_, _ = io.WriteString(c, "F1 LOGIN alice@example.org \""+testPassword+"\"\r\nF2 SELECT INBOX\r\n")
			_, _ = c.Write(input)
			_, _ = io.WriteString(c, "\r\nZZ LOGOUT\r\n")
		}()
		if _, err := io.Copy(io.Discard, c); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				buf := make([]byte, 1<<20)
				t.Fatalf("session did not end within 10s of its input %q\n%s", input, buf[:runtime.Stack(buf, true)])
			}
		}
		if n := fuzzLog.panics.Load(); n > 0 {
			t.Fatalf("%d sessions panicked", n)
		}
		// The server still serves.
		c2, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatalf("server gone: %v", err)
		}
		c2.Close()
	})
}
