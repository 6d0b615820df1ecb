package imap

import (
	"net"
	"strings"
	"testing"
	"time"
)

func TestIMAPBadInput(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", testMessage(1))
	r := e.rawLogin()
	r.ok("SELECT INBOX")

	// Malformed commands: BAD with CLIENTBUG, the session goes on.
	r.expect("FETCH", "BAD [CLIENTBUG]")
	r.expect("FETCH 1 (FLAGS", "BAD [CLIENTBUG]")
	r.expect("FETCH 1 NOSUCHITEM", "BAD [CLIENTBUG]")
	r.expect("STORE 1 +FLAGS (\\Bogus)", "BAD [CLIENTBUG]")
	r.expect("SEARCH NOSUCHKEY", "BAD [CLIENTBUG]")
	r.expect("FROBNICATE", "BAD [CLIENTBUG]")
	r.expect("SEARCH CHARSET KOI8-R SUBJECT x", "NO [BADCHARSET")
	r.ok("NOOP")

	// Sequence numbers out of range; UIDs that do not exist are no error.
	r.expect("FETCH 2 FLAGS", "BAD [CLIENTBUG]")
	r.expect("FETCH 0 FLAGS", "BAD [CLIENTBUG]")
	r.expect("FETCH 1:4294967296 FLAGS", "BAD [CLIENTBUG]")
	r.expect("STORE 7 +FLAGS (\\Seen)", "BAD [CLIENTBUG]")
	u := r.ok("UID FETCH 99:100 FLAGS")
	if len(u) != 0 {
		t.Fatalf("UID FETCH of missing UIDs: %q", u)
	}

	// Unknown mailboxes.
	r.expect("STATUS Nope (MESSAGES)", "NO [NONEXISTENT]")
	r.expect("RENAME Nope Other", "NO [NONEXISTENT]")
	r.expect("COPY 1 Nope", "NO [TRYCREATE]")
	r.expect("MOVE 1 Nope", "NO [TRYCREATE]")
	r.expect("APPEND Nope {5}", "NO [TRYCREATE]") // refused before the data

	// Names that are not modified UTF-7, or not UTF-8.
	r.expect("CREATE &AGE", "NO [CANNOT]")  // unterminated shift
	r.expect("CREATE &AGE-", "NO [CANNOT]") // odd octets
	r.expect("CREATE &AEE-", "NO [CANNOT]") // 'A' need not be encoded
	r.expect("CREATE \"a\xff\xfeb\"", "NO [CANNOT]")
	r.expect("CREATE a//b", "NO [CANNOT]")
	r.ok("CREATE &AOQ-pfel") // "äpfel"
	u = r.ok(`LIST "" "&AOQ-*"`)
	if !hasLine(u, `"/" &AOQ-pfel`) {
		t.Fatalf("list: %q", u)
	}

	// A literal that lies about its size: it swallows what follows, the
	// command is malformed, the session stays usable.
	r.send("L1 LOGIN {10}\r\n")
	_ = r.c.SetDeadline(time.Now().Add(3 * time.Second))
	if l := r.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("continuation: %q", l)
	}
	r.send("alice\r\nX1 NOOP\r\n")
	_, tagged := r.until("L1")
	if !strings.HasPrefix(tagged, "L1 BAD") {
		t.Fatalf("lying literal: %q", tagged)
	}
	r.ok("NOOP")

	// 100 MB: refused before it is sent (synchronising literal)...
	r.expect("APPEND INBOX {104857600}", "NO [TOOBIG]")
	r.expect("CREATE {100000}", "NO [TOOBIG]")
	// ... and a too-long line.
	r.expect("NOOP "+strings.Repeat("x", 100<<10), "BAD [TOOBIG]")
	r.ok("NOOP")
	u = r.ok("STATUS INBOX (MESSAGES)")
	if !hasLine(u, "MESSAGES 1") {
		t.Fatalf("status: %q", u)
	}

	// A 100 MB LITERAL+ is refused and ends the session (the data would
	// have to be read), the server lives on.
	r.send("P1 APPEND INBOX {104857600+}\r\n")
	_, tagged = r.until("P1")
	if !strings.HasPrefix(tagged, "P1 BAD [TOOBIG]") {
		t.Fatalf("big LITERAL+: %q", tagged)
	}
	if l := r.line(); !strings.HasPrefix(l, "* BYE") {
		t.Fatalf("after big LITERAL+: %q", l)
	}
	e.rawLogin().ok("NOOP")
}

func TestIMAPVanishMidAppend(t *testing.T) {
	e := newEnv(t)
	r := e.rawLogin()
	r.send("A1 APPEND INBOX {1000}\r\n")
	if l := r.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("continuation: %q", l)
	}
	r.send(strings.Repeat("x", 500))
	r.c.Close()
	r2 := e.rawLogin()
	// The server has dropped the half-sent message: nothing stored.
	deadline := time.Now().Add(5 * time.Second)
	for {
		u := r2.ok("STATUS INBOX (MESSAGES)")
		if !hasLine(u, "MESSAGES 0") {
			t.Fatalf("half APPEND stored: %q", u)
		}
		if e.srv.sessionCount() == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := e.srv.sessionCount(); n != 1 {
		t.Fatalf("%d sessions left, want 1", n)
	}
	r2.ok("NOOP")
}

func TestIMAPTooManyBadCommands(t *testing.T) {
	e := newEnv(t)
	r := e.raw()
	// Before login, three bad commands end the session (an HTTP request
	// sent to the IMAP port, say).
	r.send("GET / HTTP/1.1\r\nHost: x\r\n\r\nAccept: y\r\n")
	var lines []string
	for {
		l, err := r.r.ReadString('\n')
		if err != nil {
			break
		}
		lines = append(lines, l)
	}
	if !hasLine(lines, "* BYE") {
		t.Fatalf("no BYE: %q", lines)
	}
	// Logged in, a wrong password is AUTHENTICATIONFAILED, and three end it.
	r = e.raw()
	r.expect("LOGIN alice@example.org wrong", "NO [AUTHENTICATIONFAILED]")
	r.expect("LOGIN nobody@example.org wrong", "NO [AUTHENTICATIONFAILED]")
	r.cmd("LOGIN alice@example.org wrong")
	if _, err := r.r.ReadString('\n'); err == nil {
		t.Fatal("session survived three failed logins")
	}
}

func TestIMAPLoginPrivacy(t *testing.T) {
	e := newEnv(t)
	// A connection that is not loopback must not get LOGIN in clear: we
	// fake the remote address.
	c1, c2 := net.Pipe()
	defer c1.Close()
	s := newSession(e.srv, fakeRemote{c2})
	e.srv.init()
	go s.run()
	r := &raw{t: t, c: c1}
	r.r = newReader(c1)
	if l := r.line(); !strings.Contains(l, "LOGINDISABLED") || !strings.Contains(l, "STARTTLS") {
		t.Fatalf("greeting: %q", l)
	}
	r.expect("LOGIN alice@example.org \""+testPassword+"\"", "NO [PRIVACYREQUIRED]")
	r.expect("AUTHENTICATE PLAIN", "NO [PRIVACYREQUIRED]")
	r.ok("LOGOUT")
}
