package test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// imapDial logs in to node n's IMAP port with the go-imap v2 client.
func imapDial(t *testing.T, n *harness.Node, user string, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	if opts == nil {
		opts = &imapclient.Options{}
	}
	opts.TLSConfig = &tls.Config{InsecureSkipVerify: true}
	var c *imapclient.Client
	harness.Eventually(t, 30*time.Second, "IMAP login on "+n.ID, func() error {
		var err error
		c, err = imapclient.DialStartTLS(n.Addr(harness.IMAPPort), opts)
		if err != nil {
			return err
		}
		if err := c.Login(user, "pw-"+user).Wait(); err != nil {
			c.Close()
			return err
		}
		return nil
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func imapMessage(i int, node string) string {
	return fmt.Sprintf("From: Tester <tester@example.net>\r\nTo: alice@example.org\r\nSubject: e2e %d via %s\r\nMessage-Id: <e2e-%d@example.net>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLine one of %d.\r\nLine two: caf\xc3\xa9.\r\n", i, node, i, i)
}

// uidsOf returns the UIDs and Message-Ids of a mailbox as node n serves it.
func uidsOf(t *testing.T, c *imapclient.Client, mailbox string) (uint32, map[goimap.UID]string) {
	t.Helper()
	sel, err := c.Select(mailbox, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	out := map[goimap.UID]string{}
	if sel.NumMessages == 0 {
		return sel.UIDValidity, out
	}
	var all goimap.SeqSet
	all.AddRange(1, sel.NumMessages)
	msgs, err := c.Fetch(all, &goimap.FetchOptions{UID: true, Envelope: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		out[m.UID] = m.Envelope.MessageID
	}
	return sel.UIDValidity, out
}

// TestIMAPCluster: one user, three nodes, the same folders, UIDs and flags
// everywhere; IDLE on one node hears of a delivery through another; UIDs
// survive a leader failover.
func TestIMAPCluster(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	const user = "alice@example.org"
	seedUser(t, n1, user)

	// IDLE on n3, then a delivery through n1.
	exists := make(chan uint32, 16)
	c3 := imapDial(t, n3, user, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	if _, err := c3.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c3.Idle()
	if err != nil {
		t.Fatal(err)
	}
	msg := imapMessage(1, "n1")
	uid := importMessage(t, n1, user, msg)
	delivered := time.Now()
	select {
	case n := <-exists:
		if n != 1 {
			t.Fatalf("EXISTS %d", n)
		}
		t.Logf("IDLE on n3 saw the delivery through n1 after %v", time.Since(delivered))
		if d := time.Since(delivered); d > time.Second {
			t.Fatalf("IDLE on n3 took %v", d)
		}
	case <-time.After(time.Second):
		t.Fatal("IDLE on n3 did not see the delivery through n1 within a second")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}

	// Byte-identical on n2 and n3, same UID.
	for _, cl := range []*imapclient.Client{imapDial(t, n2, user, nil), c3} {
		if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		var got []*imapclient.FetchMessageBuffer
		harness.Eventually(t, 10*time.Second, "message on every node", func() error {
			got, err = cl.Fetch(goimap.UIDSetNum(goimap.UID(uid)), &goimap.FetchOptions{UID: true, BodySection: []*goimap.FetchItemBodySection{{Peek: true}}}).Collect()
			if err == nil && len(got) != 1 {
				err = fmt.Errorf("%d messages", len(got))
			}
			return err
		})
		if body := got[0].FindBodySection(&goimap.FetchItemBodySection{Peek: true}); !bytes.Equal(body, []byte(msg)) {
			t.Fatalf("BODY[] differs:\n%q\n%q", body, msg)
		}
	}

	// Flags set through n2 are seen on n3: by a NOOP of the open session
	// and by a new one.
	c2 := imapDial(t, n2, user, nil)
	if _, err := c2.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Store(goimap.UIDSetNum(goimap.UID(uid)), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagFlagged, "$Important"}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 10*time.Second, "flags on n3", func() error {
		if err := c3.Noop().Wait(); err != nil {
			return err
		}
		ms, err := imapDial(t, n3, user, nil).Select("INBOX", nil).Wait()
		_ = ms
		if err != nil {
			return err
		}
		got, err := c3.Fetch(goimap.UIDSetNum(goimap.UID(uid)), &goimap.FetchOptions{Flags: true}).Collect()
		if err != nil {
			return err
		}
		if len(got) != 1 || len(got[0].Flags) != 2 {
			return fmt.Errorf("flags on n3: %+v", got)
		}
		return nil
	})

	// Folders: created on n2, listed on n1 with the same UIDVALIDITY.
	if err := c2.Create("Projects/Flotilla", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	c1 := imapDial(t, n1, user, nil)
	st2, err := c2.Status("Projects/Flotilla", &goimap.StatusOptions{UIDValidity: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 10*time.Second, "folder on n1", func() error {
		st1, err := c1.Status("Projects/Flotilla", &goimap.StatusOptions{UIDValidity: true}).Wait()
		if err != nil {
			return err
		}
		if st1.UIDValidity != st2.UIDValidity {
			return fmt.Errorf("UIDVALIDITY %d on n1, %d on n2", st1.UIDValidity, st2.UIDValidity)
		}
		return nil
	})

	// More mail, then kill the leader: UIDs never change nor repeat.
	for i := 2; i <= 5; i++ {
		importMessage(t, n1, user, imapMessage(i, "n1"))
	}
	survivor := c.Followers(leader)[0]
	cs := imapDial(t, survivor, user, nil)
	var validity uint32
	var before map[goimap.UID]string
	harness.Eventually(t, 10*time.Second, "five messages on "+survivor.ID, func() error {
		validity, before = uidsOf(t, cs, "INBOX")
		if len(before) != 5 {
			return fmt.Errorf("%d messages", len(before))
		}
		return nil
	})
	leader.Kill()
	newLeader := c.WaitLeader(60 * time.Second)
	for i := 6; i <= 8; i++ {
		importMessage(t, newLeader, user, imapMessage(i, newLeader.ID))
	}
	check := func(n *harness.Node) {
		cl := imapDial(t, n, user, nil)
		harness.Eventually(t, 30*time.Second, "eight messages on "+n.ID, func() error {
			v, after := uidsOf(t, cl, "INBOX")
			if v != validity {
				return fmt.Errorf("UIDVALIDITY %d, was %d", v, validity)
			}
			if len(after) != 8 {
				return fmt.Errorf("%d messages", len(after))
			}
			var maxOld goimap.UID
			for u, id := range before {
				if after[u] != id {
					return fmt.Errorf("UID %d was %s, now %q", u, id, after[u])
				}
				maxOld = max(maxOld, u)
			}
			seen := map[string]bool{}
			for u, id := range after {
				if seen[id] {
					return fmt.Errorf("message %s twice", id)
				}
				seen[id] = true
				if _, old := before[u]; !old && u <= maxOld {
					return fmt.Errorf("new message got old UID %d", u)
				}
			}
			return nil
		})
	}
	for _, n := range c.Nodes {
		if n.Running() {
			check(n)
		}
	}
	leader.Start()
	check(leader)
}

// TestIMAPClients drives a node with Python's imaplib and syncs a folder
// tree both ways with mbsync.
func TestIMAPClients(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed (scripts/ci-deps.sh installs it)")
	}
	mbsync, err := exec.LookPath("mbsync")
	if err != nil {
		t.Skip("mbsync not installed (scripts/ci-deps.sh installs isync)")
	}
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	const user = "bob@example.org"
	seedUser(t, c.Nodes[0], user)
	follower := c.Followers(leader)[0]
	importMessage(t, c.Nodes[0], user, imapMessage(1, "n1"))
	imapDial(t, follower, user, nil) // the user is there

	t.Run("imaplib", func(t *testing.T) {
		script := filepath.Join(t.TempDir(), "imaplib_test.py")
		if err := os.WriteFile(script, []byte(imaplibScript), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(py, script, follower.IP, fmt.Sprint(harness.IMAPPort), user, "pw-"+user).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "ALL OK") {
			t.Fatalf("imaplib: %v\n%s", err, out)
		}
	})

	t.Run("mbsync", func(t *testing.T) {
		const user = "carol@example.org"
		seedUser(t, c.Nodes[0], user)
		importMessage(t, c.Nodes[0], user, imapMessage(1, "n1"))
		dir := t.TempDir()
		maildir := filepath.Join(dir, "mail")
		// A local folder tree with a message in each folder.
		folders := []string{"INBOX", "Projects", "Projects/Alpha", "Projects/Beta", "Reise-Fotos"}
		for i, f := range folders {
			writeMaildirMessage(t, filepath.Join(maildir, f), fmt.Sprintf("local-%d", i), imapMessage(100+i, "maildir"))
		}
		cert := filepath.Join(follower.DataDir, "tls", "server.pem")
		conf := filepath.Join(dir, "mbsyncrc")
		cfg := fmt.Sprintf(`IMAPAccount flotilla
Host %s
Port %d
User %s
Pass %s
SSLType STARTTLS
CertificateFile %s

IMAPStore remote
Account flotilla

MaildirStore local
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Remove Both
Expunge Both
SyncState *
`, follower.IP, harness.IMAPPort, user, "pw-"+user, cert, maildir, maildir)
		if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var lastOut []byte
		run := func() {
			t.Helper()
			cmd := exec.Command(mbsync, "-V", "-c", conf, "-a")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("mbsync: %v\n%s", err, out)
			}
			lastOut = out
		}
		run()
		// Up: every local folder and message is on the server, on
		// another node too.
		cl := imapDial(t, c.Nodes[0], user, nil)
		harness.Eventually(t, 10*time.Second, "folders synced up", func() error {
			for _, f := range folders {
				st, err := cl.Status(f, &goimap.StatusOptions{NumMessages: true}).Wait()
				if err != nil {
					return fmt.Errorf("%s: %w", f, err)
				}
				want := uint32(1)
				if f == "INBOX" {
					want = 2
				}
				if *st.NumMessages != want {
					return fmt.Errorf("%s has %d messages; mbsync said:\n%s", f, *st.NumMessages, lastOut)
				}
			}
			return nil
		})
		// Down: a message appended on the server, a folder created there.
		msg := imapMessage(200, "server")
		ac := cl.Append("Projects/Alpha", int64(len(msg)), nil)
		ac.Write([]byte(msg))
		ac.Close()
		if _, err := ac.Wait(); err != nil {
			t.Fatal(err)
		}
		if err := cl.Create("Server-Made", nil).Wait(); err != nil {
			t.Fatal(err)
		}
		// Those went through another node: wait until mbsync's node has
		// them (sessions on different nodes are not linearizable).
		fcl := imapDial(t, follower, user, nil)
		harness.Eventually(t, 10*time.Second, "the follower has the server's changes", func() error {
			if _, err := fcl.Status("Server-Made", &goimap.StatusOptions{NumMessages: true}).Wait(); err != nil {
				return err
			}
			st, err := fcl.Status("Projects/Alpha", &goimap.StatusOptions{NumMessages: true}).Wait()
			if err != nil {
				return err
			}
			if *st.NumMessages != 2 {
				return fmt.Errorf("Projects/Alpha has %d messages", *st.NumMessages)
			}
			return nil
		})
		run()
		if n := countMaildir(t, filepath.Join(maildir, "Projects/Alpha")); n != 2 {
			t.Fatalf("Projects/Alpha has %d local messages after sync down", n)
		}
		if _, err := os.Stat(filepath.Join(maildir, "Server-Made", "cur")); err != nil {
			t.Fatalf("folder not synced down: %v", err)
		}
		// A local deletion (flag T) is expunged on the server.
		trashOne(t, filepath.Join(maildir, "Projects/Beta"))
		run()
		harness.Eventually(t, 10*time.Second, "deletion synced up", func() error {
			st, err := cl.Status("Projects/Beta", &goimap.StatusOptions{NumMessages: true}).Wait()
			if err != nil {
				return err
			}
			if *st.NumMessages != 0 {
				return fmt.Errorf("Projects/Beta still has %d", *st.NumMessages)
			}
			return nil
		})
		// A second run changes nothing (state is stable).
		run()
		if n := countMaildir(t, filepath.Join(maildir, "INBOX")); n != 2 {
			t.Fatalf("INBOX has %d local messages", n)
		}
	})
}

func writeMaildirMessage(t *testing.T, dir, name, msg string) {
	t.Helper()
	for _, d := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cur", name+":2,S"), []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func countMaildir(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	for _, d := range []string{"cur", "new"} {
		es, err := os.ReadDir(filepath.Join(dir, d))
		if err != nil {
			t.Fatal(err)
		}
		n += len(es)
	}
	return n
}

func trashOne(t *testing.T, dir string) {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, "cur"))
	if err != nil || len(es) == 0 {
		t.Fatalf("no message in %s: %v", dir, err)
	}
	sort.Slice(es, func(i, j int) bool { return es[i].Name() < es[j].Name() })
	old := filepath.Join(dir, "cur", es[0].Name())
	name := es[0].Name()
	if i := strings.Index(name, ":2,"); i >= 0 {
		name = name[:i] + ":2," + "ST"
	}
	if err := os.Rename(old, filepath.Join(dir, "cur", name)); err != nil {
		t.Fatal(err)
	}
}

const imaplibScript = `
import imaplib, sys, email

host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
imaplib.Commands['ID'] = ('NONAUTH', 'AUTH', 'SELECTED')

def ok(res):
    typ, data = res
    if typ != 'OK':
        raise SystemExit('failed: %r %r' % (typ, data))
    return data

m = imaplib.IMAP4(host, port)
import ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ok(m.starttls(ssl_context=ctx))
ok(m.login(user, pw))
caps = ok(m.capability())[0].upper().split()
for c in ('IMAP4REV1', 'IDLE', 'UIDPLUS', 'MOVE', 'CONDSTORE', 'QUOTA', 'ID', 'SPECIAL-USE', 'NAMESPACE'):
    assert c.encode() in caps, (c, caps)
data = ok(m.list())
names = b' '.join(data)
for n in (b'INBOX', b'Sent', b'Drafts', b'Trash', b'Junk', b'Archive', b'\\Sent', b'\\Trash'):
    assert n in names, (n, data)
ok(m.create('py/child'))
ok(m.create('&AOQ-pfel'))
ok(m.rename('py', 'python'))
data = ok(m.list('""', 'python/*'))
assert b'python/child' in data[0], data
data = ok(m.select('INBOX'))
assert data[0] == b'1', data
typ, data = m.fetch('1', '(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODYSTRUCTURE ENVELOPE)')
assert typ == 'OK', data
assert b'Subject: e2e 1 via n1' in data[0][1], data
typ, data = m.fetch('1', '(RFC822)')
msg = email.message_from_bytes(data[0][1])
assert msg['Message-Id'] == '<e2e-1@example.net>', msg['Message-Id']
assert b'\\Seen' in data[0][0] or b'\\Seen' in data[-1], data
ok(m.store('1', '+FLAGS', '(\\Flagged $Label1)'))
data = ok(m.search(None, 'FLAGGED'))
assert data[0] == b'1', data
data = ok(m.search('UTF-8', 'BODY', 'café'.encode()))
assert data[0] == b'1', data
data = ok(m.uid('SEARCH', None, 'SUBJECT', '"e2e 1"'))
assert data[0] == b'1', data
msg2 = b'From: py@example.org\r\nSubject: from python\r\n\r\nhello\r\n'
data = ok(m.append('python/child', '(\\Seen)', imaplib.Time2Internaldate(1700000000), msg2))
data = ok(m.copy('1', 'Archive'))
data = ok(m.status('Archive', '(MESSAGES UIDNEXT UNSEEN)'))
assert b'MESSAGES 1' in data[0], data
typ, data = m._simple_command('GETQUOTAROOT', 'INBOX')
assert typ == 'OK', data
typ, data = m._simple_command('ID', 'NIL')
assert typ == 'OK', data
ok(m.store('1', '+FLAGS', '(\\Deleted)'))
ok(m.expunge())
data = ok(m.select('python/child', readonly=True))
assert data[0] == b'1', data
typ, data = m.fetch('1', '(BODY[])')
assert data[0][1] == msg2, data
ok(m.close())
try:
    m.select('does-not-exist')
except imaplib.IMAP4.error as e:
    assert 'NONEXISTENT' in str(e) or 'no such' in str(e).lower(), e
m.logout()
print('ALL OK')
`
