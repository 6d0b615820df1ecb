package pop3store

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xdg-go/scram"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/pop3"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// TestPOP3CleartextPolicy: PLAIN and LOGIN only where a password may go in
// clear; SCRAM-SHA-256 everywhere; no CRAM-MD5 unless configured.
func TestPOP3CleartextPolicy(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	names := func(ok bool) []string {
		var out []string
		for name := range s.backend.SASL(context.Background(), pop3.ConnInfo{PasswordOK: ok}) {
			out = append(out, name)
		}
		slices.Sort(out)
		return out
	}
	if got := names(false); !slices.Equal(got, []string{"SCRAM-SHA-256"}) {
		t.Errorf("mechanisms without TLS: %q", got)
	}
	if got := names(true); !slices.Equal(got, []string{"LOGIN", "PLAIN", "SCRAM-SHA-256"}) {
		t.Errorf("mechanisms with TLS: %q", got)
	}
	// USER/PASS is refused on an insecure connection even if the session
	// let it through.
	if _, err := s.backend.Login(context.Background(), pop3.ConnInfo{}, testUser, testPassword); !errors.Is(err, pop3.ErrAuthFailed) {
		t.Errorf("Login without PasswordOK: %v, want ErrAuthFailed", err)
	}
}

// TestPOP3NoAPOP: a Backend offers no APOP unless wrapped by WithAPOP.
func TestPOP3NoAPOP(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	if _, ok := any(s.backend).(pop3.APOPBackend); ok {
		t.Fatal("the backend implements APOP")
	}
	c := s.dial(t)
	c.expect("APOP "+testUser+" 0123456789abcdef0123456789abcdef", "-ERR APOP not supported")
	c.login()
	c.expect("QUIT", "+OK")
}

// TestPOP3AuthFailures: a wrong password and an unknown user get the same
// answer; a session logs in after failures.
func TestPOP3AuthFailures(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	c := s.dial(t)
	c.expect("USER "+testUser, "+OK")
	wrong := c.expect("PASS wrong password", "-ERR [AUTH]")
	c.expect("USER nobody@example.org", "+OK")
	unknown := c.expect("PASS "+testPassword, "-ERR [AUTH]")
	if wrong != unknown {
		t.Errorf("wrong password %q, unknown user %q: they must look the same", wrong, unknown)
	}
	c.expect("AUTH PLAIN "+b64("\x00"+testUser+"\x00nope"), "-ERR [AUTH]")
	c = s.dial(t) // three failures close a session
	c.expect("USER not-an-address", "+OK")
	c.expect("PASS "+testPassword, "-ERR [AUTH]")
	c.expect("USER ALICE@Example.ORG", "+OK") // addresses are case-insensitive
	c.expect("PASS "+testPassword, "+OK")
	c.expect("QUIT", "+OK")
}

// TestPOP3SASL logs in with PLAIN, LOGIN and SCRAM-SHA-256 (RFC 5034).
func TestPOP3SASL(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)

	c := s.dial(t)
	c.expect("AUTH PLAIN "+b64("\x00"+testUser+"\x00"+testPassword), "+OK")
	c.expect("STAT", fmt.Sprintf("+OK %d ", len(testMessages)))
	c.expect("QUIT", "+OK")

	c = s.dial(t)
	c.expect("AUTH LOGIN", "+ "+b64("Username:"))
	c.expect(b64(testUser), "+ "+b64("Password:"))
	c.expect(b64(testPassword), "+OK")
	c.expect("QUIT", "+OK")

	// A PLAIN exchange asking to act as someone else is refused.
	c = s.dial(t)
	c.expect("AUTH PLAIN "+b64("bob@example.org\x00"+testUser+"\x00"+testPassword), "-ERR [AUTH]")

	for _, pw := range []string{testPassword, "wrong"} {
		client, err := scram.SHA256.NewClient(testUser, pw, "")
		if err != nil {
			t.Fatal(err)
		}
		conv := client.NewConversation()
		first, err := conv.Step("")
		if err != nil {
			t.Fatal(err)
		}
		c = s.dial(t)
		r := c.expect("AUTH SCRAM-SHA-256 "+b64(first), "+ ")
		chal, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(r, "+ "))
		if err != nil {
			t.Fatal(err)
		}
		final, err := conv.Step(string(chal))
		if err != nil {
			t.Fatal(err)
		}
		r = c.cmd(b64(final))
		if pw != testPassword {
			if !strings.HasPrefix(r, "-ERR [AUTH]") {
				t.Fatalf("SCRAM with a wrong password: %q", r)
			}
			continue
		}
		// The server's signature comes as a last challenge (RFC 5034
		// section 4), answered with an empty line.
		if !strings.HasPrefix(r, "+ ") {
			t.Fatalf("SCRAM final: %q", r)
		}
		chal, _ = base64.StdEncoding.DecodeString(strings.TrimPrefix(r, "+ "))
		if _, err := conv.Step(string(chal)); err != nil || !conv.Valid() {
			t.Fatalf("server signature not valid: %v", err)
		}
		c.expect("", "+OK")
		c.expect("QUIT", "+OK")
	}
}

// TestPOP3LockIsExclusive: while one session (on node n1) holds the maildrop,
// another (on n2) is refused with IN-USE, and is let in after QUIT.
func TestPOP3LockIsExclusive(t *testing.T) {
	e := newEnv(t)
	n1, n2 := e.serve("n1", nil), e.serve("n2", nil)
	a := n1.dial(t)
	a.login()
	b := n2.dial(t)
	if r := b.tryLogin(); r != "-ERR [IN-USE] maildrop already locked" {
		t.Fatalf("second session: %q", r)
	}
	// On the same node too.
	if err := loginWorks(t, n1); err == nil || !strings.Contains(err.Error(), "[IN-USE]") {
		t.Fatalf("second session on the same node: %v", err)
	}
	a.expect("QUIT", "+OK")
	// QUIT answers after the release is committed: no waiting needed.
	if r := b.tryLogin(); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("after the first session's QUIT: %q", r)
	}
	b.expect("QUIT", "+OK")
}

// TestPOP3DroppedSessionDeletesNothing: DELE then a dropped connection leaves
// every message, and releases the lock.
func TestPOP3DroppedSessionDeletesNothing(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	before := e.uids()
	a := s.dial(t)
	a.login()
	a.expect("DELE 1", "+OK")
	a.expect("DELE 2", "+OK")
	a.conn.Close()
	waitFor(t, testTimeout, "the dropped session's lock released", func() error { return loginWorks(t, s) })
	if got := e.uids(); !slices.Equal(got, before) {
		t.Fatalf("after a dropped session the INBOX holds %v, want %v", got, before)
	}
}

// TestPOP3DeleteExactlyMarked: QUIT removes the marked messages and no other,
// not one delivered during the session, and copes with a marked message
// removed meanwhile by another client.
func TestPOP3DeleteExactlyMarked(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	mb, _ := e.inbox()
	uids := e.uids()
	a := s.dial(t)
	a.login()
	late := e.deliver("Subject: late\r\n\r\narrived during the session\r\n")
	// Another client (IMAP) expunges message 3 during the session.
	clustertest.Propose(t, e.node, &command.Expunge{UserID: e.user.ID, MailboxID: mb.ID, UIDs: []uint32{uids[2]}})

	a.expect("STAT", fmt.Sprintf("+OK %d ", len(uids))) // the listing taken at login
	a.expect("RETR 3", "-ERR message was removed by another client")
	a.expect("DELE 1", "+OK")
	a.expect("DELE 3", "+OK")
	a.expect("RSET", "+OK")
	a.expect("DELE 3", "+OK")
	a.expect("DELE 1", "+OK")
	a.expect("QUIT", "+OK")
	if got, want := e.uids(), []uint32{uids[1], late}; !slices.Equal(got, want) {
		t.Fatalf("INBOX holds %v, want %v", got, want)
	}
	// The next session sees the late message under a new unique-id.
	b := s.dial(t)
	b.login()
	b.send("UIDL")
	b.line()
	want := []string{fmt.Sprintf("1 %d.%d", mb.UIDValidity, uids[1]), fmt.Sprintf("2 %d.%d", mb.UIDValidity, late)}
	if got := b.multi(); !slices.Equal(got, want) {
		t.Fatalf("UIDL %q, want %q", got, want)
	}
	b.expect("QUIT", "+OK")
}

// TestPOP3LeaseIsRenewed: a session outlives its lease many times over and
// still holds the maildrop.
func TestPOP3LeaseIsRenewed(t *testing.T) {
	e := newEnv(t)
	const lease = time.Second
	short := func(c *Config) { c.Lease, c.RenewEvery = lease, 100*time.Millisecond }
	n1, n2 := e.serve("n1", short), e.serve("n2", short)
	a := n1.dial(t)
	a.login()
	start := time.Now()
	waitFor(t, testTimeout, "three lease terms of renewals", func() error {
		if n := n1.node.lockWrites.Load(); n < 6 || time.Since(start) < 3*lease {
			return fmt.Errorf("%d lock writes after %s", n, time.Since(start))
		}
		return nil
	})
	if err := loginWorks(t, n2); err == nil || !strings.Contains(err.Error(), "[IN-USE]") {
		t.Fatalf("second session after three lease terms: %v", err)
	}
	a.expect("DELE 1", "+OK")
	a.expect("QUIT", "+OK")
	if got := len(e.uids()); got != len(testMessages)-1 {
		t.Fatalf("%d messages left, want %d", got, len(testMessages)-1)
	}
}

// TestPOP3LeaseLapses: a node that stops renewing (dead, or cut off from the
// cluster) loses the maildrop once its lease runs out: another node takes
// it, and the old session deletes nothing even though it can still write.
func TestPOP3LeaseLapses(t *testing.T) {
	e := newEnv(t)
	const lease = 800 * time.Millisecond
	short := func(c *Config) { c.Lease, c.RenewEvery = lease, 200*time.Millisecond }
	n1, n2 := e.serve("n1", short), e.serve("n2", short)
	before := e.uids()
	a := n1.dial(t)
	locked := time.Now()
	a.login()
	n1.node.setFailWrite(failLease(fmt.Errorf("%w: injected", cluster.ErrUnavailable)))
	a.expect("DELE 1", "+OK")

	waitFor(t, testTimeout, "n2 takes the maildrop", func() error { return loginWorks(t, n2) })
	if waited := time.Since(locked); waited < lease {
		t.Fatalf("n2 took the maildrop %s after n1 locked it, before the lease of %s ran out", waited, lease)
	}
	waitFor(t, testTimeout, "n1 notices the lost lease", func() error {
		if !strings.Contains(n1.logs.String(), "lease lost") {
			return errors.New("not logged yet")
		}
		return nil
	})
	if got := a.cmd("QUIT"); got != "-ERR [SYS/TEMP] some deleted messages not removed" {
		t.Fatalf("QUIT after the lease was lost: %q", got)
	}
	if got := e.uids(); !slices.Equal(got, before) {
		t.Fatalf("INBOX holds %v, want %v", got, before)
	}
}

// TestPOP3LeaseTakenOver: a renewal that finds another session holding the
// lock loses the lease at once.
func TestPOP3LeaseTakenOver(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", func(c *Config) { c.Lease, c.RenewEvery = 10*time.Second, 100*time.Millisecond })
	a := s.dial(t)
	a.login()
	// Put somebody else's lock in the state, as if the lease had lapsed
	// and another node had taken it; the session's renewals fail
	// (transiently) meanwhile, so that none slips in between.
	s.node.setFailWrite(failLease(fmt.Errorf("%w: injected", cluster.ErrUnavailable)))
	clustertest.Propose(t, e.node, &command.PopUnlock{UserID: e.user.ID, Token: lockToken(t, s)})
	clustertest.Propose(t, e.node, &command.PopLock{UserID: e.user.ID, Node: "intruder", Token: 1,
		Until: time.Now().Add(time.Minute).UnixNano()})
	s.node.setFailWrite(nil)
	// The next renewal fails with ErrLocked: the lease is lost.
	waitFor(t, testTimeout, "the renewal notices", func() error {
		if !strings.Contains(s.logs.String(), "taken over") {
			return errors.New("not yet")
		}
		return nil
	})
	a.expect("DELE 1", "+OK")
	a.expect("QUIT", "-ERR [SYS/TEMP] some deleted messages not removed")
	if got := len(e.uids()); got != len(testMessages) {
		t.Fatalf("%d messages left, want %d", got, len(testMessages))
	}
}

// lockToken finds the token of the one maildrop session on s in its log.
func lockToken(t *testing.T, s *server) uint64 {
	t.Helper()
	for _, line := range strings.Split(s.logs.String(), "\n") {
		if _, rest, ok := strings.Cut(line, "maildrop locked"); ok {
			var tok uint64
			if _, err := fmt.Sscanf(rest[strings.Index(rest, "token=")+len("token="):], "%d", &tok); err == nil {
				return tok
			}
		}
	}
	t.Fatal("no lock token in the log")
	return 0
}

// TestPOP3ClusterUnavailable: without a leader a login is refused as
// temporary, never as bad credentials.
func TestPOP3ClusterUnavailable(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	unavailable := fmt.Errorf("%w: injected", cluster.ErrUnavailable)
	s.node.setFailWrite(func(command.Command) error { return unavailable })
	s.node.setFailRead(unavailable)
	c := s.dial(t)
	if r := c.tryLogin(); r != "-ERR [SYS/TEMP] cluster unavailable, try again later" {
		t.Fatalf("login without a leader: %q", r)
	}
	// An unknown name needs a linearizable read, which fails the same way.
	c.expect("USER nobody@example.org", "+OK")
	c.expect("PASS whatever", "-ERR [SYS/TEMP] cluster unavailable")

	s.node.setFailWrite(nil)
	s.node.setFailRead(nil)
	waitFor(t, testTimeout, "login once the cluster is back", func() error { return loginWorks(t, s) })
}
