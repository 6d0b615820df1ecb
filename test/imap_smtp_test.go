package test

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/smtp"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// popRetr logs in to POP3 on n and returns message i exactly as sent:
// the lines up to the terminating dot, byte-unstuffed, each ending CRLF.
func popRetr(t *testing.T, n *harness.Node, user string, i int) []byte {
	t.Helper()
	c := popDial(t, n, false)
	c.mustLogin(user)
	c.expect(fmt.Sprintf("RETR %d", i), "+OK")
	var out bytes.Buffer
	for {
		l, err := c.r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: RETR: %v", n.ID, err)
		}
		if l == ".\r\n" {
			break
		}
		if !strings.HasSuffix(l, "\r\n") {
			t.Fatalf("%s: RETR: bare LF in line %q", n.ID, l)
		}
		out.WriteString(strings.TrimPrefix(l, "."))
	}
	c.expect("QUIT", "+OK")
	return out.Bytes()
}

// TestSMTPDeliveryReadOverIMAPAndPOP3: a message sent by SMTP to n1's MX
// port is announced within a second to an IDLE session on n3, and comes
// out of IMAP on n2 and n3 and of POP3 on n2 with the same bytes: the
// original message under the Return-Path and Received fields Flotilla adds.
func TestSMTPDeliveryReadOverIMAPAndPOP3(t *testing.T) {
	c, _ := smtpCluster(t)
	n1, n2, n3 := c.Node("n1"), c.Node("n2"), c.Node("n3")
	const user = "alice@example.org"

	type existsAt struct {
		n  uint32
		at time.Time
	}
	exists := make(chan existsAt, 16)
	c3 := imapDial(t, n3, user, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- existsAt{*d.NumMessages, time.Now()}
			}
		},
	}})
	sel, err := c3.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 0 {
		t.Fatalf("INBOX on n3 starts with %d messages", sel.NumMessages)
	}
	idle, err := c3.Idle()
	if err != nil {
		t.Fatal(err)
	}

	body := "From: Someone <someone@remote.test>\r\nTo: alice@example.org\r\nSubject: read me everywhere\r\n" +
		"Date: Tue, 4 Jun 2024 10:20:30 +0000\r\nMessage-ID: <everywhere@remote.test>\r\n\r\n" +
		"First line.\r\n.A line starting with a dot.\r\n\r\nLast line: caf\xc3\xa9.\r\n"
	sc, err := smtp.Dial(n1.Addr(harness.SMTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if err := sc.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := sc.Mail("someone@remote.test"); err != nil {
		t.Fatal(err)
	}
	if err := sc.Rcpt(user); err != nil {
		t.Fatal(err)
	}
	w, err := sc.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, body); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil { // returns on the 250
		t.Fatalf("DATA: %v", err)
	}
	accepted := time.Now()
	select {
	case e := <-exists:
		d := e.at.Sub(accepted)
		t.Logf("IDLE on n3 reported EXISTS %d %v after n1's 250", e.n, d)
		if e.n != 1 {
			t.Fatalf("EXISTS %d, want 1", e.n)
		}
		if d >= time.Second {
			t.Fatalf("IDLE on n3 took %v after the 250", d)
		}
	case <-time.After(time.Second):
		t.Fatal("IDLE on n3 did not report the delivery within a second of the 250")
	}
	_ = sc.Quit()
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}

	peek := &goimap.FetchItemBodySection{Peek: true}
	fetchBody := func(cl *imapclient.Client, node string) []byte {
		t.Helper()
		var got []byte
		harness.Eventually(t, 10*time.Second, "the message over IMAP on "+node, func() error {
			if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
				return err
			}
			ms, err := cl.Fetch(goimap.SeqSetNum(1), &goimap.FetchOptions{UID: true, BodySection: []*goimap.FetchItemBodySection{peek}}).Collect()
			if err != nil {
				return err
			}
			if len(ms) != 1 {
				return fmt.Errorf("%d messages", len(ms))
			}
			got = ms[0].FindBodySection(peek)
			return nil
		})
		return got
	}
	on3 := fetchBody(c3, "n3")
	on2 := fetchBody(imapDial(t, n2, user, nil), "n2")
	pop2 := popRetr(t, n2, user, 1)
	if !bytes.Equal(on2, on3) || !bytes.Equal(pop2, on3) {
		t.Fatalf("bytes differ:\nIMAP n3 %q\nIMAP n2 %q\nPOP3 n2 %q", on3, on2, pop2)
	}
	// The MX port adds exactly Return-Path and one Received, then the
	// message as sent (no header completion on port 25). net/smtp sends
	// MAIL FROM with SMTPUTF8 when offered, so the protocol is UTF8SMTP
	// (RFC 6531 section 3.7.3).
	trace := regexp.MustCompile(`^Return-Path: <someone@remote\.test>\r\n` +
		`Received: from client\.test \(\[127\.[0-9.]+\]\)\r\n\tby n1\.flotilla\.test \(Flotilla\) with UTF8SMTP\r\n` +
		`\tid \w+\r\n\tfor <alice@example\.org>; [^\r\n]+\r\n`)
	loc := trace.FindIndex(on3)
	if loc == nil || string(on3[loc[1]:]) != body {
		t.Fatalf("stored message is not trace fields + the message sent:\n%q", on3)
	}
}

// TestIMAPCrossNodeUnsolicitedUpdates: a flag change and an expunge made
// by a session on n1 reach a session on n3 as unsolicited FETCH (with
// MODSEQ, CONDSTORE being enabled there) and EXPUNGE responses, in IDLE and
// on NOOP.
func TestIMAPCrossNodeUnsolicitedUpdates(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	n1, n3 := c.Node("n1"), c.Node("n3")
	const user = "alice@example.org"
	seedUser(t, n1, user)
	for i := 1; i <= 4; i++ {
		importMessage(t, n1, user, imapMessage(i, "n1"))
	}
	waitMessages(t, c, user, 4)

	fetches := make(chan *imapclient.FetchMessageBuffer, 64)
	expunges := make(chan uint32, 64)
	b := imapDial(t, n3, user, &imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) { expunges <- seq },
		Fetch: func(m *imapclient.FetchMessageData) {
			buf, err := m.Collect()
			if err == nil {
				fetches <- buf
			}
		},
	}})
	selB, err := b.Select("INBOX", &goimap.SelectOptions{CondStore: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if selB.NumMessages != 4 || selB.HighestModSeq == 0 {
		t.Fatalf("SELECT (CONDSTORE) on n3: %+v", selB)
	}
	a := imapDial(t, n1, user, nil)
	if _, err := a.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	// waitFetch waits for an unsolicited FETCH of seq whose flags satisfy ok.
	waitFetch := func(what string, seq uint32, ok func([]goimap.Flag) bool, poll func()) *imapclient.FetchMessageBuffer {
		t.Helper()
		deadline := time.After(10 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		var seen []string
		for {
			select {
			case m := <-fetches:
				seen = append(seen, fmt.Sprintf("%d %v modseq %d", m.SeqNum, m.Flags, m.ModSeq))
				if m.SeqNum == seq && ok(m.Flags) {
					return m
				}
			case <-tick.C:
				if poll != nil {
					poll()
				}
			case <-deadline:
				t.Fatalf("%s: no unsolicited FETCH on n3 within 10s; saw %q", what, seen)
			}
		}
	}
	waitExpunge := func(what string, seq uint32, poll func()) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case s := <-expunges:
				if s != seq {
					t.Fatalf("%s: EXPUNGE %d, want %d", what, s, seq)
				}
				return
			case <-tick.C:
				if poll != nil {
					poll()
				}
			case <-deadline:
				t.Fatalf("%s: no unsolicited EXPUNGE on n3 within 10s", what)
			}
		}
	}
	modseqOnA := func(seq uint32) uint64 {
		t.Helper()
		ms, err := a.Fetch(goimap.SeqSetNum(seq), &goimap.FetchOptions{ModSeq: true}).Collect()
		if err != nil || len(ms) != 1 {
			t.Fatalf("FETCH MODSEQ on n1: %v %v", ms, err)
		}
		return ms[0].ModSeq
	}

	// In IDLE: A flags message 2.
	idle, err := b.Idle()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Store(goimap.SeqSetNum(2), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagFlagged}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	m := waitFetch("\\Flagged in IDLE", 2, func(f []goimap.Flag) bool { return slices.Contains(f, goimap.FlagFlagged) }, nil)
	if m.ModSeq <= selB.HighestModSeq {
		t.Fatalf("unsolicited FETCH MODSEQ %d, not above HIGHESTMODSEQ %d at SELECT", m.ModSeq, selB.HighestModSeq)
	}
	if want := modseqOnA(2); m.ModSeq != want {
		t.Fatalf("MODSEQ %d on n3, %d on n1", m.ModSeq, want)
	}

	// In IDLE: A deletes and expunges message 3.
	if _, err := a.Store(goimap.SeqSetNum(3), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagDeleted}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if exp, err := a.Expunge().Collect(); err != nil || !slices.Equal(exp, []uint32{3}) {
		t.Fatalf("EXPUNGE on n1: %v %v", exp, err)
	}
	waitExpunge("EXPUNGE in IDLE", 3, nil)
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}

	// On NOOP: A unflags message 2 and expunges message 1 (still 1 on B,
	// whose view is now 1, 2, 4).
	noop := func() {
		if err := b.Noop().Wait(); err != nil {
			t.Errorf("NOOP on n3: %v", err)
		}
	}
	if _, err := a.Store(goimap.SeqSetNum(2), &goimap.StoreFlags{Op: goimap.StoreFlagsDel, Flags: []goimap.Flag{goimap.FlagFlagged}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	prev := m.ModSeq
	m = waitFetch("-\\Flagged on NOOP", 2, func(f []goimap.Flag) bool { return !slices.Contains(f, goimap.FlagFlagged) }, noop)
	if m.ModSeq <= prev || m.ModSeq != modseqOnA(2) {
		t.Fatalf("MODSEQ %d after unflagging (was %d, n1 says %d)", m.ModSeq, prev, modseqOnA(2))
	}
	if _, err := a.Store(goimap.SeqSetNum(1), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagDeleted}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if exp, err := a.Expunge().Collect(); err != nil || !slices.Equal(exp, []uint32{1}) {
		t.Fatalf("EXPUNGE on n1: %v %v", exp, err)
	}
	waitExpunge("EXPUNGE on NOOP", 1, noop)

	// B's view now matches n1's: two messages, with the same UIDs.
	sd, err := b.UIDSearch(&goimap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	sa, err := a.UIDSearch(&goimap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := sd.AllUIDs(), sa.AllUIDs(); len(got) != 2 || !slices.Equal(got, want) {
		t.Fatalf("UIDs on n3 %v, on n1 %v", got, want)
	}
}

// cramClient is CRAM-MD5 (RFC 2195) for go-sasl.
type cramClient struct{ user, pass string }

func (c *cramClient) Start() (string, []byte, error) { return "CRAM-MD5", nil, nil }

func (c *cramClient) Next(challenge []byte) ([]byte, error) {
	h := hmac.New(md5.New, []byte(c.pass))
	h.Write(challenge)
	return []byte(c.user + " " + hex.EncodeToString(h.Sum(nil))), nil
}

// authFailed checks that err is a tagged NO [AUTHENTICATIONFAILED].
func authFailed(err error) error {
	var ie *goimap.Error
	if !errors.As(err, &ie) {
		return fmt.Errorf("not a status response: %v", err)
	}
	if ie.Type != goimap.StatusResponseTypeNo || ie.Code != goimap.ResponseCodeAuthenticationFailed {
		return fmt.Errorf("%s [%s] %s, want NO [AUTHENTICATIONFAILED]", ie.Type, ie.Code, ie.Text)
	}
	return nil
}

// TestIMAPSAndSASLMechanisms: LOGIN over implicit TLS on the IMAPS port
// (the node's own certificate); AUTHENTICATE SCRAM-SHA-256, LOGIN and PLAIN
// after STARTTLS; a wrong password is a tagged NO [AUTHENTICATIONFAILED]
// for every mechanism; CRAM-MD5 is not offered by default, and where a node
// runs with --allow-cram-md5 it works for an account whose password was
// set with --cram-md5, and only for it.
func TestIMAPSAndSASLMechanisms(t *testing.T) {
	c := harness.New(t, harness.Options{NoStart: true})
	n1, n3 := c.Node("n1"), c.Node("n3")
	n3.Args = append(n3.Args, "--allow-cram-md5")
	for _, n := range c.Nodes {
		n.Start()
	}
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	const alice, bob = "alice@example.org", "bob@example.org"
	seedUser(t, n1, alice)
	seedUser(t, n1, bob)
	imapDial(t, n3, bob, nil) // every node knows the users

	// IMAPS: the node's certificate, LOGIN.
	pemBytes, err := os.ReadFile(filepath.Join(n1.DataDir, "tls", "server.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(pemBytes)
	if blk == nil {
		t.Fatal("no certificate in server.pem")
	}
	tlsCfg := &tls.Config{InsecureSkipVerify: true, VerifyConnection: func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, blk.Bytes) {
			return errors.New("IMAPS does not present the node's certificate")
		}
		return nil
	}}
	ic, err := imapclient.DialTLS(n1.Addr(harness.IMAPSPort), &imapclient.Options{TLSConfig: tlsCfg})
	if err != nil {
		t.Fatalf("IMAPS: %v", err)
	}
	defer ic.Close()
	if err := ic.Login(alice, "pw-"+alice).Wait(); err != nil {
		t.Fatalf("LOGIN over IMAPS: %v", err)
	}
	if _, err := ic.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT over IMAPS: %v", err)
	}
	ic2, err := imapclient.DialTLS(n1.Addr(harness.IMAPSPort), &imapclient.Options{TLSConfig: tlsCfg})
	if err != nil {
		t.Fatal(err)
	}
	defer ic2.Close()
	if err := authFailed(ic2.Login(alice, "wrong").Wait()); err != nil {
		t.Errorf("LOGIN with a wrong password over IMAPS: %v", err)
	}

	starttls := func(n *harness.Node) *imapclient.Client {
		t.Helper()
		cl, err := imapclient.DialStartTLS(n.Addr(harness.IMAPPort), &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
		if err != nil {
			t.Fatalf("STARTTLS on %s: %v", n.ID, err)
		}
		t.Cleanup(func() { cl.Close() })
		return cl
	}
	mechs := []struct {
		name        string
		good, wrong func(user string) sasl.Client
	}{
		{"SCRAM-SHA-256",
			func(u string) sasl.Client { return &auth.ScramClient{User: u, Password: "pw-" + u} },
			func(u string) sasl.Client { return &auth.ScramClient{User: u, Password: "wrong"} }},
		{"LOGIN",
			func(u string) sasl.Client { return sasl.NewLoginClient(u, "pw-"+u) },
			func(u string) sasl.Client { return sasl.NewLoginClient(u, "wrong") }},
		{"PLAIN",
			func(u string) sasl.Client { return sasl.NewPlainClient("", u, "pw-"+u) },
			func(u string) sasl.Client { return sasl.NewPlainClient("", u, "wrong") }},
	}
	for _, m := range mechs {
		cl := starttls(n1)
		if !cl.Caps().Has(goimap.AuthCap(m.name)) {
			t.Errorf("AUTH=%s not advertised after STARTTLS: %v", m.name, cl.Caps())
		}
		sc := m.good(alice)
		if err := cl.Authenticate(sc); err != nil {
			t.Errorf("AUTHENTICATE %s: %v", m.name, err)
			continue
		}
		if s, ok := sc.(*auth.ScramClient); ok && !s.Verified() {
			t.Errorf("SCRAM: the server's signature did not verify")
		}
		if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
			t.Errorf("SELECT after AUTHENTICATE %s: %v", m.name, err)
		}
		if err := authFailed(starttls(n1).Authenticate(m.wrong(alice))); err != nil {
			t.Errorf("AUTHENTICATE %s with a wrong password: %v", m.name, err)
		}
		if err := authFailed(starttls(n1).Authenticate(m.good("nobody@example.org"))); err != nil {
			t.Errorf("AUTHENTICATE %s as an unknown user: %v", m.name, err)
		}
	}
	if err := authFailed(starttls(n1).Login(alice, "wrong").Wait()); err != nil {
		t.Errorf("LOGIN with a wrong password after STARTTLS: %v", err)
	}

	// CRAM-MD5: not offered by n1 (default), and refused if tried anyway.
	cl := starttls(n1)
	if cl.Caps().Has(goimap.AuthCap("CRAM-MD5")) {
		t.Errorf("n1 offers CRAM-MD5 by default: %v", cl.Caps())
	}
	var ie *goimap.Error
	if err := cl.Authenticate(&cramClient{alice, "pw-" + alice}); !errors.As(err, &ie) || ie.Type != goimap.StatusResponseTypeNo {
		t.Errorf("CRAM-MD5 on n1: %v, want NO", err)
	}
	// n3 offers it; alice gets the CRAM-MD5 secret, bob does not.
	if out, errOut, err := n1.CLIInput("pw-"+alice+"\n", "user", "passwd", alice, "--password-stdin", "--cram-md5"); err != nil {
		t.Fatalf("user passwd --cram-md5: %v %s %s", err, out, errOut)
	}
	if !starttls(n3).Caps().Has(goimap.AuthCap("CRAM-MD5")) {
		t.Fatalf("n3 (--allow-cram-md5) does not offer CRAM-MD5")
	}
	harness.Eventually(t, 20*time.Second, "CRAM-MD5 for alice on n3", func() error {
		return starttls(n3).Authenticate(&cramClient{alice, "pw-" + alice})
	})
	cl = starttls(n3)
	if err := cl.Authenticate(&cramClient{alice, "pw-" + alice}); err != nil {
		t.Fatalf("CRAM-MD5 on n3: %v", err)
	}
	if _, err := cl.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT after CRAM-MD5: %v", err)
	}
	if err := authFailed(starttls(n3).Authenticate(&cramClient{alice, "wrong"})); err != nil {
		t.Errorf("CRAM-MD5 with a wrong password: %v", err)
	}
	if err := authFailed(starttls(n3).Authenticate(&cramClient{bob, "pw-" + bob})); err != nil {
		t.Errorf("CRAM-MD5 for an account without the CRAM-MD5 secret: %v", err)
	}
	// The other mechanisms still work on n3 with the new secrets.
	if err := starttls(n3).Authenticate(&auth.ScramClient{User: alice, Password: "pw-" + alice}); err != nil {
		t.Errorf("SCRAM-SHA-256 on n3 after passwd: %v", err)
	}
}
