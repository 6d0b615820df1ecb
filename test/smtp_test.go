package test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestSMTPSubmissionReplicatesIdenticalBytes: Python's smtplib submits
// through node 1 (STARTTLS and AUTH on 587, implicit TLS on 465); each
// message answered 250 is on nodes 2 and 3 with identical bytes, with its
// trace headers; the remote recipient's copy waits in the replicated queue
// (`flotilla queue list` on another node shows it).
func TestSMTPSubmissionReplicatesIdenticalBytes(t *testing.T) {
	c, _ := smtpCluster(t)
	n1 := c.Node("n1")
	body := "From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: through n1\r\n\r\nHello Bob.\r\n"
	r := smtplib(t, n1.Addr(harness.SubmissionPort), "starttls", "alice@example.org", "pw-alice@example.org",
		"alice@example.org", "bob@example.org,far@remote.test", body)
	if !r.OK {
		t.Fatalf("smtplib on submission: %+v", r)
	}
	if !strings.Contains(r.Data[1].(string), "queued as") {
		t.Errorf("250 reply %v", r.Data)
	}
	got := sameEverywhere(t, c, "bob@example.org", 1)
	trace := regexp.MustCompile(`^Return-Path: <alice@example\.org>\r\nReceived: from python\.test \(\[127\.0\.0\.1\]\)\r\n\tby n1\.flotilla\.test \(Flotilla\) with ESMTPSA\r\n\t\(TLS 1\.3 [A-Z0-9_]+\)\r\n\tid \w+\r\n\tfor <bob@example\.org>; [^\r]+\r\nDate: [^\r]+\r\nMessage-ID: <\w+@n1\.flotilla\.test>\r\n`)
	if !trace.Match(got) || !bytes.HasSuffix(got, []byte(body)) {
		t.Errorf("stored message:\n%s", got)
	}
	harness.Eventually(t, 20*time.Second, "the queue entry on n3", func() error {
		out, errOut, err := c.Node("n3").CLI("queue", "list")
		if err != nil {
			return fmt.Errorf("%v %s", err, errOut)
		}
		if !strings.Contains(out, "far@remote.test") || !strings.Contains(out, "alice@example.org") {
			return fmt.Errorf("queue list:\n%s", out)
		}
		return nil
	})

	// Implicit TLS through node 2.
	r = smtplib(t, c.Node("n2").Addr(harness.SMTPSPort), "ssl", "bob@example.org", "pw-bob@example.org",
		"bob@example.org", "alice@example.org", "Subject: over 465\r\n\r\nhi\r\n")
	if !r.OK {
		t.Fatalf("smtplib on smtps: %+v", r)
	}
	if got := sameEverywhere(t, c, "alice@example.org", 1); !bytes.Contains(got, []byte("by n2.flotilla.test (Flotilla) with ESMTPSA")) {
		t.Errorf("stored message:\n%s", got)
	}
}

// TestSMTPSwaksAndPostfix: swaks on port 25 (2525 here) and on submission,
// and Debian's Postfix relaying into the cluster as a real MTA would (mail
// injected with its sendmail and through its smtpd).
func TestSMTPSwaksAndPostfix(t *testing.T) {
	c, _ := smtpCluster(t)
	n1, n3 := c.Node("n1"), c.Node("n3")
	if _, err := exec.LookPath("swaks"); err != nil {
		t.Fatal("swaks is not installed (scripts/ci-deps.sh installs it)")
	}
	swaks := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("swaks", append([]string{"--timeout", "60", "--helo", "swaks.test"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("swaks %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := swaks("--server", n1.IP, "--port", fmt.Sprint(harness.SMTPPort), "--from", "someone@remote.test",
		"--to", "alice@example.org", "--header", "Subject: swaks on MX")
	if !strings.Contains(out, "250 2.0.0 Ok: queued as") {
		t.Errorf("swaks:\n%s", out)
	}
	out = swaks("--server", n3.IP, "--port", fmt.Sprint(harness.SubmissionPort), "--tls", "--auth", "LOGIN",
		"--auth-user", "bob@example.org", "--auth-password", "pw-bob@example.org",
		"--from", "bob@example.org", "--to", "alice@example.org", "--header", "Subject: swaks on submission")
	if !strings.Contains(out, "235 2.0.0") || !strings.Contains(out, "250 2.0.0 Ok: queued as") {
		t.Errorf("swaks:\n%s", out)
	}
	got := sameEverywhere(t, c, "alice@example.org", 2)
	if !bytes.Contains(got, []byte("Subject: swaks on submission")) || !bytes.Contains(got, []byte("by n3.flotilla.test (Flotilla) with ESMTPSA")) {
		t.Errorf("stored:\n%s", got)
	}

	// Postfix on an address of its own, relaying everything to node 1.
	pfIP := n1.IP[:strings.LastIndexByte(n1.IP, '.')] + ".200"
	pf := harness.StartPostfixRelay(t, pfIP, 25, fmt.Sprintf("[%s]:%d", n1.IP, harness.SMTPPort))
	if err := pf.Sendmail("someone@remote.test", "From: someone@remote.test\r\nTo: bob@example.org\r\nSubject: via postfix sendmail\r\n\r\nrelayed by Postfix\r\n", "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	r := smtplib(t, pf.Addr(), "plain", "", "", "other@remote.test", "bob@example.org", "Subject: via postfix smtpd\r\n\r\nrelayed by Postfix too\r\n")
	if !r.OK {
		t.Fatalf("injecting into postfix: %+v", r)
	}
	harness.Eventually(t, 60*time.Second, "postfix relayed both", func() error {
		if n := strings.Count(pf.Log(), "status=sent (250 2.0.0 Ok: queued as"); n != 2 {
			return fmt.Errorf("%d sent; log:\n%s", n, pf.Log())
		}
		return nil
	})
	msgs := waitMessages(t, c, "bob@example.org", 2)
	for _, m := range msgs {
		b := sameEverywhereUID(t, c, "bob@example.org", m)
		if !bytes.Contains(b, []byte("Received: from postfix-relay.test ([127.0.0.1])\r\n\tby n1.flotilla.test (Flotilla) with ESMTPS")) ||
			!bytes.Contains(b, []byte("by postfix-relay.test (Postfix")) {
			t.Errorf("relayed message:\n%s", b)
		}
	}
}

// sameEverywhereUID checks one message's bytes on every running node.
func sameEverywhereUID(t *testing.T, c *harness.Cluster, user string, m admin.Message) []byte {
	t.Helper()
	var ref []byte
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		b, err := rawMessage(n, user, m.UID)
		if err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
		if ref != nil && !bytes.Equal(ref, b) {
			t.Fatalf("%s differs", n.ID)
		}
		ref = b
	}
	return ref
}

// TestSMTPAcknowledgedSurvivesKill: a message answered 250 by a follower
// survives SIGKILL of that follower and of the leader right after the 250.
func TestSMTPAcknowledgedSurvivesKill(t *testing.T) {
	c, leader := smtpCluster(t)
	accepting := c.Followers(leader)[0]
	cl := smtpDial(t, accepting.Addr(harness.SMTPPort), false)
	cl.must("EHLO client.test", 250)
	cl.must("MAIL FROM:<someone@remote.test>", 250)
	cl.must("RCPT TO:<alice@example.org>", 250)
	code, text := cl.data(smtpMsg("acknowledged"))
	if code != 250 {
		t.Fatalf("DATA: %d %s", code, text)
	}
	accepting.Kill()
	leader.Kill()
	t.Logf("250 from %s (%s), then SIGKILL of it and of leader %s", accepting.ID, text, leader.ID)
	smtpRestart(t, accepting, leader)
	c.WaitLeader(60 * time.Second)
	got := sameEverywhere(t, c, "alice@example.org", 1)
	if !bytes.Contains(got, []byte("Subject: acknowledged")) {
		t.Errorf("stored:\n%s", got)
	}
	verifyClean(t, accepting, 3)
}

// TestSMTPBigMessageThroughFollower: a message too big for the forwarding
// stream (its entry is over 1 MiB even compressed) goes to the leader over
// HTTP and arrives byte-identical on every node; the small one after it
// takes the stream again.
func TestSMTPBigMessageThroughFollower(t *testing.T) {
	c, leader := smtpCluster(t)
	f := c.Followers(leader)[0]
	noise := make([]byte, 3<<20)
	_, _ = rand.Read(noise)
	var body strings.Builder
	body.WriteString("From: someone <someone@remote.test>\r\nTo: alice@example.org\r\nSubject: big\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(noise)
	for len(enc) > 76 {
		body.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	body.WriteString(enc + "\r\n")
	send := func(msg string) {
		t.Helper()
		cl := smtpDial(t, f.Addr(harness.SMTPPort), false)
		cl.must("EHLO client.test", 250)
		cl.must("MAIL FROM:<someone@remote.test>", 250)
		cl.must("RCPT TO:<alice@example.org>", 250)
		if code, text := cl.data(msg); code != 250 {
			t.Fatalf("DATA: %d %s", code, text)
		}
	}
	viaHTTP := func() float64 {
		t.Helper()
		raw, err := f.Raw("GET", "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		return metricValue(string(raw), "flotilla_forwarded_http_total")
	}
	send(body.String())
	if got := sameEverywhere(t, c, "alice@example.org", 1); !bytes.HasSuffix(got, []byte(body.String())) {
		t.Fatalf("stored %d octets, not the %d sent", len(got), body.Len())
	}
	big := viaHTTP()
	if big < 1 {
		t.Fatalf("%s sent the big message's entry not over HTTP (flotilla_forwarded_http_total %v)", f.ID, big)
	}
	send(smtpMsg("small"))
	sameEverywhere(t, c, "alice@example.org", 2)
	if after := viaHTTP(); after != big {
		t.Errorf("the small message went over HTTP too (flotilla_forwarded_http_total %v, then %v)", big, after)
	}
}

// TestSMTPLeaderlessRefusesWith451: with two of three nodes gone, the third
// answers DATA with 451 4.3.0 and stores nothing, then or later.
func TestSMTPLeaderlessRefusesWith451(t *testing.T) {
	c, leader := smtpCluster(t)
	survivor := c.Followers(leader)[0]
	var killed []*harness.Node
	for _, n := range c.Nodes {
		if n != survivor {
			n.Kill()
			killed = append(killed, n)
		}
	}
	harness.Eventually(t, 30*time.Second, survivor.ID+" sees no leader", func() error {
		st, err := survivor.Status()
		if err != nil {
			return err
		}
		if st.Leader != "" {
			return fmt.Errorf("leader %s", st.Leader)
		}
		return nil
	})
	cl := smtpDial(t, survivor.Addr(harness.SMTPPort), false)
	cl.must("EHLO client.test", 250)
	cl.must("MAIL FROM:<someone@remote.test>", 250)
	cl.must("RCPT TO:<alice@example.org>", 250)
	code, text := cl.data(smtpMsg("no quorum"))
	if code != 451 || !strings.HasPrefix(text, "4.3.0") {
		t.Fatalf("DATA without quorum: %d %s", code, text)
	}
	cl.must("QUIT", 221)
	if ms, err := messages(survivor, "alice@example.org"); err != nil || len(ms) != 0 {
		t.Fatalf("stored without quorum: %v %v", ms, err)
	}
	smtpRestart(t, killed...)
	newLeader := c.WaitLeader(60 * time.Second)
	verifyClean(t, newLeader, 3)
	for _, n := range c.Nodes {
		if ms, err := messages(n, "alice@example.org"); err != nil || len(ms) != 0 {
			t.Errorf("%s: %v %v", n.ID, ms, err)
		}
	}
}

// TestSMTPOpenRelayRefused: no way through any port relays for a stranger;
// the relay policy set through the CLI on one node holds on the others.
func TestSMTPOpenRelayRefused(t *testing.T) {
	c, _ := smtpCluster(t)
	n1, n2, n3 := c.Node("n1"), c.Node("n2"), c.Node("n3")
	relayDenied := func(n *harness.Node, port int, auth bool, from string) {
		t.Helper()
		cl := smtpDial(t, n.Addr(port), port == harness.SMTPSPort)
		cl.must("EHLO client.test", 250)
		if port != harness.SMTPSPort {
			cl.starttls()
			cl.must("EHLO client.test", 250)
		}
		if auth {
			if code, text := cl.authPlain("alice@example.org", "pw-alice@example.org"); code != 235 {
				t.Fatalf("AUTH: %d %s", code, text)
			}
		}
		code, text := cl.cmd("MAIL FROM:<" + from + ">")
		if port != harness.SMTPPort && !auth {
			if code != 530 {
				t.Errorf("%s port %d: MAIL without AUTH: %d %s", n.ID, port, code, text)
			}
			return
		}
		if code != 250 {
			t.Fatalf("%s port %d: MAIL: %d %s", n.ID, port, code, text)
		}
		if code, text := cl.cmd("RCPT TO:<victim@elsewhere.test>"); code != 550 || !strings.HasPrefix(text, "5.7.1") {
			t.Errorf("%s port %d auth=%v from %s: RCPT to a stranger: %d %s", n.ID, port, auth, from, code, text)
		}
	}
	for _, n := range c.Nodes {
		for _, port := range []int{harness.SMTPPort, harness.SubmissionPort, harness.SMTPSPort} {
			relayDenied(n, port, false, "spammer@elsewhere.test")
			relayDenied(n, port, false, "alice@example.org") // a forged local sender
		}
	}
	// Forged sender on submission.
	cl := smtpDial(t, n2.Addr(harness.SMTPSPort), true)
	cl.must("EHLO client.test", 250)
	if code, text := cl.authPlain("alice@example.org", "pw-alice@example.org"); code != 235 {
		t.Fatalf("AUTH: %d %s", code, text)
	}
	cl.must("MAIL FROM:<bob@example.org>", 553, "5.7.1")
	// Bad credentials.
	cl = smtpDial(t, n3.Addr(harness.SMTPSPort), true)
	cl.must("EHLO client.test", 250)
	if code, text := cl.authPlain("alice@example.org", "wrong"); code != 535 {
		t.Errorf("bad password: %d %s", code, text)
	}

	// Relay mode none, set on n2: even an authenticated user cannot relay
	// through n3.
	if out := n2.MustCLI("relay", "set", "--mode", "none"); !strings.Contains(out, "mode:    none") {
		t.Errorf("relay set: %s", out)
	}
	harness.Eventually(t, 20*time.Second, "n3 applies mode none", func() error {
		out, _, err := n3.CLI("relay", "show")
		if err != nil || !strings.Contains(out, "none") {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	for _, port := range []int{harness.SMTPPort, harness.SubmissionPort, harness.SMTPSPort} {
		relayDenied(n3, port, true, "alice@example.org")
	}
	// Trusted hosts (local-hosts): the test's loopback address may relay
	// without AUTH on port 25, and the message waits in the queue.
	n1.MustCLI("relay", "set", "--mode", "local-hosts", "--trusted", "127.0.0.0/8,192.0.2.7")
	harness.Eventually(t, 20*time.Second, "n3 applies local-hosts", func() error {
		out, _, err := n3.CLI("relay", "show", "--json")
		if err != nil || !strings.Contains(out, "local-hosts") || !strings.Contains(out, "127.0.0.0/8") {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	cl = smtpDial(t, n3.Addr(harness.SMTPPort), false)
	cl.must("EHLO client.test", 250)
	cl.must("MAIL FROM:<app@remote.test>", 250)
	cl.must("RCPT TO:<someone@elsewhere.test>", 250)
	if code, text := cl.data("Subject: from a trusted host\r\n\r\nhi\r\n"); code != 250 {
		t.Fatalf("trusted relay: %d %s", code, text)
	}
	harness.Eventually(t, 20*time.Second, "the relayed message in the queue", func() error {
		out, _, err := n1.CLI("queue", "list")
		if err != nil || !strings.Contains(out, "someone@elsewhere.test") || strings.Contains(out, "victim@elsewhere.test") {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	})
	// Back to the default: refused again.
	n1.MustCLI("relay", "set", "--mode", "local-users", "--trusted", "")
	harness.Eventually(t, 20*time.Second, "n2 refuses strangers again", func() error {
		cl := smtpDial(t, n2.Addr(harness.SMTPPort), false)
		cl.must("EHLO client.test", 250)
		cl.must("MAIL FROM:<app@remote.test>", 250)
		if code, text := cl.cmd("RCPT TO:<someone@elsewhere.test>"); code != 550 {
			return fmt.Errorf("%d %s", code, text)
		}
		return nil
	})
	if _, errOut, err := n1.CLI("relay", "set", "--mode", "open"); err == nil || !strings.Contains(errOut, "mode") {
		t.Errorf("an unknown mode was accepted: %v %s", err, errOut)
	}
}
