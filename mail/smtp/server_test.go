package smtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
)

const testMsg = "From: Sender <sender@remote.test>\r\nTo: alice@example.org\r\nSubject: hello\r\nMessage-ID: <1@remote.test>\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\n\r\nHello, \xc3\xa9 8-bit body.\r\n..a dot-stuffed line\r\n"

// The message as stored: a per-recipient prefix of Return-Path and
// Received, then the body exactly as sent (dot-unstuffed).
var receivedRE = regexp.MustCompile(`^Return-Path: <([^>]*)>\r\nReceived: from (\S+) \(\[127\.0\.0\.1\]\)\r\n\tby mx\.test \(Flotilla\) with (\w+)\r\n(?:\t\(TLS[^)]*\)\r\n)?\tid ([0-9A-Z]+)\r\n\tfor <([^>]+)>; (.+)\r\n`)

func TestMXDeliversWithTraceHeaders(t *testing.T) {
	e := newEnv(t)
	c := e.goClient(MX)
	for _, ext := range []string{"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING", "SMTPUTF8", "DSN", "STARTTLS", "LIMITS"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO does not advertise %s", ext)
		}
	}
	if size, ok := c.MaxMessageSize(); !ok || size != 64<<10 {
		t.Errorf("SIZE %d %v", size, ok)
	}
	// Loopback counts as secure: AUTH is offered before TLS here.
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "SCRAM-SHA-256") || !strings.Contains(mechs, "PLAIN") {
		t.Errorf("AUTH %v %q", ok, mechs)
	}
	if err := c.SendMail("sender@remote.test", []string{"alice@example.org"}, strings.NewReader(testMsg)); err != nil {
		t.Fatal(err)
	}
	got := e.inbox("alice@example.org")
	if len(got) != 1 {
		t.Fatalf("%d messages", len(got))
	}
	m := receivedRE.FindSubmatch(got[0])
	if m == nil {
		t.Fatalf("trace headers:\n%s", got[0])
	}
	if string(m[1]) != "sender@remote.test" || string(m[2]) != "client.test" || string(m[3]) != "ESMTP" || string(m[5]) != "alice@example.org" {
		t.Errorf("trace headers: %q", m[1:6])
	}
	if _, err := time.Parse(time.RFC1123Z, string(m[6])); err != nil {
		t.Errorf("date %q: %v", m[6], err)
	}
	// go-smtp's client dot-stuffs ("..." on the wire): the body comes back as sent.
	if body, want := string(got[0][len(m[0]):]), testMsg; body != want {
		t.Errorf("body changed:\n%q\nwant\n%q", body, want)
	}
	if !strings.Contains(e.logs.String(), "message accepted") {
		t.Error("no log line for the message")
	}
}

func TestBDATAndPipelining(t *testing.T) {
	e := newEnv(t)
	c := e.dial(MX)
	c.must("EHLO client.test", 250, "CHUNKING", "PIPELINING")
	// Everything in one write (PIPELINING), the message in two chunks.
	body := "Subject: chunks\r\n\r\nfirst part, "
	body2 := "second part\r\n"
	c.send("MAIL FROM:<s@remote.test> BODY=8BITMIME SIZE=40\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n" +
		fmt.Sprintf("BDAT %d\r\n%sBDAT %d LAST\r\n%s", len(body), body, len(body2), body2))
	for i, want := range []int{250, 250, 250, 250, 250} {
		if code, text := c.reply(); code != want {
			t.Fatalf("reply %d: %d %s", i, code, text)
		}
	}
	for _, u := range []string{"alice@example.org", "bob@example.org"} {
		got := e.inbox(u)
		if len(got) != 1 || !bytes.HasSuffix(got[0], []byte(body+body2)) || !bytes.Contains(got[0], []byte("for <"+u+">")) {
			t.Fatalf("%s: %q", u, got)
		}
	}
	// One body for both.
	if n := e.blobs(); n != 2 { // carol's seed message and this one
		t.Errorf("%d bodies stored", n)
	}
	c.must("QUIT", 221)
}

func TestRecipientResolution(t *testing.T) {
	e := newEnv(t)
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<nobody@example.org>", 550, "5.1.1")
	c.must("RCPT TO:<alice+news@example.org>", 250)
	c.must("RCPT TO:<team@example.org>", 250)               // alice (again) and bob
	c.must("RCPT TO:<anyone@other.test>", 250)              // catch-all to bob
	c.must("RCPT TO:<fwd@example.org> NOTIFY=FAILURE", 250) // alice and far@remote.test
	c.must("RCPT TO:<bad address@example.org>", 501)
	c.must("DATA", 354)
	c.send("Subject: x\r\n\r\nbody\r\n.\r\n")
	c.expect(250)
	if n := len(e.inbox("alice@example.org")); n != 1 {
		t.Errorf("alice has %d messages, want 1 (duplicates collapse)", n)
	}
	bob := e.inbox("bob@example.org")
	if len(bob) != 1 || !bytes.Contains(bob[0], []byte("for <team@example.org>")) {
		t.Errorf("bob: %q", bob)
	}
	q := e.queue()
	if len(q) != 1 || len(q[0].Recipients) != 1 || q[0].Recipients[0].Address != "far@remote.test" ||
		q[0].Recipients[0].ORcpt != "rfc822;fwd@example.org" || q[0].Recipients[0].Notify != "FAILURE" || q[0].From != "s@remote.test" {
		t.Fatalf("queue: %+v", q)
	}
	if bytes.Contains(q[0].Prefix, []byte("Return-Path")) || !bytes.Contains(q[0].Prefix, []byte("for <far@remote.test>")) {
		t.Errorf("queue prefix %q", q[0].Prefix)
	}
}

func TestQuotaAtRCPT(t *testing.T) {
	e := newEnv(t)
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	// carol: quota 2000, 1000 used.
	c.must("MAIL FROM:<s@remote.test> SIZE=3000", 250)
	c.must("RCPT TO:<carol@example.org>", 552, "5.2.2")
	c.must("RSET", 250)
	c.must("MAIL FROM:<s@remote.test> SIZE=1500", 250)
	c.must("RCPT TO:<carol@example.org>", 452, "4.2.2")
	c.must("RSET", 250)
	c.must("MAIL FROM:<s@remote.test> SIZE=500", 250)
	c.must("RCPT TO:<carol@example.org>", 250)
	c.must("DATA", 354)
	c.send("Subject: fill\r\n\r\n" + strings.Repeat("y", 900) + "\r\n.\r\n")
	c.expect(250)
	// Now at quota: refused without SIZE too.
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<carol@example.org>", 452, "4.2.2")
}

func TestRelayPolicy(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) {
		c.Resolver = fakeResolver{"relay.example": {"127.0.0.1"}, "other.example": {"192.0.2.9"}}
	}))
	try := func(kind Kind, auth bool, from string) (int, string) {
		t.Helper()
		c := e.dial(kind)
		c.must("EHLO client.test", 250)
		if kind == MX {
			c.starttls(e)
			c.must("EHLO client.test", 250)
		}
		if auth {
			c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 235)
		}
		if code, text := c.cmd("MAIL FROM:<" + from + ">"); code != 250 {
			return code, text
		}
		return c.cmd("RCPT TO:<victim@elsewhere.test>")
	}
	expectDenied := func(what string, code int, text string) {
		t.Helper()
		if code != 550 || !strings.Contains(text, "5.7.1") {
			t.Errorf("%s: %d %s, want 550 5.7.1", what, code, text)
		}
	}
	// Default (local-users): never an open relay, users may.
	code, text := try(MX, false, "spammer@elsewhere.test")
	expectDenied("default, unauthenticated", code, text)
	code, text = try(MX, false, "alice@example.org") // a forged local sender changes nothing
	expectDenied("default, forged local sender", code, text)
	if code, text := try(MX, true, "alice@example.org"); code != 250 {
		t.Errorf("default, authenticated on MX: %d %s", code, text)
	}
	if code, text := try(Submission, true, "alice@example.org"); code != 250 {
		t.Errorf("default, submission: %d %s", code, text)
	}

	e.setRelay(relay.None)
	for _, k := range []Kind{MX, Submission, SubmissionTLS} {
		code, text := try(k, true, "alice@example.org")
		expectDenied("none, authenticated on "+k.String(), code, text)
	}

	e.setRelay(relay.LocalHosts, "192.0.2.0/24")
	code, text = try(MX, false, "x@elsewhere.test")
	expectDenied("local-hosts, untrusted", code, text)
	code, text = try(Submission, true, "alice@example.org")
	expectDenied("local-hosts, authenticated but untrusted", code, text)
	e.setRelay(relay.LocalHosts, "127.0.0.0/8")
	if code, text := try(MX, false, "x@elsewhere.test"); code != 250 {
		t.Errorf("local-hosts, trusted network: %d %s", code, text)
	}
	e.setRelay(relay.LocalHosts, "relay.example") // a host name resolving to 127.0.0.1
	if code, text := try(MX, false, "x@elsewhere.test"); code != 250 {
		t.Errorf("local-hosts, trusted name: %d %s", code, text)
	}
	e.setRelay(relay.LocalHosts, "other.example")
	code, text = try(MX, false, "x@elsewhere.test")
	expectDenied("local-hosts, name resolving elsewhere", code, text)

	e.setRelay(relay.Listed, "192.0.2.1")
	code, text = try(MX, false, "x@elsewhere.test")
	expectDenied("listed, untrusted", code, text)
	if code, text := try(MX, true, "alice@example.org"); code != 250 {
		t.Errorf("listed, authenticated: %d %s", code, text)
	}
	e.setRelay(relay.Listed, "127.0.0.1")
	if code, text := try(MX, false, "x@elsewhere.test"); code != 250 {
		t.Errorf("listed, trusted: %d %s", code, text)
	}

	// Relayed mail goes to the queue, DSN parameters kept.
	e.setRelay(relay.LocalUsers)
	c := e.dial(Submission)
	c.must("EHLO client.test", 250)
	c.starttls(e)
	c.must("EHLO client.test", 250)
	c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 235)
	c.must("MAIL FROM:<alice@example.org> RET=HDRS ENVID=env+2B1", 250)
	c.must("RCPT TO:<Victim@Elsewhere.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;victim@elsewhere.test", 250)
	c.must("RCPT TO:<bob@example.org>", 250)
	c.must("DATA", 354)
	c.send("Subject: out\r\n\r\nhi\r\n.\r\n")
	c.expect(250)
	q := e.queue()
	if len(q) != 1 {
		t.Fatalf("queue %+v", q)
	}
	r := q[0].Recipients[0]
	if r.Address != "Victim@elsewhere.test" || r.Notify != "SUCCESS,FAILURE" || r.ORcpt != "RFC822;victim@elsewhere.test" ||
		q[0].EnvID != "env+1" || q[0].Ret != "HDRS" || q[0].From != "alice@example.org" {
		t.Errorf("queue entry %+v", q[0])
	}
	if !bytes.Contains(q[0].Prefix, []byte("with ESMTPSA")) {
		t.Errorf("queue prefix %q", q[0].Prefix)
	}
	if len(e.inbox("bob@example.org")) != 1 {
		t.Error("local copy missing")
	}
}

type fakeResolver map[string][]string

func (f fakeResolver) LookupIPAddr(_ context.Context, host string) ([]net.IPAddr, error) {
	var out []net.IPAddr
	for _, a := range f[host] {
		out = append(out, net.IPAddr{IP: net.ParseIP(a)})
	}
	if out == nil {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

func TestSubmission(t *testing.T) {
	e := newEnv(t)
	c := e.dial(Submission)
	c.must("EHLO client.test", 250, "STARTTLS")
	c.must("MAIL FROM:<alice@example.org>", 530, "5.7.0")
	c.starttls(e)
	c.must("EHLO client.test", 250, "AUTH SCRAM-SHA-256")
	c.must("MAIL FROM:<alice@example.org>", 530)
	c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 235)
	// Forged senders are refused; own addresses, sub-addresses and aliases
	// are not; a catch-all is not an address one owns.
	for _, from := range []string{"bob@example.org", "ceo@remote.test", "anyone@other.test", "", "nobody@example.org"} {
		c.must("MAIL FROM:<"+from+">", 553, "5.7.1")
	}
	for _, from := range []string{"alice@example.org", "ALICE+lists@example.org", "team@example.org", "fwd@example.org"} {
		c.must("MAIL FROM:<"+from+">", 250)
		c.must("RSET", 250)
	}
	// Message-ID and Date are added on submission when missing...
	c.must("MAIL FROM:<alice@example.org>", 250)
	c.must("RCPT TO:<bob@example.org>", 250)
	c.must("DATA", 354)
	c.send("Subject: no id\r\n\r\nbody\r\n.\r\n")
	c.expect(250)
	// ...and kept when present.
	c.must("MAIL FROM:<alice@example.org>", 250)
	c.must("RCPT TO:<bob@example.org>", 250)
	c.must("DATA", 354)
	c.send("Message-ID: <mine@example.org>\r\nDate: Mon, 02 Jan 2006 15:04:05 -0700\r\nSubject: with id\r\n\r\nbody\r\n.\r\n")
	c.expect(250)
	got := e.inbox("bob@example.org")
	if len(got) != 2 {
		t.Fatalf("%d messages", len(got))
	}
	body0 := got[0][bytes.Index(got[0], []byte(";"))+1:]
	if !regexp.MustCompile(`\r\nDate: [^\r]+\r\nMessage-ID: <[0-9A-Z]+@mx\.test>\r\nSubject: no id\r\n`).Match(body0) ||
		!bytes.Contains(got[0], []byte("with ESMTPSA")) {
		t.Errorf("first message:\n%s", got[0])
	}
	if n := bytes.Count(got[1], []byte("Message-ID:")); n != 1 || bytes.Count(got[1], []byte("\r\nDate:")) != 1 {
		t.Errorf("second message:\n%s", got[1])
	}
}

func TestSASLMechanisms(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name   string
		user   string
		client func() sasl.Client
		ok     bool
	}{
		{"PLAIN", "alice@example.org", func() sasl.Client { return sasl.NewPlainClient("", "alice@example.org", password) }, true},
		{"PLAIN bad password", "", func() sasl.Client { return sasl.NewPlainClient("", "alice@example.org", "wrong") }, false},
		{"PLAIN unknown user", "", func() sasl.Client { return sasl.NewPlainClient("", "nobody@example.org", password) }, false},
		{"PLAIN other authzid", "", func() sasl.Client { return sasl.NewPlainClient("bob@example.org", "alice@example.org", password) }, false},
		{"LOGIN", "alice@example.org", func() sasl.Client { return sasl.NewLoginClient("Alice@Example.org", password) }, true},
		{"LOGIN bad password", "", func() sasl.Client { return sasl.NewLoginClient("alice@example.org", "wrong") }, false},
		{"SCRAM-SHA-256", "alice@example.org", func() sasl.Client { return newScram(t, "alice@example.org", password) }, true},
		{"SCRAM-SHA-256 bob", "bob@example.org", func() sasl.Client { return newScram(t, "bob@example.org", password) }, true},
		{"SCRAM-SHA-256 bad password", "", func() sasl.Client { return newScram(t, "alice@example.org", "wrong") }, false},
		{"SCRAM-SHA-256 unknown user", "", func() sasl.Client { return newScram(t, "nobody@example.org", password) }, false},
	} {
		for _, kind := range []Kind{MX, Submission, SubmissionTLS} {
			c := e.goClientTLS(kind)
			err := c.Auth(tc.client())
			if tc.ok != (err == nil) {
				t.Errorf("%s on %s: %v", tc.name, kind, err)
			}
			var se *gosmtp.SMTPError
			if !tc.ok && (!errors.As(err, &se) || se.Code != 535 || se.EnhancedCode != (gosmtp.EnhancedCode{5, 7, 8})) {
				t.Errorf("%s on %s: %v, want 535 5.7.8", tc.name, kind, err)
			}
			if tc.ok {
				if err := c.SendMail(tc.user, []string{"bob@example.org"}, strings.NewReader("Subject: x\r\n\r\nx\r\n")); err != nil {
					t.Errorf("%s on %s: send after auth: %v", tc.name, kind, err)
				}
			}
		}
	}
	if n := len(e.inbox("bob@example.org")); n != 4*3 {
		t.Errorf("bob has %d messages", n)
	}
}

func TestAuthFailuresAndTLSPolicy(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) { c.noLoopbackExemption = true }))
	// Not loopback, no TLS: no AUTH offered, AUTH PLAIN refused (538), on
	// MX and submission alike; even SCRAM waits for TLS.
	for _, k := range []Kind{MX, Submission} {
		c := e.dial(k)
		if text := c.must("EHLO client.test", 250); strings.Contains(text, "AUTH") {
			t.Errorf("%s: AUTH offered in cleartext: %s", k, text)
		}
		c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 538, "5.7.11")
		c.must("AUTH SCRAM-SHA-256", 538)
		c.must("MAIL FROM:<s@remote.test>", map[Kind]int{MX: 250, Submission: 530}[k])
	}
	// After STARTTLS it works; bad passwords count, three end the session.
	c := e.dial(Submission)
	c.must("EHLO client.test", 250)
	c.starttls(e)
	c.must("EHLO client.test", 250, "AUTH SCRAM-SHA-256 PLAIN LOGIN CRAM-MD5")
	c.must("AUTH NTLM", 504, "5.5.4")
	c.must("AUTH PLAIN !!!notbase64", 454) // go-smtp's own reply to bad base64
	c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00wrong"), 535, "5.7.8")
	c.must("AUTH LOGIN", 334)
	c.must(b64("alice@example.org"), 334)
	c.must(b64("wrong"), 535)
	c.must("AUTH PLAIN", 334)
	c.must("*", 501) // cancelled
	c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00wrong"), 421, "4.7.0")
	if !c.closed() {
		t.Error("connection open after three failed AUTHs")
	}
	// AUTH in a transaction, and twice, are refused.
	c = e.dial(SubmissionTLS)
	c.must("EHLO client.test", 250)
	c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 235)
	c.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 503)
}

func TestSMTPUTF8(t *testing.T) {
	e := newEnv(t)
	c := e.dial(MX)
	c.must("EHLO client.test", 250, "SMTPUTF8")
	c.must("MAIL FROM:<jos\xc3\xa9@remote.test>", 553, "5.6.7")
	c.must("MAIL FROM:<jos\xc3\xa9@remote.test> SMTPUTF8", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.must("DATA", 354)
	c.send("Subject: =?utf-8?q?caf=C3=A9?=\r\nFrom: jos\xc3\xa9@remote.test\r\n\r\nol\xc3\xa1\r\n.\r\n")
	c.expect(250)
	got := e.inbox("alice@example.org")
	if len(got) != 1 || !bytes.Contains(got[0], []byte("with UTF8SMTP\r\n")) || !bytes.HasPrefix(got[0], []byte("Return-Path: <jos\xc3\xa9@remote.test>")) {
		t.Fatalf("%q", got)
	}
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<\xc3\xa9@example.org>", 553, "5.6.7")
}

func TestLimits(t *testing.T) {
	e := newEnv(t)
	before := e.blobs()
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	// Declared size over the limit: refused at MAIL.
	c.must(fmt.Sprintf("MAIL FROM:<s@remote.test> SIZE=%d", 64<<10+1), 552, "5.3.4")
	// Actual size over the limit: refused after DATA.
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.must("DATA", 354)
	line := strings.Repeat("z", 998) + "\r\n"
	c.send("Subject: big\r\n\r\n" + strings.Repeat(line, 70) + ".\r\n")
	if text := c.expect(552); !strings.Contains(text, "5.3.4") {
		t.Errorf("oversize DATA: %s", text)
	}
	// Same through BDAT.
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", 70*len(line), strings.Repeat(line, 70)))
	c.expect(552)
	// Too many recipients (10).
	c.must("MAIL FROM:<s@remote.test>", 250)
	for i := 0; i < 10; i++ {
		c.must(fmt.Sprintf("RCPT TO:<alice+%d@example.org>", i), 250)
	}
	c.must("RCPT TO:<bob@example.org>", 452, "4.5.3")
	c.must("RSET", 250)
	if len(e.inbox("alice@example.org")) != 0 || e.blobs() != before {
		t.Fatal("something was stored")
	}

	// A line over the limit in BDAT, split over two chunks (go-smtp does
	// not check chunks; a chunk it reads ahead with a command line, it
	// refuses itself and closes).
	long := strings.Repeat("w", 2100) + "\r\n"
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.send("BDAT 1500\r\n" + long[:1500])
	c.expect(250)
	c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(long)-1500, long[1500:]))
	if text := c.expect(500); !strings.Contains(text, "5.5.2 Line too long") {
		t.Errorf("long BDAT line: %s", text)
	}
	// ...and in DATA, where the connection ends.
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.must("DATA", 354)
	c.send(long + ".\r\n")
	if code, _ := c.reply(); code != 500 {
		t.Errorf("long DATA line: %d", code)
	}
	if !c.closed() {
		t.Error("connection open after an over-long line")
	}

	// Errors: unknown recipients count; past MaxErrors the session ends.
	c = e.dial(MX)
	c.must("EHLO client.test", 250)
	c.must("MAIL FROM:<s@remote.test>", 250)
	for i := 0; i < DefaultMaxErrors; i++ {
		c.must(fmt.Sprintf("RCPT TO:<nobody%d@example.org>", i), 550)
	}
	c.must("RCPT TO:<nobody@example.org>", 421, "4.7.0")
	if !c.closed() {
		t.Error("connection open after too many errors")
	}

	// Garbage commands: go-smtp closes after a few.
	c = e.dial(MX)
	for i := 0; i < 3; i++ {
		if code, _ := c.cmd("\x00\xff garbage \x01"); code != 500 && code != 501 {
			t.Errorf("garbage: %d", code)
		}
	}
	c.send("XYZZY\r\n")
	c.reply()
	if !c.closed() {
		t.Error("connection open after garbage")
	}
	if len(e.inbox("alice@example.org")) != 0 || e.blobs() != before {
		t.Fatal("something was stored")
	}
}

func TestTimeoutsAndConnectionLimits(t *testing.T) {
	e := newEnv(t, withConfig(func(c *Config) {
		c.ReadTimeout = time.Second
		c.MaxConnectionsPerIP = 2
		c.MaxSessionTime = 3 * time.Second
	}))
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	if code, text := c.reply(); code != 421 || !strings.Contains(text, "4.4.2") {
		t.Errorf("idle: %d %s", code, text)
	}
	// A client trickling data keeps each read in time, but not the session.
	c = e.dial(MX)
	c.must("EHLO client.test", 250)
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.must("DATA", 354)
	start := time.Now()
	for i := 0; i < 200 && time.Since(start) < 10*time.Second; i++ {
		if _, err := c.conn.Write([]byte("x\r\n")); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // a slow client, not synchronisation
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Errorf("session outlived MaxSessionTime: %s", d)
	}
	if len(e.inbox("alice@example.org")) != 0 {
		t.Error("stored")
	}
	// Per-IP connection limit.
	waitFor(t, "the sessions above to end", func() bool { return len(e.srv.connList()) == 0 })
	c1, c2 := e.dial(MX), e.dial(MX)
	c3 := e.dial2(MX)
	if code, text := c3.reply(); code != 421 || !strings.Contains(text, "4.7.0") {
		t.Errorf("third connection: %d %s", code, text)
	}
	c1.must("QUIT", 221)
	c2.must("QUIT", 221)
}

// dial2 connects without reading the greeting.
func (e *env) dial2(kind Kind) *client {
	conn, err := net.Dial("tcp", e.addr[kind])
	if err != nil {
		e.t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	e.t.Cleanup(func() { conn.Close() })
	return &client{t: e.t, conn: conn, r: bufio.NewReader(conn)}
}

func TestLeaderlessClusterAnswers451(t *testing.T) {
	e := newEnv(t, withBackend(func(b Backend) Backend {
		return failingBackend{Backend: b, err: fmt.Errorf("%w: no leader", cluster.ErrUnavailable)}
	}))
	before := e.blobs()
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.must("DATA", 354)
	c.send("Subject: x\r\n\r\nx\r\n.\r\n")
	text := c.expect(451)
	if !strings.HasPrefix(text, "4.3.0") || strings.Contains(text, "leader") {
		t.Errorf("reply %q (internal text must not leak)", text)
	}
	// The session goes on.
	c.must("NOOP", 250)
	if len(e.inbox("alice@example.org")) != 0 || e.blobs() != before {
		t.Error("something stored")
	}
}

func TestDroppedClientStoresNothing(t *testing.T) {
	e := newEnv(t)
	before := e.blobs()
	for _, bdat := range []bool{false, true} {
		c := e.dial(MX)
		c.must("EHLO client.test", 250)
		c.must("MAIL FROM:<s@remote.test>", 250)
		c.must("RCPT TO:<alice@example.org>", 250)
		if bdat {
			c.send("BDAT 10000\r\nSubject: half\r\n\r\nhalf a message")
		} else {
			c.must("DATA", 354)
			c.send("Subject: half\r\n\r\nhalf a message")
		}
		c.conn.Close()
	}
	waitFor(t, "the sessions to end", func() bool { return strings.Count(e.logs.String(), "transfer aborted") >= 2 })
	if len(e.inbox("alice@example.org")) != 0 || e.blobs() != before {
		t.Fatal("a dropped message was stored")
	}
}

func TestShutdownTwoPhase(t *testing.T) {
	e := newEnv(t)
	idle := e.dial(MX)
	idle.must("EHLO client.test", 250)
	busy := e.dial(Submission)
	busy.must("EHLO client.test", 250)
	busy.starttls(e)
	busy.must("EHLO client.test", 250)
	busy.must("AUTH PLAIN "+b64("\x00alice@example.org\x00"+password), 235)
	busy.must("MAIL FROM:<alice@example.org>", 250)
	busy.must("RCPT TO:<bob@example.org>", 250)
	busy.must("DATA", 354)
	busy.send("Subject: in flight\r\n\r\n")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- e.srv.Shutdown(ctx)
	}()
	if code, text := idle.reply(); code != 421 || !strings.Contains(text, "4.3.2") {
		t.Errorf("idle session: %d %s", code, text)
	}
	if !idle.closed() {
		t.Error("idle session open")
	}
	// The transaction in flight completes...
	busy.send("the rest\r\n.\r\n")
	busy.expect(250)
	// ...and the next command is refused.
	if code, text := busy.cmd("MAIL FROM:<alice@example.org>"); code != 421 || !strings.Contains(text, "4.3.2") {
		t.Errorf("after shutdown: %d %s", code, text)
	}
	if err := <-done; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if len(e.inbox("bob@example.org")) != 1 {
		t.Error("in-flight message lost")
	}
	if _, err := net.DialTimeout("tcp", e.addr[MX], time.Second); err == nil {
		t.Error("still accepting")
	}
}

func TestRoutingLoopRefused(t *testing.T) {
	e := newEnv(t)
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.must("DATA", 354)
	c.send(strings.Repeat("Received: from a by b; Mon, 02 Jan 2006 15:04:05 -0700\r\n", DefaultMaxHops+1) + "\r\nx\r\n.\r\n")
	c.expect(554)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDiskNearlyFull: while the node's disk is nearly full, MAIL is
// answered 452 4.3.1 and nothing is taken; once there is room, mail flows.
func TestDiskNearlyFull(t *testing.T) {
	var low atomic.Bool
	e := newEnv(t, withConfig(func(c *Config) { c.DiskLow = low.Load }))
	send := func() (int, string) {
		c := e.dial(MX)
		defer c.cmd("QUIT")
		c.must("EHLO client.test", 250)
		if code, text := c.cmd("MAIL FROM:<s@remote.test>"); code != 250 {
			return code, text
		}
		c.must("RCPT TO:<alice@example.org>", 250)
		c.must("DATA", 354)
		c.send("Subject: disk\r\n\r\nbody\r\n.\r\n")
		return c.reply()
	}
	if code, text := send(); code != 250 {
		t.Fatalf("with room: %d %s", code, text)
	}
	low.Store(true)
	if code, text := send(); code != 452 || !strings.HasPrefix(text, "4.3.1") {
		t.Fatalf("disk low: %d %s, want 452 4.3.1", code, text)
	}
	if n := len(e.inbox("alice@example.org")); n != 1 {
		t.Fatalf("%d messages stored, want 1", n)
	}
	low.Store(false)
	if code, text := send(); code != 250 {
		t.Fatalf("room again: %d %s", code, text)
	}
}
