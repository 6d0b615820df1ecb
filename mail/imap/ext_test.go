package imap

import (
	"crypto/tls"
	"strings"
	"sync/atomic"
	"testing"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
)

func TestIMAPCondstore(t *testing.T) {
	e := newEnv(t)
	for i := 1; i <= 3; i++ {
		e.deliver("INBOX", testMessage(i))
	}
	c := e.client()
	sel, err := c.Select("INBOX", &goimap.SelectOptions{CondStore: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.HighestModSeq == 0 {
		t.Fatal("no HIGHESTMODSEQ")
	}
	base := sel.HighestModSeq
	msgs, err := c.Fetch(goimap.SeqSetNum(1, 2, 3), &goimap.FetchOptions{UID: true, ModSeq: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.ModSeq == 0 || m.ModSeq > base {
			t.Fatalf("modseq %d (highest %d)", m.ModSeq, base)
		}
	}
	// Change message 2; CHANGEDSINCE base returns only it.
	if _, err := c.Store(goimap.SeqSetNum(2), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagFlagged}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	msgs, err = c.Fetch(goimap.SeqSetNum(1, 2, 3), &goimap.FetchOptions{UID: true, Flags: true, ChangedSince: base}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].UID != 2 || msgs[0].ModSeq <= base {
		t.Fatalf("changedsince: %+v", msgs)
	}
	changed := msgs[0].ModSeq
	// UNCHANGEDSINCE below message 2's modseq fails for it: MODIFIED 2.
	r := e.rawLogin()
	r.ok("SELECT INBOX (CONDSTORE)")
	_, tagged := r.cmd("STORE 1:3 (UNCHANGEDSINCE " + itoa(changed-1) + ") +FLAGS.SILENT (\\Answered)")
	if !strings.Contains(tagged, "OK [MODIFIED 2]") {
		t.Fatalf("conditional store: %s", tagged)
	}
	u := r.ok("SEARCH MODSEQ " + itoa(changed))
	if !hasLine(u, "* SEARCH 1 2 3 (MODSEQ") {
		t.Fatalf("search modseq: %q", u)
	}
	u = r.ok("STATUS INBOX (HIGHESTMODSEQ MESSAGES)")
	if !hasLine(u, "HIGHESTMODSEQ") {
		t.Fatalf("status: %q", u)
	}
	// The other session hears of the flag changes with MODSEQ.
	u = r.ok("NOOP")
	_ = u
	if err := c.Noop().Wait(); err != nil {
		t.Fatal(err)
	}
}

func itoa(n uint64) string { return uitoa64(n) }

func uitoa64(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func TestIMAPQuota(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	// No limit: no quota root.
	qr, err := c.GetQuotaRoot("INBOX").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(qr) != 0 {
		t.Fatalf("unlimited user has quota %+v", qr)
	}
	clustertest.Propose(t, e.node, &command.SetQuota{Address: "alice@example.org", QuotaBytes: 10 * 1024})
	e.deliver("INBOX", testMessage(1))
	qr, err = c.GetQuotaRoot("INBOX").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if len(qr) != 1 || qr[0].Root != "" {
		t.Fatalf("quota root %+v", qr)
	}
	st := qr[0].Resources[goimap.QuotaResourceStorage]
	if st.Limit != 10 || st.Usage != 1 {
		t.Fatalf("storage %+v", st)
	}
	q, err := c.GetQuota("").Wait()
	if err != nil || q.Resources[goimap.QuotaResourceStorage].Limit != 10 {
		t.Fatalf("getquota %+v %v", q, err)
	}
	// Over quota: APPEND is refused before the message is sent.
	big := strings.Repeat("x", 20*1024)
	ac := c.Append("INBOX", int64(len(big)), nil)
	ac.Write([]byte(big))
	ac.Close()
	if _, err := ac.Wait(); err == nil || !strings.Contains(err.Error(), "OVERQUOTA") {
		t.Fatalf("append over quota: %v", err)
	}
	r := e.rawLogin()
	r.expect(`SETQUOTA "" (STORAGE 100)`, "NO [NOPERM]")
	r.expect("GETQUOTAROOT Nope", "NO [NONEXISTENT]")
}

func TestIMAPID(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	id, err := c.ID(&goimap.IDData{Name: "test-client", Version: "1.0"}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if id.Name != "Flotilla" || id.Version != "test" {
		t.Fatalf("id %+v", id)
	}
	r := e.raw() // ID works before login too
	u := r.ok("ID NIL")
	if !hasLine(u, `* ID ("name" "Flotilla"`) {
		t.Fatalf("%q", u)
	}
	r.expect(`ID ("a")`, "BAD")
}

func TestIMAPStartTLSAndAuthenticate(t *testing.T) {
	e := newEnv(t)
	c, err := imapclient.DialStartTLS(e.addr, &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !c.Caps().Has(goimap.AuthCap("SCRAM-SHA-256")) {
		t.Fatalf("caps after STARTTLS: %v", c.Caps())
	}
	if err := c.Authenticate(sasl.NewPlainClient("", "alice@example.org", "wrong")); err == nil || !strings.Contains(err.Error(), "AUTHENTICATIONFAILED") {
		t.Fatalf("bad password: %v", err)
	}
	if err := c.Authenticate(sasl.NewPlainClient("", "alice@example.org", testPassword)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	r := e.raw()
	r.expect("AUTHENTICATE NOPE", "NO [CANNOT]")
	r.expect("AUTHENTICATE PLAIN "+b64.EncodeToString([]byte("x")), "")
}

// TestAppendDiskLow: while the node's disk is nearly full, APPEND is refused
// before the message is sent, with a code the client can retry on.
func TestAppendDiskLow(t *testing.T) {
	var low atomic.Bool
	e := newEnv(t, func(s *Server) { s.DiskLow = low.Load })
	c := e.client()
	appendMsg := func() error {
		msg := "Subject: disk\r\n\r\nbody\r\n"
		ac := c.Append("INBOX", int64(len(msg)), nil)
		ac.Write([]byte(msg))
		ac.Close()
		_, err := ac.Wait()
		return err
	}
	low.Store(true)
	if err := appendMsg(); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("append with the disk low: %v, want NO [UNAVAILABLE]", err)
	}
	// A LITERAL+ message is read and dropped, and the command answered
	// BAD, as for any refused non-synchronizing literal.
	r := e.rawLogin()
	r.expect("APPEND INBOX {5+}\r\nhello", "BAD [UNAVAILABLE]")
	low.Store(false)
	if err := appendMsg(); err != nil {
		t.Fatalf("append with room: %v", err)
	}
}
