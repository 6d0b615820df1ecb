package imap

import (
	"strings"
	"testing"
)

func TestIMAPSearchKeys(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", testMessage(1), `\Seen`)
	e.deliver("INBOX", "From: =?utf-8?q?J=C3=BCrgen?= <j@example.de>\r\nTo: x@example.org\r\nCc: cc@example.org\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\r\nDate: Mon, 3 Jun 2024 08:00:00 +0200\r\nX-Tag: blue\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSch=F6ne Gr=FC=DFe\r\n", "$Work")
	e.deliver("INBOX", strings.Replace(testMessage(3), "Body of message 3.", strings.Repeat("long line of text\r\n", 200), 1), `\Flagged`, `\Deleted`)
	r := e.rawLogin()
	r.ok("SELECT INBOX")
	cases := []struct{ q, want string }{
		{"ALL", "1 2 3"},
		{"SEEN", "1"},
		{"UNSEEN", "2 3"},
		{"FLAGGED DELETED", "3"},
		{"NOT DELETED", "1 2"},
		{"OR SEEN FLAGGED", "1 3"},
		{"KEYWORD $Work", "2"},
		{"UNKEYWORD $work", "1 3"},
		{"FROM sender1", "1"},
		{"CHARSET UTF-8 FROM Jürgen", "2"},
		{"CHARSET UTF-8 SUBJECT grüße", "2"},
		{"CHARSET UTF-8 BODY schöne", "2"},
		{"CHARSET UTF-8 TEXT GRÜSSE", ""},
		{"TEXT blue", "2"},
		{"HEADER X-Tag blue", "2"},
		{"HEADER X-Tag \"\"", "2"},
		{"CC cc@example", "2"},
		{"TO alice", "1 3"},
		{"LARGER 1000", "3"},
		{"SMALLER 1000", "1 2"},
		{"SENTON 3-Jun-2024", "2"},
		{"SENTBEFORE 2-Jun-2024", "1 3"},
		{"SENTSINCE 2-Jun-2024", "2"},
		{"ON 1-May-2024", "1 2 3"},
		{"BEFORE 1-May-2024", ""},
		{"SINCE 2-May-2024", ""},
		{"UID 2:*", "2 3"},
		{"2,3 NOT 3", "2"},
		{"(SEEN) (NOT FLAGGED)", "1"},
		{"RECENT", ""},
		{"NEW", ""},
		{"OLD", "1 2 3"},
		{"BODY \"long line\"", "3"},
	}
	for _, c := range cases {
		u := r.ok("SEARCH " + c.q)
		got := ""
		for _, l := range u {
			if strings.HasPrefix(l, "* SEARCH") {
				got = strings.TrimSpace(strings.TrimPrefix(l, "* SEARCH"))
			}
		}
		if got != c.want {
			t.Errorf("SEARCH %s: got %q, want %q", c.q, got, c.want)
		}
	}
	// ESEARCH and SEARCHRES.
	u := r.ok("UID SEARCH RETURN (MIN MAX COUNT ALL) NOT SEEN")
	if !hasLine(u, "* ESEARCH (TAG ") || !hasLine(u, "UID MIN 2 MAX 3 ALL 2:3 COUNT 2") {
		t.Fatalf("esearch: %q", u)
	}
	r.ok("SEARCH RETURN (SAVE) FLAGGED")
	u = r.ok("FETCH $ (UID)")
	if len(u) != 1 || !strings.Contains(u[0], "UID 3") {
		t.Fatalf("fetch $: %q", u)
	}
	// A new message is RECENT and NEW to this session.
	e.deliver("INBOX", testMessage(4))
	r.ok("NOOP")
	u = r.ok("SEARCH NEW")
	if !hasLine(u, "* SEARCH 4") {
		t.Fatalf("new: %q", u)
	}
}

func TestIMAPRev2AndExtendedList(t *testing.T) {
	e := newEnv(t)
	e.deliver("INBOX", "Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8gd29ybGQ=\r\n")
	r := e.rawLogin()
	u := r.ok("ENABLE IMAP4rev2 CONDSTORE")
	if !hasLine(u, "* ENABLED IMAP4rev2 CONDSTORE") {
		t.Fatalf("enable: %q", u)
	}
	r.ok(`CREATE "Ünïcode/child"`)
	u = r.ok(`LIST "" "Ü*"`)
	if !hasLine(u, `"/" "Ünïcode"`) {
		t.Fatalf("utf-8 list: %q", u)
	}
	u = r.ok("SELECT INBOX")
	if hasLine(u, "RECENT") || !hasLine(u, "HIGHESTMODSEQ") {
		t.Fatalf("rev2 select: %q", u)
	}
	u = r.ok("FETCH 1 (BINARY[1] BINARY.SIZE[1])")
	if !hasLine(u, "BINARY[1] {11}hello world") || !hasLine(u, "BINARY.SIZE[1] 11") {
		t.Fatalf("binary: %q", u)
	}
	u = r.ok("SEARCH ALL")
	if !hasLine(u, "* ESEARCH (TAG ") {
		t.Fatalf("rev2 search: %q", u)
	}
	u = r.ok(`LIST (SUBSCRIBED) "" "*" RETURN (CHILDREN STATUS (MESSAGES UIDNEXT SIZE))`)
	if !hasLine(u, `* LIST (\HasNoChildren \Subscribed) "/" INBOX`) || !hasLine(u, "* STATUS INBOX (MESSAGES 1 UIDNEXT 2 SIZE") {
		t.Fatalf("extended list: %q", u)
	}
	u = r.ok(`LIST (SPECIAL-USE) "" "*"`)
	if len(u) != 5 || !hasLine(u, `\Sent`) {
		t.Fatalf("special-use list: %q", u)
	}
	u = r.ok(`LIST "" "%"`)
	if !hasLine(u, `Ünïcode`) || hasLine(u, "child") {
		t.Fatalf("%% list: %q", u)
	}
	u = r.ok(`LSUB "" "*"`)
	if !hasLine(u, `* LSUB () "/" "Ünïcode/child"`) {
		t.Fatalf("lsub: %q", u)
	}
}
