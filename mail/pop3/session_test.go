package pop3

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestGreetingAndCapa(t *testing.T) {
	ts := newTestServer(t, nil)
	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	greeting := c.readLine()
	if !regexp.MustCompile(`^\+OK .*<[0-9a-f]+@pop\.test>$`).MatchString(greeting) {
		t.Fatalf("greeting %q lacks an APOP timestamp", greeting)
	}

	want := []string{"TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
		"SASL PLAIN X-FINAL", "STLS", "EXPIRE NEVER", "IMPLEMENTATION Flotilla"}
	if got := c.okMulti("CAPA"); !slices.Equal(got, want) {
		t.Errorf("CAPA before login:\n got %q\nwant %q", got, want)
	}
	if got := c.okMulti("capa"); !slices.Equal(got, want) {
		t.Errorf("lower-case capa: got %q", got)
	}
	c.login("alice", "secret")
	want = []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER", "IMPLEMENTATION Flotilla"}
	if got := c.okMulti("CAPA"); !slices.Equal(got, want) {
		t.Errorf("CAPA after login:\n got %q\nwant %q", got, want)
	}
	c.ok("QUIT")
	c.expectClosed()
}

func TestExpireAndNoAPOP(t *testing.T) {
	ts := newTestServer(t, func(s *Server, b *memBackend) {
		s.Backend = b // no APOP
		s.Expire = "30"
		s.TLSConfig = nil
		s.SASL = nil
	})
	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	if g := c.readLine(); strings.Contains(g, "<") {
		t.Errorf("greeting %q offers APOP", g)
	}
	want := []string{"TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE 30", "IMPLEMENTATION Flotilla"}
	if got := c.okMulti("CAPA"); !slices.Equal(got, want) {
		t.Errorf("CAPA:\n got %q\nwant %q", got, want)
	}
	c.fail("APOP alice 0123456789abcdef0123456789abcdef", "-ERR APOP not supported")
	c.fail("STLS", "-ERR STLS not available")
	c.fail("AUTH PLAIN", "-ERR unsupported")
	c.ok("QUIT")
}

func TestTransaction(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.ok("USER alice")
	r := c.ok("PASS secret")
	total := len(msgHello) + len(msgDots)
	if want := fmt.Sprintf("2 messages (%d octets)", total); !strings.HasSuffix(r, want) {
		t.Errorf("PASS reply %q, want suffix %q", r, want)
	}
	if r := c.ok("STAT"); r != fmt.Sprintf("+OK 2 %d", total) {
		t.Errorf("STAT: %q", r)
	}
	wantList := []string{fmt.Sprintf("1 %d", len(msgHello)), fmt.Sprintf("2 %d", len(msgDots))}
	if got := c.okMulti("LIST"); !slices.Equal(got, wantList) {
		t.Errorf("LIST: %q, want %q", got, wantList)
	}
	if r := c.ok("LIST 2"); r != "+OK "+wantList[1] {
		t.Errorf("LIST 2: %q", r)
	}
	if got := c.okMulti("UIDL"); !slices.Equal(got, []string{"1 alice-1", "2 alice-2"}) {
		t.Errorf("UIDL: %q", got)
	}
	if r := c.ok("UIDL 1"); r != "+OK 1 alice-1" {
		t.Errorf("UIDL 1: %q", r)
	}
	if r := c.ok("RETR 1"); r != fmt.Sprintf("+OK %d octets", len(msgHello)) {
		t.Errorf("RETR 1: %q", r)
	}
	if got, want := strings.Join(c.multi(), "\r\n")+"\r\n", msgHello; got != want {
		t.Errorf("RETR 1 body %q, want %q", got, want)
	}
	if got := c.okMulti("TOP 1 0"); !slices.Equal(got, []string{"From: bob@example.org", "Subject: hello", ""}) {
		t.Errorf("TOP 1 0: %q", got)
	}
	if got := c.okMulti("TOP 1 1"); !slices.Equal(got, []string{"From: bob@example.org", "Subject: hello", "", "Hi Alice."}) {
		t.Errorf("TOP 1 1: %q", got)
	}
	if got := c.okMulti("TOP 1 99999999999999999999999"); len(got) != 5 {
		t.Errorf("TOP 1 <huge>: %q", got)
	}

	c.ok("DELE 1")
	if r := c.ok("STAT"); r != fmt.Sprintf("+OK 1 %d", len(msgDots)) {
		t.Errorf("STAT after DELE: %q", r)
	}
	if got := c.okMulti("LIST"); !slices.Equal(got, wantList[1:]) {
		t.Errorf("LIST after DELE: %q", got)
	}
	if got := c.okMulti("UIDL"); !slices.Equal(got, []string{"2 alice-2"}) {
		t.Errorf("UIDL after DELE: %q", got)
	}
	for _, cmd := range []string{"LIST 1", "UIDL 1", "RETR 1", "TOP 1 0", "DELE 1"} {
		c.fail(cmd, "-ERR message 1 already deleted")
	}
	if r := c.ok("RSET"); !strings.Contains(r, "2 messages") {
		t.Errorf("RSET: %q", r)
	}
	c.ok("LIST 1")
	c.ok("NOOP")
	c.ok("DELE 2")
	if r := c.ok("QUIT"); !strings.Contains(r, "1 messages left") {
		t.Errorf("QUIT: %q", r)
	}
	c.expectClosed()
	if got := ts.backend.messages("alice"); !slices.Equal(got, []string{"alice-1"}) {
		t.Errorf("after QUIT the maildrop holds %q, want [alice-1]", got)
	}

	// A second session sees the new state.
	c = ts.dial(t)
	c.login("alice", "secret")
	if got := c.okMulti("UIDL"); !slices.Equal(got, []string{"1 alice-1"}) {
		t.Errorf("UIDL in next session: %q", got)
	}
	c.ok("QUIT")
}

func TestByteStuffing(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.login("alice", "secret")
	c.send("RETR 2")
	c.readLine()
	var raw strings.Builder
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		raw.WriteString(l)
		if l == ".\r\n" {
			break
		}
	}
	want := "Subject: dots\r\n\r\n..\r\n...\r\n..leading\r\nbare\r\nlf\r\nno final newline\r\n.\r\n"
	if raw.String() != want {
		t.Errorf("RETR 2 sent\n%q\nwant\n%q", raw.String(), want)
	}
	if got := c.okMulti("TOP 2 2"); !slices.Equal(got, []string{"Subject: dots", "", "..", "..."}) {
		t.Errorf("TOP 2 2: %q", got)
	}
	c.ok("QUIT")
}

func TestBadInput(t *testing.T) {
	ts := newTestServer(t, func(s *Server, _ *memBackend) { s.MaxErrors = 1000 })
	c := ts.dial(t)

	for _, tc := range []struct{ cmd, want string }{
		{"", "-ERR empty command"},
		{"XYZZY", "-ERR unknown command"},
		{"RETRIEVE 1", "-ERR unknown command"},
		{"ST@T", "-ERR unknown command"},
		{" STAT", "-ERR unknown command"},
		{"STAT\x00", "-ERR invalid characters"},
		{"USER a\x01b", "-ERR invalid characters"},
		{"STAT", "-ERR not authenticated"},
		{"RETR 1", "-ERR not authenticated"},
		{"NOOP", "-ERR not authenticated"},
		{"PASS secret", "-ERR send USER first"},
		{"USER", "-ERR missing argument"},
		{"USER    ", "-ERR missing argument"},
		{"CAPA x", "-ERR too many arguments"},
		{"QUIT now", "-ERR too many arguments"},
		{"APOP alice", "-ERR missing argument"},
		{"AUTH PLAIN a b", "-ERR too many arguments"},
		{"AUTH NOPE", "-ERR unsupported authentication mechanism"},
		{"AUTH PLAIN !!!", "-ERR invalid base64"},
		{"STLS now", "-ERR too many arguments"},
	} {
		c.fail(tc.cmd, tc.want)
	}

	c.login("alice", "secret")
	for _, tc := range []struct{ cmd, want string }{
		{"USER alice", "-ERR command not valid after authentication"},
		{"PASS secret", "-ERR command not valid after authentication"},
		{"APOP a b", "-ERR command not valid after authentication"},
		{"AUTH PLAIN", "-ERR command not valid after authentication"},
		{"STLS", "-ERR command not valid after authentication"},
		{"STAT 1", "-ERR too many arguments"},
		{"LIST 1 2", "-ERR too many arguments"},
		{"LIST 0", "-ERR no such message"},
		{"LIST 3", "-ERR no such message"},
		{"LIST -1", "-ERR invalid message number"},
		{"LIST +1", "-ERR invalid message number"},
		{"LIST 1x", "-ERR invalid message number"},
		{"LIST x", "-ERR invalid message number"},
		{"LIST 1.0", "-ERR invalid message number"},
		{"LIST 99999999999999999999999999", "-ERR no such message"},
		{"UIDL 0", "-ERR no such message"},
		{"UIDL abc", "-ERR invalid message number"},
		{"RETR", "-ERR missing argument"},
		{"RETR 0", "-ERR no such message"},
		{"RETR -5", "-ERR invalid message number"},
		{"RETR 1 2", "-ERR too many arguments"},
		{"TOP 1", "-ERR missing argument"},
		{"TOP 1 -1", "-ERR invalid number of lines"},
		{"TOP 1 x", "-ERR invalid number of lines"},
		{"TOP 9 1", "-ERR no such message"},
		{"TOP 1 1 1", "-ERR too many arguments"},
		{"DELE", "-ERR missing argument"},
		{"DELE 3", "-ERR no such message"},
		{"DELE one", "-ERR invalid message number"},
		{"RSET 1", "-ERR too many arguments"},
		{"NOOP 1", "-ERR too many arguments"},
		{"XTND XMIT", "-ERR unknown command"},
		{"LAST", "-ERR unknown command"},
	} {
		c.fail(tc.cmd, tc.want)
	}
	// Extra spaces and lower case are tolerated; LF alone ends a line.
	if r := c.ok("list   1"); r != fmt.Sprintf("+OK 1 %d", len(msgHello)) {
		t.Errorf("list   1: %q", r)
	}
	if _, err := c.conn.Write([]byte("NOOP\n")); err != nil {
		t.Fatal(err)
	}
	if r := c.readLine(); r != "+OK" {
		t.Errorf("NOOP with bare LF: %q", r)
	}
	c.ok("QUIT")
	if got := ts.backend.messages("alice"); len(got) != 2 {
		t.Errorf("bad input deleted messages: %q", got)
	}
}

func TestLineTooLong(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	// 255 octets with CRLF pass, 256 do not.
	c.fail("USER "+strings.Repeat("a", 248), "+OK")
	c.fail("USER "+strings.Repeat("a", 249), "-ERR line too long")
	c.fail("NOOP "+strings.Repeat("x", 5000), "-ERR line too long")
	// Past the SASL limit, the line is discarded too.
	c.fail("AUTH PLAIN "+strings.Repeat("A", DefaultMaxSASLLineLength), "-ERR line too long")
	// The session goes on.
	c.login("alice", "secret")
	c.ok("STAT")
	c.ok("QUIT")

	// A line that does not end is cut off.
	c = ts.dial(t)
	go c.conn.Write([]byte(strings.Repeat("x", DefaultMaxSASLLineLength+maxDiscard+2*bufferSize)))
	if r := c.readLine(); r != "-ERR line too long" {
		t.Errorf("endless line: %q", r)
	}
	c.expectClosed()
}

func TestLongAuthLine(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	// AUTH lines may exceed MaxLineLength (RFC 5034 wants room for
	// whatever a mechanism sends); this one is well-formed but wrong.
	ir := base64.StdEncoding.EncodeToString([]byte("\x00alice\x00" + strings.Repeat("p", 2000)))
	c.fail("AUTH PLAIN "+ir, "-ERR [AUTH]")
	ir = base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret"))
	c.ok("AUTH PLAIN " + ir)
	c.ok("QUIT")
}

func TestMaxErrors(t *testing.T) {
	ts := newTestServer(t, func(s *Server, _ *memBackend) { s.MaxErrors = 3 })
	c := ts.dial(t)
	c.fail("BAD", "-ERR")
	c.ok("CAPA")
	c.multi()
	c.fail("BAD", "-ERR")
	c.fail("BAD", "-ERR")
	c.fail("BAD", "-ERR unknown command")
	if r := c.readLine(); r != "-ERR too many errors, closing connection" {
		t.Errorf("after 3 errors: %q", r)
	}
	c.expectClosed()
}

func TestAuthFailures(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	c.ok("USER alice")
	c.fail("PASS wrong", "-ERR [AUTH] authentication failed")
	c.fail("PASS secret", "-ERR send USER first") // a failure forgets USER
	c.ok("USER nobody")
	c.fail("PASS secret", "-ERR [AUTH] authentication failed")
	c.ok("USER bob") // +OK does not reset the count of failures
	c.fail("APOP alice 0123456789abcdef0123456789abcdef", "-ERR [AUTH] authentication failed")
	if r := c.readLine(); !strings.HasPrefix(r, "-ERR [AUTH] too many authentication failures") {
		t.Errorf("after 3 failures: %q", r)
	}
	c.expectClosed()
}

func TestAPOP(t *testing.T) {
	ts := newTestServer(t, nil)
	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	banner := regexp.MustCompile(`<.*>`).FindString(c.readLine())
	sum := md5.Sum([]byte(banner + "secret"))
	c.fail("APOP alice "+hex.EncodeToString(sum[:])[1:], "-ERR [AUTH]")
	c.fail("APOP alice "+strings.Repeat("0", 32), "-ERR [AUTH]")
	c.ok("APOP alice " + strings.ToUpper(hex.EncodeToString(sum[:])))
	c.ok("STAT")
	c.ok("QUIT")
}

func TestLockRefused(t *testing.T) {
	ts := newTestServer(t, nil)
	c1 := ts.dial(t)
	c1.login("alice", "secret")
	c1.ok("DELE 1")

	c2 := ts.dial(t)
	c2.ok("USER alice")
	c2.fail("PASS secret", "-ERR [IN-USE] maildrop already locked")
	c2.fail("STAT", "-ERR not authenticated")
	c2.fail("AUTH PLAIN "+base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret")), "-ERR [IN-USE]")

	c1.ok("QUIT")
	c1.expectClosed()
	// The maildrop is unlocked once QUIT has been answered.
	c2.ok("USER alice")
	r := c2.ok("PASS secret")
	if !strings.Contains(r, " 1 messages") {
		t.Errorf("second session after first QUIT: %q", r)
	}
	c2.ok("QUIT")
}

func TestDroppedConnectionDeletesNothing(t *testing.T) {
	ts := newTestServer(t, nil)
	box := ts.backend.boxes["alice"]
	c := ts.dial(t)
	c.login("alice", "secret")
	c.ok("DELE 1")
	c.ok("DELE 2")
	c.conn.Close()
	waitClosed(t, box, 1)
	if got := ts.backend.messages("alice"); len(got) != 2 {
		t.Errorf("a dropped connection deleted messages: left %q", got)
	}
	if box.deletes != 0 {
		t.Errorf("Delete called %d times", box.deletes)
	}

	// Same with QUIT sent but the connection dropped mid-RETR: the QUIT
	// is never read.
	c = ts.dial(t)
	c.login("alice", "secret")
	c.ok("DELE 1")
	c.send("RETR 2")
	c.conn.Close()
	waitClosed(t, box, 1)
	if got := ts.backend.messages("alice"); len(got) != 2 {
		t.Errorf("a dropped connection deleted messages: left %q", got)
	}
}

func TestQuitDeleteFails(t *testing.T) {
	ts := newTestServer(t, func(_ *Server, b *memBackend) { b.deleteErr = errors.New("store down") })
	c := ts.dial(t)
	c.login("alice", "secret")
	c.ok("DELE 1")
	c.fail("QUIT", "-ERR [SYS/TEMP] some deleted messages not removed")
	c.expectClosed()
}

func TestBackendErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		configure func(*Server, *memBackend)
		want      string
	}{
		{"login delay", func(_ *Server, b *memBackend) { b.loginErr = fmt.Errorf("wait: %w", ErrLoginDelay) }, "-ERR [LOGIN-DELAY] "},
		{"own code", func(_ *Server, b *memBackend) { b.loginErr = &Error{Code: "SYS/PERM", Text: "account\r\nmoved"} }, "-ERR [SYS/PERM] account  moved"},
		{"internal", func(_ *Server, b *memBackend) { b.loginErr = errors.New("db on fire") }, "-ERR [SYS/TEMP] authentication failed"},
		{"bad uidl", func(_ *Server, b *memBackend) { b.badList = []Message{{UIDL: "a b", Size: 1}} }, "-ERR [SYS/TEMP] maildrop unavailable"},
		{"dup uidl", func(_ *Server, b *memBackend) { b.badList = []Message{{UIDL: "a", Size: 1}, {UIDL: "a", Size: 1}} }, "-ERR [SYS/TEMP] maildrop unavailable"},
		{"long uidl", func(_ *Server, b *memBackend) { b.badList = []Message{{UIDL: strings.Repeat("u", 71)}} }, "-ERR [SYS/TEMP] maildrop unavailable"},
		{"negative size", func(_ *Server, b *memBackend) { b.badList = []Message{{UIDL: "u", Size: -1}} }, "-ERR [SYS/TEMP] maildrop unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := newTestServer(t, tc.configure)
			c := ts.dial(t)
			c.ok("USER alice")
			c.fail("PASS secret", tc.want)
			c.fail("STAT", "-ERR not authenticated")
			c.ok("QUIT")
		})
	}
}

func TestPipelining(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	cmds := []string{"CAPA", "USER alice", "PASS secret", "STAT", "LIST", "UIDL 1", "RETR 1", "BOGUS", "TOP 2 0", "DELE 1", "NOOP", "QUIT"}
	if _, err := c.conn.Write([]byte(strings.Join(cmds, "\r\n") + "\r\n")); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range cmds {
		r := c.readLine()
		if cmd == "BOGUS" {
			if r != "-ERR unknown command" {
				t.Fatalf("%s: %q", cmd, r)
			}
			continue
		}
		if !strings.HasPrefix(r, "+OK") {
			t.Fatalf("%s: %q", cmd, r)
		}
		switch cmd {
		case "CAPA", "LIST", "RETR 1", "TOP 2 0":
			c.multi()
		}
	}
	c.expectClosed()
	if got := ts.backend.messages("alice"); !slices.Equal(got, []string{"alice-2"}) {
		t.Errorf("left %q", got)
	}

	// A partial line after whole commands must not hold back the replies.
	c = ts.dial(t)
	if _, err := c.conn.Write([]byte("CAPA\r\nQU")); err != nil {
		t.Fatal(err)
	}
	c.readLine()
	c.multi()
	if r := c.cmd("IT"); r != "+OK bye" {
		t.Errorf("QUIT in two pieces: %q", r)
	}
}

func plainIR(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
}

func TestSASL(t *testing.T) {
	ts := newTestServer(t, func(s *Server, _ *memBackend) { s.MaxAuthFailures = 100 })
	c := ts.dial(t)

	if got := c.okMulti("AUTH"); !slices.Equal(got, []string{"PLAIN", "X-FINAL"}) {
		t.Errorf("AUTH list: %q", got)
	}
	c.fail("AUTH PLAIN "+plainIR("alice", "wrong"), "-ERR [AUTH] authentication failed")
	c.fail("AUTH PLAIN =", "-ERR [AUTH]") // empty initial response
	c.fail("AUTH PLAIN YWxpY2U", "-ERR invalid base64")

	// Without initial response: an empty challenge first.
	c.fail("AUTH PLAIN", "+ ")
	c.fail("*", "-ERR authentication cancelled")
	c.fail("AUTH plain", "+ ")
	c.fail("%%%", "-ERR invalid base64")
	c.fail("AUTH PLAIN", "+ ")
	c.fail(strings.Repeat("A", DefaultMaxSASLLineLength+10), "-ERR line too long")
	c.ok("USER alice") // the session is back to commands

	// Additional data with success comes as a last challenge.
	c.fail("AUTH X-FINAL", "+ "+base64.StdEncoding.EncodeToString([]byte("who?")))
	c.fail(base64.StdEncoding.EncodeToString([]byte("alice")), "+ "+base64.StdEncoding.EncodeToString([]byte("welcome alice")))
	c.fail("eA==", "-ERR [AUTH]") // must be empty
	c.fail("AUTH X-FINAL", "+ ")
	c.fail(base64.StdEncoding.EncodeToString([]byte("alice")), "+ ")
	c.ok("")
	c.ok("STAT")
	c.ok("QUIT")

	c = ts.dial(t)
	c.fail("AUTH PLAIN", "+ ")
	c.ok(plainIR("alice", "secret"))
	c.ok("QUIT")

	c = ts.dial(t)
	c.ok("AUTH PLAIN " + plainIR("bob", "hunter2"))
	if r := c.ok("STAT"); r != "+OK 0 0" {
		t.Errorf("bob's STAT: %q", r)
	}
	c.ok("QUIT")
}

func TestCleartextPolicy(t *testing.T) {
	ts := newTestServer(t, func(s *Server, _ *memBackend) { s.noLoopbackExemption = true })
	c := ts.dial(t)
	want := []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL X-FINAL", "STLS", "EXPIRE NEVER", "IMPLEMENTATION Flotilla"}
	if got := c.okMulti("CAPA"); !slices.Equal(got, want) {
		t.Errorf("CAPA in the clear:\n got %q\nwant %q", got, want)
	}
	c.fail("USER alice", "-ERR [AUTH] cleartext login not allowed here; use STLS first")
	c.fail("PASS secret", "-ERR send USER first")
	c.fail("AUTH PLAIN "+plainIR("alice", "secret"), "-ERR unsupported")

	c.startTLS()
	want = []string{"TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "SASL PLAIN X-FINAL", "EXPIRE NEVER", "IMPLEMENTATION Flotilla"}
	if got := c.okMulti("CAPA"); !slices.Equal(got, want) {
		t.Errorf("CAPA over TLS:\n got %q\nwant %q", got, want)
	}
	c.fail("STLS", "-ERR already using TLS")
	c.login("alice", "secret")
	c.fail("STLS", "-ERR command not valid after authentication")
	c.ok("QUIT")

	// USER before STLS is forgotten.
	c = ts.dial(t)
	c.startTLS()
	c.fail("PASS secret", "-ERR send USER first")
	c.ok("QUIT")

	// AllowInsecureAuth lets it through.
	ts = newTestServer(t, func(s *Server, _ *memBackend) { s.noLoopbackExemption = true; s.AllowInsecureAuth = true })
	c = ts.dial(t)
	c.login("alice", "secret")
	c.ok("QUIT")
}

func TestSTLSInjection(t *testing.T) {
	ts := newTestServer(t, nil)
	c := ts.dial(t)
	// Commands pipelined after STLS would be taken as sent over TLS.
	if _, err := c.conn.Write([]byte("STLS\r\nUSER alice\r\nPASS secret\r\n")); err != nil {
		t.Fatal(err)
	}
	if r := c.readLine(); r != "-ERR STLS must be the last command of a pipeline" {
		t.Errorf("STLS with pipelined data: %q", r)
	}
	c.expectClosed()
}

func TestImplicitTLS(t *testing.T) {
	ts := startTestServer(t, func(s *Server, _ *memBackend) { s.noLoopbackExemption = true }, true)
	conn, err := tls.Dial("tcp", ts.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	c.readLine()
	got := c.okMulti("CAPA")
	if !slices.Contains(got, "USER") || slices.Contains(got, "STLS") {
		t.Errorf("CAPA over implicit TLS: %q", got)
	}
	c.fail("STLS", "-ERR already using TLS")
	c.login("alice", "secret")
	c.ok("QUIT")

	// Cleartext on the implicit TLS port fails the handshake.
	raw, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("USER alice\r\n"))
	raw.SetDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 100)
	if n, err := raw.Read(buf); err == nil && strings.Contains(string(buf[:n]), "+OK") {
		t.Errorf("cleartext on implicit TLS port answered: %q", buf[:n])
	}
	raw.Close()
}

func TestIdleTimeout(t *testing.T) {
	ts := newTestServer(t, func(s *Server, _ *memBackend) { s.IdleTimeout = 50 * time.Millisecond })
	box := ts.backend.boxes["alice"]
	c := ts.dial(t)
	c.login("alice", "secret")
	c.ok("DELE 1")
	// The client says nothing; the server gives up.
	if r := c.readLine(); r != "-ERR autologout: idle for too long" {
		t.Errorf("idle: %q", r)
	}
	c.expectClosed()
	waitClosed(t, box, 1)
	if got := ts.backend.messages("alice"); len(got) != 2 {
		t.Errorf("autologout deleted messages: left %q", got)
	}
}

func TestShutdown(t *testing.T) {
	b := newMemBackend()
	box := b.add("alice", "secret", msgHello)
	srv := &Server{Backend: b}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), ln) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	c.readLine()
	c.login("alice", "secret")
	c.ok("DELE 1")
	conn2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2 := newTestClient(t, conn2)
	c2.readLine()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for _, c := range []*testClient{c, c2} {
		if r := c.readLine(); r != "-ERR [SYS/TEMP] server shutting down" {
			t.Errorf("at shutdown: %q", r)
		}
		c.expectClosed()
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if len(box.msgs) != 1 || box.locked != nil {
		t.Errorf("after shutdown: %d messages, locked %v", len(box.msgs), box.locked != nil)
	}
	if err := srv.Serve(context.Background(), ln); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	b.check(t)
}

func TestShutdownDeadline(t *testing.T) {
	b := newMemBackend()
	b.add("alice", "secret", msgHello)
	entered := make(chan struct{})
	b.loginWait = func(ctx context.Context) error {
		close(entered)
		<-ctx.Done() // a backend stuck until the session is aborted
		return ctx.Err()
	}
	srv := &Server{Backend: b}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	c.readLine()
	c.ok("USER alice")
	c.send("PASS secret")
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // no grace at all
	if err := srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown: %v", err)
	}
	// The aborted session ends; a second Shutdown sees it gone.
	ctx, cancel = context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	b.check(t)
}

func TestServeContextCancel(t *testing.T) {
	b := newMemBackend()
	box := b.add("alice", "secret", msgHello)
	srv := &Server{Backend: b}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	c.readLine()
	c.login("alice", "secret")
	c.ok("DELE 1")
	cancel()
	if err := <-served; !errors.Is(err, context.Canceled) {
		t.Errorf("Serve: %v", err)
	}
	c.expectClosed()
	waitClosed(t, box, 1)
	if len(b.messages("alice")) != 1 {
		t.Error("hard stop deleted messages")
	}
	b.check(t)
}

func TestCheckAPOP(t *testing.T) {
	// RFC 1939 section 7's example.
	banner := "<1896.697170952@dbc.mtview.ca.us>"
	if !CheckAPOP(banner, "tanstaaf", "c4c9334bac560ecc979e58001b3e22fb") {
		t.Error("RFC 1939 example rejected")
	}
	if CheckAPOP(banner, "tanstaaf", "c4c9334bac560ecc979e58001b3e22fc") || CheckAPOP(banner, "tanstaaf", "") {
		t.Error("wrong digest accepted")
	}
}

func TestParseNumber(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "1": 1, "007": 7, "2147483648": 2147483648, strings.Repeat("9", 40): int(^uint(0) >> 1)} {
		if n, ok := parseNumber(in); !ok || n != want {
			t.Errorf("parseNumber(%q) = %d, %v; want %d", in, n, ok, want)
		}
	}
	for _, in := range []string{"", "-1", "+1", " 1", "1 ", "1e3", "0x10", "١"} {
		if n, ok := parseNumber(in); ok {
			t.Errorf("parseNumber(%q) = %d, want failure", in, n)
		}
	}
	if strconv.IntSize == 64 {
		if n, _ := parseNumber("9223372036854775807"); n != 1<<63-1 {
			t.Errorf("max int: %d", n)
		}
	}
}

// A client retrying through a server-side outage is not cut off as if it
// were guessing passwords: only real authentication failures count.
func TestTemporaryLoginFailuresDoNotCount(t *testing.T) {
	var outage atomic.Bool
	outage.Store(true)
	ts := newTestServer(t, func(s *Server, b *memBackend) {
		b.loginWait = func(context.Context) error {
			if outage.Load() {
				return &Error{Code: "SYS/TEMP", Text: "cluster unavailable"}
			}
			return nil
		}
	})
	c := ts.dial(t)
	for i := 0; i < 5; i++ {
		c.ok("USER alice")
		c.fail("PASS secret", "-ERR [SYS/TEMP] cluster unavailable")
	}
	outage.Store(false)
	c.ok("USER alice")
	c.ok("PASS secret")
	c.ok("QUIT")
}
