package imap

import (
	"bytes"
	"strings"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

func TestIMAPBasicFlow(t *testing.T) {
	e := newEnv(t)
	for i := 1; i <= 5; i++ {
		e.deliver("INBOX", testMessage(i))
	}
	c := e.client()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages != 5 || sel.UIDNext != 6 || sel.UIDValidity == 0 {
		t.Fatalf("select: %+v", sel)
	}
	msgs, err := c.Fetch(goimap.SeqSetNum(1, 5), &goimap.FetchOptions{
		UID: true, Flags: true, Envelope: true, RFC822Size: true, InternalDate: true,
		BodySection: []*goimap.FetchItemBodySection{{Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("fetched %d messages", len(msgs))
	}
	m := msgs[1]
	if m.UID != 5 || m.Envelope.Subject != "message 5" || m.Envelope.From[0].Addr() != "sender5@example.net" {
		t.Fatalf("message: uid %d env %+v", m.UID, m.Envelope)
	}
	if got := string(m.FindBodySection(&goimap.FetchItemBodySection{})); got != testMessage(5) {
		t.Fatalf("body %q", got)
	}
	if m.RFC822Size != int64(len(testMessage(5))) {
		t.Fatalf("size %d", m.RFC822Size)
	}
	// STORE, then SEARCH finds it, EXPUNGE removes it.
	if _, err := c.Store(goimap.SeqSetNum(2), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagDeleted}}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	sd, err := c.Search(&goimap.SearchCriteria{Flag: []goimap.Flag{goimap.FlagDeleted}}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if got := sd.AllSeqNums(); len(got) != 1 || got[0] != 2 {
		t.Fatalf("search: %v", got)
	}
	exp, err := c.Expunge().Collect()
	if err != nil {
		t.Fatal(err)
	}
	if len(exp) != 1 || exp[0] != 2 {
		t.Fatalf("expunge: %v", exp)
	}
	// The UIDs left: 1, 3, 4, 5.
	sd, err = c.UIDSearch(&goimap.SearchCriteria{}, nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if got := sd.AllUIDs(); len(got) != 4 || got[1] != 3 {
		t.Fatalf("uids: %v", got)
	}
}

func TestIMAPAppendCopyMove(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	msg := testMessage(1)
	date := time.Date(2023, 3, 4, 5, 6, 7, 0, time.UTC)
	ac := c.Append("Drafts", int64(len(msg)), &goimap.AppendOptions{Flags: []goimap.Flag{goimap.FlagDraft}, Time: date})
	ac.Write([]byte(msg))
	ac.Close()
	ad, err := ac.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if ad.UID != 1 || ad.UIDValidity == 0 {
		t.Fatalf("append data %+v", ad)
	}
	if _, err := c.Select("Drafts", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(goimap.SeqSetNum(1), &goimap.FetchOptions{Flags: true, InternalDate: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if !msgs[0].InternalDate.Equal(date) || len(msgs[0].Flags) != 1 || msgs[0].Flags[0] != goimap.FlagDraft {
		t.Fatalf("appended: %+v", msgs[0])
	}
	cd, err := c.Copy(goimap.SeqSetNum(1), "Archive").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if cd.DestUIDs.String() != "1" {
		t.Fatalf("copyuid %+v", cd)
	}
	md, err := c.Move(goimap.SeqSetNum(1), "Trash").Wait()
	if err != nil {
		t.Fatal(err)
	}
	if md.DestUIDs.String() != "1" {
		t.Fatalf("move %+v", md)
	}
	st, err := c.Status("Drafts", &goimap.StatusOptions{NumMessages: true}).Wait()
	if err != nil || *st.NumMessages != 0 {
		t.Fatalf("status %+v %v", st, err)
	}
	// Into a missing mailbox: TRYCREATE.
	if _, err2 := c.Select("Trash", nil).Wait(); err2 != nil {
		t.Fatal(err2)
	}
	_, err = c.Copy(goimap.SeqSetNum(1), "Nope").Wait()
	if err == nil || !strings.Contains(err.Error(), "TRYCREATE") {
		t.Fatalf("copy to missing: %v", err)
	}
}

func TestIMAPListAndMailboxes(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	for _, n := range []string{"Work", "Work/2024", "Work/2024/Q1", "Fächer"} {
		if err := c.Create(n, nil).Wait(); err != nil {
			t.Fatalf("create %s: %v", n, err)
		}
	}
	if err := c.Create("Work", nil).Wait(); err == nil || !strings.Contains(err.Error(), "ALREADYEXISTS") {
		t.Fatalf("create twice: %v", err)
	}
	list, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*goimap.ListData{}
	for _, l := range list {
		got[l.Mailbox] = l
	}
	for _, n := range []string{"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Work", "Work/2024", "Fächer"} {
		if got[n] == nil {
			t.Fatalf("LIST lacks %s: %v", n, list)
		}
	}
	if !hasAttr(got["Sent"].Attrs, goimap.MailboxAttrSent) || !hasAttr(got["Work"].Attrs, goimap.MailboxAttrHasChildren) {
		t.Fatalf("attrs: %v %v", got["Sent"].Attrs, got["Work"].Attrs)
	}
	if err := c.Rename("Work", "Job", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	list, _ = c.List("", "Job/*", nil).Collect()
	if len(list) != 2 {
		t.Fatalf("renamed children: %v", list)
	}
	if err := c.Delete("Job/2024/Q1").Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("Nope").Wait(); err == nil || !strings.Contains(err.Error(), "NONEXISTENT") {
		t.Fatalf("delete missing: %v", err)
	}
	if err := c.Unsubscribe("Job").Wait(); err != nil {
		t.Fatal(err)
	}
	lsub, err := c.List("", "*", &goimap.ListOptions{SelectSubscribed: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lsub {
		if l.Mailbox == "Job" {
			t.Fatalf("unsubscribed Job still listed")
		}
	}
	ns, err := c.Namespace().Wait()
	if err != nil || len(ns.Personal) != 1 || ns.Personal[0].Delim != '/' {
		t.Fatalf("namespace %+v %v", ns, err)
	}
}

func hasAttr(attrs []goimap.MailboxAttr, a goimap.MailboxAttr) bool {
	for _, x := range attrs {
		if strings.EqualFold(string(x), string(a)) {
			return true
		}
	}
	return false
}

func TestIMAPIdleSeesDelivery(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", testMessage(1))
	exists := make(chan uint32, 10)
	c := e.client(&imapclient.Options{UnilateralDataHandler: &imapclient.UnilateralDataHandler{
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				exists <- *d.NumMessages
			}
		},
	}})
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	e.deliver("INBOX", testMessage(2))
	select {
	case n := <-exists:
		if n != 2 {
			t.Fatalf("EXISTS %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no EXISTS during IDLE")
	}
	if err := idle.Close(); err != nil {
		t.Fatal(err)
	}
	if err := idle.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestIMAPRawBasics(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", testMessage(1))
	r := e.rawLogin()
	u := r.ok("SELECT INBOX")
	if !hasLine(u, "1 EXISTS") || !hasLine(u, "HIGHESTMODSEQ") {
		t.Fatalf("select: %q", u)
	}
	u = r.ok("FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)] BODYSTRUCTURE)")
	if !hasLine(u, "Subject: message 1") || !hasLine(u, `BODYSTRUCTURE ("text" "plain"`) {
		t.Fatalf("fetch: %q", u)
	}
	r.expect("FETCH 2 FLAGS", "BAD [CLIENTBUG]")
	r.expect("SELECT Nope", "NO [NONEXISTENT]")
	if !bytes.Contains([]byte(strings.Join(u, "\n")), []byte("FETCH")) {
		t.Fatal("no fetch")
	}
}

// A message far bigger than a command line goes through APPEND whole.
func TestIMAPAppendBig(t *testing.T) {
	e := newEnv(t)
	c := e.client()
	var b strings.Builder
	b.WriteString("Subject: big\r\n\r\n")
	for b.Len() < 3<<20 {
		b.WriteString("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+\r\n")
	}
	msg := b.String()
	ac := c.Append("INBOX", int64(len(msg)), &goimap.AppendOptions{Flags: []goimap.Flag{goimap.FlagSeen}})
	ac.Write([]byte(msg))
	ac.Close()
	if _, err := ac.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(goimap.SeqSetNum(1), &goimap.FetchOptions{BodySection: []*goimap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	if got := msgs[0].FindBodySection(&goimap.FetchItemBodySection{Peek: true}); !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("big message differs: %d octets, want %d", len(got), len(msg))
	}
}
