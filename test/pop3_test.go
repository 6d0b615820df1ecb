package test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/mail/pop3store"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// popLease is the maildrop lease the nodes run with (the default).
const popLease = pop3store.DefaultLease

// popMsg is a CRLF message ending in CRLF, with lines that need
// byte-stuffing, so that a POP3 client gets back exactly its bytes.
func popMsg(i int) string {
	return fmt.Sprintf("From: bob@example.org\r\nTo: alice@example.org\r\nSubject: pop %d\r\n\r\n.\r\n..leading dots\r\n%s", i,
		strings.Repeat(fmt.Sprintf("line of message %d\r\n", i), 50+i))
}

func popPassword(user string) string { return "pw-" + user } // as seedUser sets it

// popCluster starts a three-node cluster holding user with n messages
// imported through node n1, and returns them as every node lists them.
func popCluster(t *testing.T, user string, n int) (*harness.Cluster, []admin.Message) {
	t.Helper()
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, user)
	for i := range n {
		importMessage(t, c.Node("n1"), user, popMsg(i))
	}
	return c, waitMessages(t, c, user, n)
}

func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// popConn is a raw POP3 client.
type popConn struct {
	t    *testing.T
	node string
	conn net.Conn
	r    *bufio.Reader
}

// popDial connects to a node's POP3 port (or POP3S with implicit TLS).
func popDial(t *testing.T, n *harness.Node, implicitTLS bool) *popConn {
	t.Helper()
	var conn net.Conn
	var err error
	d := &net.Dialer{Timeout: 10 * time.Second}
	if implicitTLS {
		conn, err = tls.DialWithDialer(d, "tcp", n.Addr(harness.POP3SPort), &tls.Config{InsecureSkipVerify: true})
	} else {
		conn, err = d.Dial("tcp", n.Addr(harness.POP3Port))
	}
	if err != nil {
		t.Fatalf("%s: POP3 dial: %v", n.ID, err)
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { conn.Close() })
	c := &popConn{t: t, node: n.ID, conn: conn, r: bufio.NewReader(conn)}
	if g := c.line(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("%s: greeting %q", n.ID, g)
	}
	return c
}

func (c *popConn) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("%s: reading reply: %v (got %q)", c.node, err, l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *popConn) cmd(line string) string {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("%s: sending %q: %v", c.node, line, err)
	}
	return c.line()
}

func (c *popConn) expect(line, want string) {
	c.t.Helper()
	if r := c.cmd(line); !strings.HasPrefix(r, want) {
		c.t.Fatalf("%s: %q: got %q, want %q...", c.node, line, r, want)
	}
}

// login returns the reply to PASS.
func (c *popConn) login(user string) string {
	c.t.Helper()
	c.expect("USER "+user, "+OK")
	return c.cmd("PASS " + popPassword(user))
}

func (c *popConn) mustLogin(user string) {
	c.t.Helper()
	if r := c.login(user); !strings.HasPrefix(r, "+OK") {
		c.t.Fatalf("%s: login: %q", c.node, r)
	}
}

func (c *popConn) multi(line string) []string {
	c.t.Helper()
	c.expect(line, "+OK")
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

// popUIDLs logs in on n, lists the unique-ids and QUITs.
func popUIDLs(t *testing.T, n *harness.Node, user string) []string {
	t.Helper()
	c := popDial(t, n, false)
	c.mustLogin(user)
	uidls := c.multi("UIDL")
	c.expect("QUIT", "+OK")
	return uidls
}

// poplibScript logs in with Python's poplib over POP3S ("pop3s") or STLS
// ("stls"), retrieves every message and QUITs. Arguments: host, port, mode,
// user, password. It prints the unique-ids and the messages (lines joined
// with CRLF, base64) as JSON.
const poplibScript = `
import base64, json, poplib, ssl, sys
host, port, mode, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode == "pop3s":
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=30)
else:
    p = poplib.POP3(host, port, timeout=30)
    p.stls(context=ctx)
p.user(user)
p.pass_(pw)
count, _ = p.stat()
_, lines, _ = p.uidl()
out = {"uidl": [l.decode() for l in lines], "messages": []}
for i in range(1, count + 1):
    _, lines, _ = p.retr(i)
    out["messages"].append(base64.b64encode(b"".join(l + b"\r\n" for l in lines)).decode())
out["quit"] = p.quit().decode()
print(json.dumps(out))
`

type poplibOut struct {
	UIDL     []string `json:"uidl"`
	Messages []string `json:"messages"`
	Quit     string   `json:"quit"`
}

func poplib(t *testing.T, n *harness.Node, mode, user string) poplibOut {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	port := harness.POP3SPort
	if mode == "stls" {
		port = harness.POP3Port
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", poplibScript, n.IP, fmt.Sprint(port), mode, user, popPassword(user)).Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("poplib on %s (%s): %v\n%s", n.ID, mode, err, stderr)
	}
	var res poplibOut
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("poplib output %q: %v", out, err)
	}
	return res
}

// wantUIDLs is the UIDL listing of msgs in user's INBOX.
func wantUIDLs(t *testing.T, n *harness.Node, user string, msgs []admin.Message) []string {
	t.Helper()
	v := mailboxes(t, n, user)["INBOX"].UIDValidity
	var out []string
	for i, m := range msgs {
		out = append(out, fmt.Sprintf("%d %d.%d", i+1, v, m.UID))
	}
	return out
}

// TestPOP3AcrossNodes: messages imported through n1 come out of n2
// byte-identical, under the same unique-ids on every node; the maildrop
// lock holds across nodes; DELE+QUIT on one node removes the messages on
// all, a dropped session removes nothing.
func TestPOP3AcrossNodes(t *testing.T) {
	t.Parallel()
	const user = "alice@pop.example"
	c, msgs := popCluster(t, user, 4)
	n1, n2, n3 := c.Node("n1"), c.Node("n2"), c.Node("n3")

	// poplib on n2, over POP3S and over STLS.
	want := wantUIDLs(t, n2, user, msgs)
	for _, mode := range []string{"pop3s", "stls"} {
		res := poplib(t, n2, mode, user)
		if !slices.Equal(res.UIDL, want) {
			t.Errorf("poplib %s on n2: UIDL %q, want %q", mode, res.UIDL, want)
		}
		if len(res.Messages) != len(msgs) {
			t.Fatalf("poplib %s on n2: %d messages, want %d", mode, len(res.Messages), len(msgs))
		}
		for i, m := range res.Messages {
			b, err := base64.StdEncoding.DecodeString(m)
			if err != nil {
				t.Fatal(err)
			}
			if sha(b) != msgs[i].SHA256 {
				t.Errorf("poplib %s on n2: message %d (UID %d) differs from the stored one", mode, i+1, msgs[i].UID)
			}
		}
	}
	// The same unique-ids on every node.
	for _, n := range c.Nodes {
		if got := popUIDLs(t, n, user); !slices.Equal(got, want) {
			t.Errorf("UIDL on %s: %q, want %q", n.ID, got, want)
		}
	}

	// One session at a time, cluster-wide.
	a := popDial(t, n1, false)
	a.mustLogin(user)
	b := popDial(t, n3, false)
	if r := b.login(user); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Fatalf("second session on n3 while n1 holds the maildrop: %q", r)
	}
	a.expect("QUIT", "+OK")
	// QUIT answers once the release is committed.
	if r := b.login(user); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("session on n3 after QUIT on n1: %q", r)
	}

	// A dropped session deletes nothing.
	b.expect("DELE 1", "+OK")
	b.expect("DELE 2", "+OK")
	b.conn.Close()
	// Once another node gets the maildrop, the dropped session has closed
	// it, and deleted what it was going to delete: nothing.
	harness.Eventually(t, 30*time.Second, "the dropped session's lock released", func() error {
		c := popDial(t, n2, false)
		defer c.conn.Close()
		if r := c.login(user); !strings.HasPrefix(r, "+OK") {
			return fmt.Errorf("login on n2: %q", r)
		}
		c.expect("QUIT", "+OK")
		return nil
	})
	waitMessages(t, c, user, len(msgs))

	// DELE+QUIT on n2 removes exactly those messages on every node.
	d := popDial(t, n2, true)
	d.mustLogin(user)
	d.expect("DELE 1", "+OK")
	d.expect("DELE 3", "+OK")
	d.expect("QUIT", "+OK")
	left := waitMessages(t, c, user, len(msgs)-2)
	if left[0].UID != msgs[1].UID || left[1].UID != msgs[3].UID {
		t.Fatalf("left UIDs %d, %d, want %d, %d", left[0].UID, left[1].UID, msgs[1].UID, msgs[3].UID)
	}
	want = wantUIDLs(t, n1, user, left)
	for _, n := range c.Nodes {
		if got := popUIDLs(t, n, user); !slices.Equal(got, want) {
			t.Errorf("UIDL on %s after deletion: %q, want %q", n.ID, got, want)
		}
	}
}

// TestPOP3LockLapsesWhenNodeDies: the node holding a session's maildrop
// lock is killed; the maildrop stays locked until the lease runs out, then
// another node lets the user in — within the lease (60 s) plus 15 s.
// Nothing is deleted.
func TestPOP3LockLapsesWhenNodeDies(t *testing.T) {
	t.Parallel()
	const user = "bob@pop.example"
	c, msgs := popCluster(t, user, 2)
	leader := c.WaitLeader(30 * time.Second)
	followers := c.Followers(leader)
	holder, other := followers[0], followers[1] // killing a follower needs no election

	a := popDial(t, holder, false)
	a.expect("USER "+user, "+OK")
	sent := time.Now() // the lease runs from after this moment on the server
	a.expect("PASS "+popPassword(user), "+OK")
	a.expect("DELE 1", "+OK")
	holder.Kill()
	killed := time.Now()

	b := popDial(t, other, false)
	if r := b.login(user); !strings.HasPrefix(r, "-ERR [IN-USE]") {
		t.Fatalf("login on %s right after %s died: %q (the lease must still hold)", other.ID, holder.ID, r)
	}
	bound := popLease + 15*time.Second
	var accepted time.Time
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for accepted.IsZero() {
		if time.Since(killed) > bound {
			t.Fatalf("%s did not let %s in within %s of %s's death", other.ID, user, bound, holder.ID)
		}
		<-tick.C
		s := popDial(t, other, false)
		r := s.login(user)
		switch {
		case strings.HasPrefix(r, "+OK"):
			accepted = time.Now()
			s.expect("QUIT", "+OK")
		case strings.HasPrefix(r, "-ERR [IN-USE]"):
			s.expect("QUIT", "+OK")
		default:
			t.Fatalf("login on %s: %q", other.ID, r)
		}
		s.conn.Close()
	}
	t.Logf("%s let %s in %s after %s died (lease %s)", other.ID, user, accepted.Sub(killed).Round(time.Millisecond), holder.ID, popLease)
	if accepted.Sub(sent) < popLease {
		t.Errorf("the maildrop was free %s after the lock was taken, before the lease of %s ran out", accepted.Sub(sent), popLease)
	}
	waitMessages(t, c, user, len(msgs))
}

// TestPOP3Fetchmail retrieves the maildrop with fetchmail over POP3S, as a
// user would: every message delivered to an MDA byte-identical, and then
// deleted on every node.
func TestPOP3Fetchmail(t *testing.T) {
	t.Parallel()
	fetchmail, err := exec.LookPath("fetchmail")
	if err != nil {
		t.Skip("fetchmail not installed (scripts/ci-deps.sh installs it)")
	}
	const user = "carol@pop.example"
	c, msgs := popCluster(t, user, 3)
	n3 := c.Node("n3")

	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o700); err != nil {
		t.Fatal(err)
	}
	mda := filepath.Join(dir, "mda.sh")
	if err := os.WriteFile(mda, []byte("#!/bin/sh\nexec cat > \"$(mktemp "+out+"/msg.XXXXXX)\"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	// invisible: no Received header of fetchmail's own; no stripcr: keep
	// CRLF; no rewrite: leave the headers alone.
	rc := filepath.Join(dir, "fetchmailrc")
	rcText := fmt.Sprintf(`set no syslog
set invisible
poll %s with proto POP3 service %d timeout 30
  user "%s" there with password "%s" is "tester" here
  ssl no sslcertck sslproto "tls1.2+"
  fetchall no keep no stripcr no rewrite
  mda "%s"
`, n3.IP, harness.POP3SPort, user, popPassword(user), mda)
	if err := os.WriteFile(rc, []byte(rcText), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, fetchmail, "-f", rc, "--nodetach", "--verbose",
		"--idfile", filepath.Join(dir, "fetchids"), "--pidfile", filepath.Join(dir, "fetchmail.pid"))
	cmd.Env = append(os.Environ(), "HOME="+dir, "FETCHMAILHOME="+dir)
	log, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("fetchmail: %v\n%s", err, log)
	}
	t.Logf("fetchmail:\n%s", log)

	files, _ := filepath.Glob(filepath.Join(out, "msg.*"))
	var got []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, sha(b))
	}
	var want []string
	for _, m := range msgs {
		want = append(want, m.SHA256)
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("fetchmail delivered %d messages with hashes %q, want %q\nfetchmail log:\n%s", len(got), got, want, log)
	}
	// fetchmail deleted what it fetched: gone on every node.
	waitMessages(t, c, user, 0)
}
