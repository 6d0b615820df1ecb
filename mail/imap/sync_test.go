package imap

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Two sessions on one mailbox: each learns of the other's changes at the
// points RFC 3501 allows, and sequence numbers stay consistent.
func TestIMAPTwoSessions(t *testing.T) {
	e := newEnv(t)
	for i := 1; i <= 4; i++ {
		e.deliver("INBOX", testMessage(i))
	}
	a, b := e.rawLogin(), e.rawLogin()
	a.ok("SELECT INBOX")
	b.ok("SELECT INBOX")

	a.ok("STORE 2 +FLAGS (\\Flagged)")
	u := b.ok("NOOP")
	if !hasLine(u, "* 2 FETCH (UID 2 FLAGS (\\Flagged))") {
		t.Fatalf("flags not announced: %q", u)
	}

	a.ok("STORE 1,3 +FLAGS.SILENT (\\Deleted)")
	u = a.ok("EXPUNGE")
	if strings.Join(u, "|") != "* 3 EXPUNGE|* 1 EXPUNGE" {
		t.Fatalf("expunge: %q", u)
	}
	// B is told nothing of the expunge during FETCH, and still sees 4.
	u = b.ok("FETCH 4 (UID)")
	if hasLine(u, "EXPUNGE") || !hasLine(u, "* 4 FETCH (UID 4)") {
		t.Fatalf("fetch during pending expunge: %q", u)
	}
	u = b.ok("NOOP")
	if strings.Join(u, "|") != "* 3 EXPUNGE|* 1 EXPUNGE" {
		t.Fatalf("expunge announced to b: %q", u)
	}
	u = b.ok("FETCH 1:* (UID)")
	if strings.Join(u, "|") != "* 1 FETCH (UID 2)|* 2 FETCH (UID 4)" {
		t.Fatalf("after expunge: %q", u)
	}

	// A delivery: both see EXISTS at their next command.
	e.deliver("INBOX", testMessage(5))
	for _, r := range []*raw{a, b} {
		u = r.ok("NOOP")
		if !hasLine(u, "* 3 EXISTS") {
			t.Fatalf("exists: %q", u)
		}
	}
	// MOVE out of A: B hears EXPUNGE.
	a.ok("MOVE 1 Archive")
	u = b.ok("NOOP")
	if !hasLine(u, "* 1 EXPUNGE") {
		t.Fatalf("move not announced: %q", u)
	}
	// The mailbox is deleted under B: BYE.
	a.ok("SELECT Archive")
	b.ok("SELECT Archive")
	a.ok("UNSELECT")
	a.ok("DELETE Archive")
	b.send("N1 NOOP\r\n")
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if l := b.line(); strings.HasPrefix(l, "* BYE") {
			return
		}
	}
	t.Fatal("no BYE after the selected mailbox was deleted")
}

// EXAMINE is read-only: no \Seen side effect, no STORE.
func TestIMAPExamine(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", testMessage(1))
	r := e.rawLogin()
	_, tagged := r.cmd("EXAMINE INBOX")
	if !strings.Contains(tagged, "[READ-ONLY]") {
		t.Fatal(tagged)
	}
	u := r.ok("FETCH 1 (BODY[TEXT])")
	if hasLine(u, `\Seen`) {
		t.Fatalf("EXAMINE set \\Seen: %q", u)
	}
	r.expect("STORE 1 +FLAGS (\\Seen)", "NO [CANNOT]")
	r.ok("SELECT INBOX")
	u = r.ok("FETCH 1 (BODY[TEXT])")
	if !hasLine(u, `FLAGS (\Seen)`) {
		t.Fatalf("no \\Seen after BODY[]: %q", u)
	}
	u = r.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (subject)]<0.10> RFC822.SIZE INTERNALDATE)")
	if !hasLine(u, "BODY[HEADER.FIELDS (SUBJECT)]<0> {10}Subject: m") {
		t.Fatalf("partial: %q", u)
	}
	r.ok("CLOSE")
}

// Shutdown says BYE to waiting and idling sessions at once, and LOGOUT
// leaves nothing behind in the event hub.
func TestIMAPShutdownAndLogout(t *testing.T) {
	e := newEnv(t)
	r := e.rawLogin()
	r.ok("LOGOUT")
	waitFor(t, "session gone", func() bool { return e.srv.sessionCount() == 0 })
	e.srv.hub.mu.Lock()
	n := len(e.srv.hub.users)
	e.srv.hub.mu.Unlock()
	if n != 0 {
		t.Fatalf("hub keeps %d users after LOGOUT", n)
	}

	waiting, idling := e.rawLogin(), e.rawLogin()
	idling.ok("SELECT INBOX")
	idling.send("I1 IDLE\r\n")
	if l := idling.line(); !strings.HasPrefix(l, "+") {
		t.Fatalf("idle: %q", l)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
	for _, r := range []*raw{waiting, idling} {
		if l := r.line(); !strings.HasPrefix(l, "* BYE") {
			t.Fatalf("no BYE: %q", l)
		}
	}
	if c, err := net.Dial("tcp", e.addr); err == nil {
		c.Close()
		t.Fatal("still accepting after Shutdown")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A silent STORE is answered at commit and applied later, many to a
// transaction; the session still reads its own write, because the next
// command waits for it. The node here applies nothing for an hour unless
// someone waits, so a FETCH that did not wait would see the old flags.
func TestIMAPSilentStoreIsReadBackBySameSession(t *testing.T) {
	node := clustertest.New(t, func(c *cluster.Config) { c.ApplyWindow = time.Hour })
	e := newEnvOn(t, node)
	for i := 1; i <= 3; i++ {
		e.deliver("INBOX", testMessage(i))
	}
	r := e.rawLogin()
	r.ok("SELECT INBOX")

	r.ok(`STORE 1 +FLAGS.SILENT (\Flagged)`)
	if u := r.ok("FETCH 1 (FLAGS)"); !hasLine(u, `* 1 FETCH (FLAGS (\Flagged))`) {
		t.Fatalf("FETCH after silent STORE: %q", u)
	}

	// Two in a row, then a STORE that answers FLAGS: it sees both.
	r.ok(`STORE 2 +FLAGS.SILENT (\Seen)`)
	r.ok(`STORE 2 +FLAGS.SILENT ($Tag)`)
	if u := r.ok(`STORE 2 +FLAGS (\Answered)`); !hasLine(u, `* 2 FETCH (FLAGS ($Tag \Answered \Seen))`) {
		t.Fatalf("STORE after silent STOREs: %q", u)
	}

	// The delete-then-expunge of every client, with an undelete not yet
	// applied when EXPUNGE starts: it does not wait, and keeps message 2.
	r.ok(`STORE 2 +FLAGS (\Deleted)`)
	r.ok(`STORE 2 -FLAGS.SILENT (\Deleted)`)
	r.ok(`STORE 3 +FLAGS.SILENT (\Deleted)`)
	if u := r.ok("EXPUNGE"); len(u) != 1 || u[0] != "* 3 EXPUNGE" {
		t.Fatalf("EXPUNGE after silent STORE: %q", u)
	}

	// Its own silent change is not announced to it; another session's
	// later change to the same message is.
	r.ok(`STORE 1 +FLAGS.SILENT ($Mine)`)
	if u := r.ok("NOOP"); len(u) != 0 {
		t.Fatalf("NOOP after own silent STORE: %q", u)
	}
	b := e.rawLogin()
	b.ok("SELECT INBOX")
	b.ok(`STORE 1 +FLAGS (\Seen)`)
	if u := r.ok("NOOP"); len(u) != 1 || u[0] != `* 1 FETCH (UID 1 FLAGS ($Mine \Flagged \Seen))` {
		t.Fatalf("NOOP after another session's STORE: %q", u)
	}

	// LOGOUT waits too, so a client that reconnects sees what it did.
	r.ok(`STORE 1 FLAGS.SILENT ()`)
	r.cmd("LOGOUT")
	r2 := e.rawLogin()
	r2.ok("SELECT INBOX")
	if u := r2.ok("FETCH 1 (FLAGS)"); !hasLine(u, `* 1 FETCH (FLAGS ())`) {
		t.Fatalf("FETCH in a new session after LOGOUT: %q", u)
	}
}

// racingCluster is a real node whose Propose first runs, for an expunge,
// what another session did between this session's read and its write; or
// refuses expunge-deleted as a cluster with a command-version-1 voter does.
type racingCluster struct {
	*cluster.Node
	before func()
	old    bool
}

func (c *racingCluster) Propose(ctx context.Context, cmd command.Command) (command.Response, uint64, error) {
	switch cmd.(type) {
	case *command.ExpungeDeleted:
		if c.old {
			return command.Response{}, 0, fmt.Errorf("%w: expunge-deleted needs command version 2", cluster.ErrNotSupported)
		}
		c.before()
	case *command.Expunge:
		c.before()
	}
	return c.Node.Propose(ctx, cmd)
}

// EXPUNGE removes what is \Deleted when it takes effect: a message another
// session undeleted after this one read the flags stays. With a voter that
// knows only command version 1, EXPUNGE still works, the old way.
func TestIMAPExpungeKeepsWhatWasUndeletedMeanwhile(t *testing.T) {
	for _, old := range []bool{false, true} {
		t.Run(fmt.Sprintf("version1voter=%v", old), func(t *testing.T) {
			node := clustertest.New(t)
			rc := &racingCluster{Node: node, old: old, before: func() {}}
			e := newEnvOn(t, node, func(s *Server) { s.Cluster = rc })
			for i := 1; i <= 3; i++ {
				e.deliver("INBOX", testMessage(i))
			}
			r := e.rawLogin()
			r.ok("SELECT INBOX")
			r.ok(`STORE 1:2 +FLAGS.SILENT (\Deleted)`)
			var mb storage.Mailbox
			if err := node.Store().View(func(tx *storage.Tx) error {
				var err error
				mb, err = tx.Mailbox(e.user.ID, "INBOX")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			rc.before = func() {
				rc.before = func() {}
				clustertest.Propose(t, node, &command.SetFlags{UserID: e.user.ID, MailboxID: mb.ID, UIDs: []uint32{1},
					Op: storage.FlagsRemove, Flags: []string{`\Deleted`}})
			}
			u := r.ok("EXPUNGE")
			want := "* 2 EXPUNGE|* 1 FETCH (UID 1 FLAGS ())" // and told of the undelete
			if old {
				want = "* 2 EXPUNGE|* 1 EXPUNGE" // the race the new command closes
			}
			if got := strings.Join(u, "|"); got != want {
				t.Fatalf("EXPUNGE: %q, want %q", got, want)
			}
		})
	}
}

// After a silent STORE to more messages than EXPUNGE names unapplied, it
// waits for the apply instead, and still expunges them all.
func TestIMAPExpungeAfterSilentStoreToManyMessages(t *testing.T) {
	node := clustertest.New(t, func(c *cluster.Config) { c.ApplyWindow = time.Hour })
	e := newEnvOn(t, node)
	n := maxBlindCandidates + 10
	for i := 1; i <= n; i++ {
		e.deliver("INBOX", testMessage(i))
	}
	r := e.rawLogin()
	r.ok("SELECT INBOX")
	r.ok(`STORE 1:* +FLAGS.SILENT (\Deleted)`)
	u := r.ok("EXPUNGE")
	if len(u) != n || u[0] != fmt.Sprintf("* %d EXPUNGE", n) {
		t.Fatalf("EXPUNGE: %d lines (%.60q); want %d, from * %d EXPUNGE down", len(u), u, n, n)
	}
}

// A silent STORE is answered at commit, before this node applies it, and
// without first catching up with other sessions' changes. If another
// session deleted the mailbox meanwhile, the STORE finds nothing to change
// (OK: the flags of a gone message are moot), and the session ends with
// BYE as for any deleted selected mailbox. The server and the user's other
// mailboxes carry on untouched.
func TestIMAPSilentStoreIntoMailboxDeletedMeanwhile(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", testMessage(1))
	a, b := e.rawLogin(), e.rawLogin()
	a.ok("CREATE Doomed")
	a.ok("SELECT INBOX")
	a.ok("COPY 1 Doomed")
	b.ok("SELECT Doomed")
	a.ok("DELETE Doomed")
	// The session hears of the deletion with the STORE's answer (as it
	// polls after a write) or at its next command at the latest.
	u, tagged := b.cmd("STORE 1 +FLAGS.SILENT (\\Flagged)")
	if !strings.Contains(tagged, " OK") && !strings.Contains(tagged, " NO") {
		t.Fatalf("silent STORE: %s", tagged)
	}
	bye := hasLine(u, "* BYE")
	if !bye {
		b.send("N1 NOOP\r\n")
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			if l := b.line(); strings.HasPrefix(l, "* BYE") {
				bye = true
				break
			}
		}
	}
	if !bye {
		t.Fatal("no BYE after a silent STORE into a deleted mailbox")
	}
	// INBOX's copy is as it was, and a new session works.
	c := e.rawLogin()
	if u := c.ok("SELECT INBOX"); !hasLine(u, "* 1 EXISTS") {
		t.Fatalf("INBOX after: %q", u)
	}
	if u := c.ok("FETCH 1 (FLAGS)"); !hasLine(u, "* 1 FETCH (FLAGS ())") {
		t.Fatalf("INBOX flags after: %q", u)
	}
	if u := c.ok("LIST \"\" Doomed"); len(u) != 0 {
		t.Fatalf("Doomed still listed: %q", u)
	}
}
