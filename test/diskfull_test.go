package test

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDiskFullOnOneNode: one node's data directory (a 24 MiB tmpfs) fills
// up while mail keeps coming in through the other two. That node stops
// taking entries; the other two go on answering 250; and once its disk has
// room again and it is restarted, it catches up: every message that was
// answered 250 is on all three nodes, identical.
func TestDiskFullOnOneNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("mounting a tmpfs needs root")
	}
	c := harness.New(t, harness.Options{NoStart: true, Args: smtpNodeArgs(t)})
	full := c.Node("n3")
	if err := os.MkdirAll(full.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", full.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	// Runs before the harness's cleanup stops the nodes: a lazy unmount
	// goes through while the node still has files open.
	t.Cleanup(func() { _ = exec.Command("umount", "-l", full.DataDir).Run() })
	for _, n := range c.Nodes {
		n.Start()
	}
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	senders := []*harness.Node{c.Node("n1"), c.Node("n2")}
	for _, n := range c.Nodes {
		harness.Eventually(t, 20*time.Second, n.ID+" knows alice", func() error {
			return n.API("GET", "/v1/users/alice@example.org?stale=1", nil, nil)
		})
	}

	acked := map[string]bool{} // subjects answered 250
	uncertain := 0             // answered 4xx: stored or not
	send := func(i int) int {
		subject := fmt.Sprintf("fill %d", i)
		s := smtpDial(t, senders[i%2].Addr(harness.SMTPPort), false)
		s.must("EHLO client.test", 250)
		s.must("MAIL FROM:<someone@remote.test>", 250)
		s.must("RCPT TO:<alice@example.org>", 250)
		code, text := s.data(bigMessage(subject, 128<<10))
		switch {
		case code == 250:
			acked[subject] = true
		case code >= 400 && code < 500:
			uncertain++
		default:
			t.Fatalf("%s: %d %s", subject, code, text)
		}
		s.cmd("QUIT")
		return code
	}
	i := 0
	for ; !diskFull(full); i++ {
		if i == 400 {
			t.Fatalf("n3's 24 MiB never filled: %d messages of 128 KiB answered 250", len(acked))
		}
		send(i)
	}
	t.Logf("n3 full after %d messages (%d answered 250); running %v; %q", i, len(acked), full.Running(), full.Grep("no space left on device"))
	// The other two are a majority and go on; an election may cost a
	// moment if n3 led, never a message.
	for end := i + 10; i < end; i++ {
		deadline := time.Now().Add(30 * time.Second)
		for send(i) != 250 {
			if time.Now().After(deadline) {
				t.Fatalf("message %d not accepted with n3 full", i)
			}
			i++
		}
	}
	// Room again: n3 restarts and catches up.
	if out, err := exec.Command("mount", "-o", "remount,size=1g", full.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	full.Kill()
	full.Start()
	ms := waitMessages(t, c, "alice@example.org", len(acked)+uncertain)
	subject := regexp.MustCompile(`(?m)^Subject: (fill \d+)\r$`)
	stored := map[string]bool{}
	for _, m := range ms {
		raw, err := rawMessage(full, "alice@example.org", m.UID)
		if err != nil {
			t.Fatal(err)
		}
		if s := subject.FindSubmatch(raw); s != nil {
			stored[string(s[1])] = true
		}
	}
	for s := range acked {
		if !stored[s] {
			t.Errorf("%q was answered 250 and is not on n3", s)
		}
	}
	verifyClean(t, c.WaitLeader(30*time.Second), 3)
}

// diskFull reports whether the node has hit the end of its disk: it has
// logged ENOSPC, or it has stopped on it.
func diskFull(n *harness.Node) bool {
	return len(n.Grep("no space left on device")) > 0 || !n.Running()
}

// bigMessage is a message of about size octets that does not compress.
func bigMessage(subject string, size int) string {
	b := make([]byte, size*3/4)
	_, _ = rand.Read(b)
	enc := base64.StdEncoding.EncodeToString(b)
	var body strings.Builder
	for len(enc) > 76 {
		body.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	body.WriteString(enc + "\r\n")
	return fmt.Sprintf("From: someone <someone@remote.test>\r\nTo: alice@example.org\r\nSubject: %s\r\n"+
		"Content-Transfer-Encoding: base64\r\n\r\n%s", subject, body.String())
}

// TestDiskNearlyFullRefusesMail: a node whose disk runs low (a 64 MiB tmpfs,
// --min-free-space 32MiB) answers MAIL with 452 4.3.1 instead of running
// into the end of its disk; it keeps every message it took, stays up, and
// takes mail again once there is room.
func TestDiskNearlyFullRefusesMail(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("mounting a tmpfs needs root")
	}
	c := harness.New(t, harness.Options{Nodes: 1, NoStart: true, Args: append(smtpNodeArgs(t), "--min-free-space", "32MiB")})
	n := c.Nodes[0]
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", n.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", n.DataDir).Run() })
	n.Start()
	seedUser(t, c.WaitLeader(30*time.Second), "alice@example.org")

	// try sends one message; it returns MAIL's reply when that refuses.
	try := func(i int) (int, string) {
		s := smtpDial(t, n.Addr(harness.SMTPPort), false)
		defer s.cmd("QUIT")
		s.must("EHLO client.test", 250)
		if code, text := s.cmd("MAIL FROM:<someone@remote.test>"); code != 250 {
			return code, text
		}
		s.must("RCPT TO:<alice@example.org>", 250)
		if code, text := s.data(bigMessage(fmt.Sprintf("fill %d", i), 128<<10)); code != 250 {
			t.Fatalf("message %d: %d %s", i, code, text)
		}
		return 250, ""
	}
	acked := 0
	for {
		code, text := try(acked)
		if code == 250 {
			acked++
			if acked == 400 {
				t.Fatal("400 messages of 128 KiB taken into 64 MiB without a refusal")
			}
			continue
		}
		if code != 452 || !strings.HasPrefix(text, "4.3.1") {
			t.Fatalf("MAIL with the disk low: %d %s, want 452 4.3.1", code, text)
		}
		break
	}
	t.Logf("refused with 452 4.3.1 after %d messages", acked)
	if !n.Running() {
		t.Fatal("the node stopped")
	}
	// IMAP APPEND (Python's imaplib) is turned away as well.
	if got := imapAppend(t, n, "alice@example.org"); !strings.HasPrefix(got, "NO [UNAVAILABLE]") {
		t.Errorf("APPEND with the disk low: %s, want NO [UNAVAILABLE]", got)
	}
	waitMessages(t, c, "alice@example.org", acked)
	if out, err := exec.Command("mount", "-o", "remount,size=1g", n.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	harness.Eventually(t, 10*time.Second, "mail taken again", func() error {
		if code, text := try(acked); code != 250 {
			return fmt.Errorf("%d %s", code, text)
		}
		return nil
	})
	if got := imapAppend(t, n, "alice@example.org"); !strings.HasPrefix(got, "OK") {
		t.Errorf("APPEND with room: %s", got)
	}
	waitMessages(t, c, "alice@example.org", acked+2)
}

// imapAppend appends a small message to user's INBOX with Python's imaplib
// and returns the tagged reply's status and text.
func imapAppend(t *testing.T, n *harness.Node, user string) string {
	t.Helper()
	const py = `
import imaplib, sys
host, port, user, pw = sys.argv[1:5]
m = imaplib.IMAP4(host, int(port))
m.login(user, pw)
typ, data = m.append("INBOX", None, None, b"Subject: appended\r\n\r\nbody\r\n")
print(typ, data[0].decode())
m.logout()
`
	out, err := exec.Command("python3", "-c", py, n.IP, fmt.Sprint(harness.IMAPPort), user, "pw-"+user).CombinedOutput()
	if err != nil {
		t.Fatalf("imaplib: %v %s", err, out)
	}
	return strings.TrimSpace(string(out))
}
