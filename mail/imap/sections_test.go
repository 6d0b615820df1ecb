package imap

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/mail/auth"
)

// The parts of the multipart message the section tests append. Each part's
// content is what RFC 3501 section 6.4.5 says BODY[n] returns: the octets
// between the blank line after the part's header and the CRLF that starts
// the next boundary delimiter (that CRLF belongs to the delimiter, RFC 2046
// section 5.1.1).
const (
	secPlain     = "Hello Bob,\r\nthis is the plain part.\r\n"
	secHTML      = "<p>Hello <b>Bob</b>=2C the HTML part.</p>\r\n"
	secPlainMIME = "Content-Type: text/plain; charset=utf-8\r\n\r\n"
	secInnerText = "Inner plain text.\r\nSecond inner line.\r\nThird.\r\n"
	secInnerHTML = "<p>Inner</p>\r\n"
)

// secAttachment is a base64 attachment, wrapped at 76 characters.
func secAttachment() string {
	data := make([]byte, 150)
	for i := range data {
		data[i] = byte(i * 7)
	}
	enc := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.String()
}

// secNested is the message/rfc822 part: itself a multipart/alternative
// message. It ends with the close delimiter's CRLF, so the part's content
// is exactly this string.
const secNested = "From: Nested Sender <nested@example.com>\r\n" +
	"To: alice@example.org\r\n" +
	"Subject: inner message\r\n" +
	"Date: Mon, 3 Jun 2024 08:00:00 +0000\r\n" +
	"Message-ID: <inner@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: multipart/alternative; boundary=\"inner\"\r\n" +
	"\r\n" +
	"--inner\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n" +
	secInnerText +
	"\r\n--inner\r\n" +
	"Content-Type: text/html; charset=us-ascii\r\n" +
	"\r\n" +
	secInnerHTML +
	"\r\n--inner--\r\n"

// secSimple is a second encapsulated message, not multipart: its part 1
// is its body (RFC 3501 section 6.4.5).
const secSimple = "Subject: simple inner\r\n" +
	"\r\n" +
	secSimpleBody

const secSimpleBody = "Just text.\r\n"

func secMessage() string {
	return "From: Alice Sender <alice@example.net>\r\n" +
		"To: Bob <bob@example.org>\r\n" +
		"Cc: Carol <carol@example.org>\r\n" +
		"Bcc: dave@example.org\r\n" +
		"Subject: sections test\r\n" +
		"Date: Tue, 4 Jun 2024 10:20:30 +0200\r\n" +
		"Message-ID: <sections@example.net>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"outer\"\r\n" +
		"\r\n" +
		"This is a multi-part message in MIME format.\r\n" +
		"--outer\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"\r\n" +
		secPlain +
		"\r\n--outer\r\n" +
		"Content-Type: text/html; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: quoted-printable\r\n" +
		"\r\n" +
		secHTML +
		"\r\n--outer\r\n" +
		"Content-Type: message/rfc822\r\n" +
		"Content-Description: forwarded\r\n" +
		"\r\n" +
		secNested +
		"\r\n--outer\r\n" +
		"Content-Type: application/octet-stream; name=\"data.bin\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n" +
		"Content-Disposition: attachment; filename=\"data.bin\"\r\n" +
		"\r\n" +
		secAttachment() +
		"\r\n--outer\r\n" +
		"Content-Type: message/rfc822\r\n" +
		"\r\n" +
		secSimple +
		"\r\n--outer--\r\n"
}

func secLines(s string) int { return strings.Count(s, "\r\n") }

// secAppend APPENDs msg with a synchronising literal, checking the
// continuation request, and returns the tagged response.
func secAppend(t *testing.T, r *raw, mailbox, flags, msg string) string {
	t.Helper()
	r.n++
	tag := fmt.Sprintf("T%d", r.n)
	if flags != "" {
		flags = " (" + flags + ")"
	}
	r.send(fmt.Sprintf("%s APPEND %s%s {%d}\r\n", tag, mailbox, flags, len(msg)))
	if l := r.line(); !strings.HasPrefix(l, "+ ") && l != "+" {
		t.Fatalf("APPEND: %q instead of a continuation request", l)
	}
	r.send(msg + "\r\n")
	u, tagged := r.until(tag)
	if len(u) != 0 {
		t.Fatalf("APPEND: untagged %q", u)
	}
	return tagged
}

// secFetchOne runs a FETCH of one message and returns its single untagged
// FETCH response (literals inline), failing on anything else.
func secFetchOne(t *testing.T, r *raw, cmd string) string {
	t.Helper()
	u := r.ok(cmd)
	var fetches []string
	for _, l := range u {
		if strings.Contains(l, " FETCH (") {
			fetches = append(fetches, l)
		}
	}
	if len(fetches) != 1 {
		t.Fatalf("%s: %d FETCH responses: %q", cmd, len(fetches), u)
	}
	return fetches[0]
}

var secUIDValidity = regexp.MustCompile(`\[UIDVALIDITY (\d+)\]`)

func secValidity(t *testing.T, u []string) string {
	t.Helper()
	for _, l := range u {
		if m := secUIDValidity.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no UIDVALIDITY in %q", u)
	return ""
}

// TestIMAPSectionsOfMultipart: FETCH of body parts, MIME headers, a part of
// an encapsulated message, a partial fetch, header fields, BODYSTRUCTURE and
// ENVELOPE of a multipart/mixed message, compared octet for octet with what
// RFC 3501 says they are for the message appended.
func TestIMAPSectionsOfMultipart(t *testing.T) {
	e := newEnv(t)
	r := e.rawLogin()
	msg := secMessage()
	tagged := secAppend(t, r, "INBOX", "", msg)
	u := r.ok("SELECT INBOX")
	v := secValidity(t, u)
	if want := "OK [APPENDUID " + v + " 1] "; !strings.Contains(tagged, want) {
		t.Fatalf("APPEND: %q, want %q", tagged, want)
	}
	att := secAttachment()

	// Body parts: BODY[n] with a literal of exactly the part's octets.
	for _, c := range []struct{ section, want string }{
		{"1", secPlain},
		{"2", secHTML},
		{"1.MIME", secPlainMIME},
		{"2.MIME", "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"},
		{"3", secNested},
		{"3.1", secInnerText},
		{"3.2", secInnerHTML},
		{"3.HEADER.FIELDS (SUBJECT)", "Subject: inner message\r\n\r\n"},
		{"4", att},
		{"4.MIME", "Content-Type: application/octet-stream; name=\"data.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"data.bin\"\r\n\r\n"},
		{"3.MIME", "Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n"},
		{"3.HEADER", secNested[:strings.Index(secNested, "\r\n\r\n")+4]},
		{"3.TEXT", secNested[strings.Index(secNested, "\r\n\r\n")+4:]},
		{"3.1.MIME", "Content-Type: text/plain; charset=us-ascii\r\n\r\n"},
		{"5", secSimple},
		{"5.1", secSimpleBody},
		{"5.TEXT", secSimpleBody},
		{"TEXT", msg[strings.Index(msg, "\r\n\r\n")+4:]},
	} {
		got := secFetchOne(t, r, "FETCH 1 (BODY.PEEK["+c.section+"])")
		want := fmt.Sprintf("* 1 FETCH (BODY[%s] {%d}%s)", c.section, len(c.want), c.want)
		if got != want {
			t.Errorf("BODY[%s]:\n got %q\nwant %q", c.section, got, want)
		}
	}

	// A partial fetch: the first 100 octets, origin echoed; and one past
	// the end of a part, clipped to what is there.
	if got, want := secFetchOne(t, r, "FETCH 1 (BODY.PEEK[]<0.100>)"), fmt.Sprintf("* 1 FETCH (BODY[]<0> {100}%s)", msg[:100]); got != want {
		t.Errorf("BODY[]<0.100>:\n got %q\nwant %q", got, want)
	}
	if got, want := secFetchOne(t, r, "FETCH 1 (BODY.PEEK[1]<6.1000>)"), fmt.Sprintf("* 1 FETCH (BODY[1]<6> {%d}%s)", len(secPlain)-6, secPlain[6:]); got != want {
		t.Errorf("BODY[1]<6.1000>:\n got %q\nwant %q", got, want)
	}

	if got, want := secFetchOne(t, r, "FETCH 1 (BODY.PEEK[]<100.50>)"), fmt.Sprintf("* 1 FETCH (BODY[]<100> {50}%s)", msg[100:150]); got != want {
		t.Errorf("BODY[]<100.50>:\n got %q\nwant %q", got, want)
	}
	// Starting beyond the end: an empty string.
	if got, want := secFetchOne(t, r, fmt.Sprintf("FETCH 1 (BODY.PEEK[]<%d.10>)", len(msg)+5)), fmt.Sprintf("* 1 FETCH (BODY[]<%d> \"\")", len(msg)+5); got != want && got != fmt.Sprintf("* 1 FETCH (BODY[]<%d> {0})", len(msg)+5) {
		t.Errorf("BODY[] beyond the end:\n got %q\nwant %q", got, want)
	}

	// Header fields: the field and the blank line; case of the name as sent.
	// The server names the field in upper case, which RFC 3501 allows
	// (field names are case-insensitive).
	hf := "Subject: sections test\r\n\r\n"
	if got, want := secFetchOne(t, r, "FETCH 1 (BODY.PEEK[HEADER.FIELDS (Subject)])"), fmt.Sprintf("* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {%d}%s)", len(hf), hf); got != want {
		t.Errorf("HEADER.FIELDS:\n got %q\nwant %q", got, want)
	}

	// No \Seen from any of the PEEKs.
	if got := secFetchOne(t, r, "FETCH 1 (FLAGS)"); got != "* 1 FETCH (FLAGS ())" {
		t.Errorf("after BODY.PEEK: %q", got)
	}

	// ENVELOPE: header values as sent; Sender and Reply-To default to From.
	from := `(("Alice Sender" NIL "alice" "example.net"))`
	env := `("Tue, 4 Jun 2024 10:20:30 +0200" "sections test" ` + from + ` ` + from + ` ` + from +
		` (("Bob" NIL "bob" "example.org")) (("Carol" NIL "carol" "example.org")) ((NIL NIL "dave" "example.org")) NIL "<sections@example.net>")`
	if got, want := secFetchOne(t, r, "FETCH 1 (ENVELOPE)"), "* 1 FETCH (ENVELOPE "+env+")"; got != want {
		t.Errorf("ENVELOPE:\n got %s\nwant %s", got, want)
	}

	// BODYSTRUCTURE: sizes in octets of the encoded content, lines for
	// text parts and for the encapsulated message, which also carries its
	// own ENVELOPE and structure (RFC 3501 section 7.4.2).
	nestedFrom := `(("Nested Sender" NIL "nested" "example.com"))`
	nestedEnv := `("Mon, 3 Jun 2024 08:00:00 +0000" "inner message" ` + nestedFrom + ` ` + nestedFrom + ` ` + nestedFrom +
		` ((NIL NIL "alice" "example.org")) NIL NIL NIL "<inner@example.com>")`
	text := func(sub, charset, enc, body string) string {
		return fmt.Sprintf(`("text" %q ("charset" %q) NIL NIL %q %d %d NIL NIL NIL NIL)`, sub, charset, enc, len(body), secLines(body))
	}
	nestedBS := "(" + text("plain", "us-ascii", "7bit", secInnerText) + text("html", "us-ascii", "7bit", secInnerHTML) +
		` "alternative" ("boundary" "inner") NIL NIL NIL)`
	bs := "(" +
		text("plain", "utf-8", "7bit", secPlain) +
		text("html", "utf-8", "quoted-printable", secHTML) +
		fmt.Sprintf(`("message" "rfc822" NIL NIL "forwarded" "7bit" %d %s %s %d NIL NIL NIL NIL)`, len(secNested), nestedEnv, nestedBS, secLines(secNested)) +
		fmt.Sprintf(`("application" "octet-stream" ("name" "data.bin") NIL NIL "base64" %d NIL ("attachment" ("filename" "data.bin")) NIL NIL)`, len(att)) +
		fmt.Sprintf(`("message" "rfc822" NIL NIL NIL "7bit" %d (NIL "simple inner" NIL NIL NIL NIL NIL NIL NIL NIL) %s %d NIL NIL NIL NIL)`,
			len(secSimple), text("plain", "us-ascii", "7bit", secSimpleBody), secLines(secSimple)) +
		` "mixed" ("boundary" "outer") NIL NIL NIL)`
	if got, want := secFetchOne(t, r, "FETCH 1 (BODYSTRUCTURE)"), "* 1 FETCH (BODYSTRUCTURE "+bs+")"; got != want {
		t.Errorf("BODYSTRUCTURE:\n got %s\nwant %s", got, want)
	}
	// BODY (non-extensible): the same without extension data.
	textB := func(sub, charset, enc, body string) string {
		return fmt.Sprintf(`("text" %q ("charset" %q) NIL NIL %q %d %d)`, sub, charset, enc, len(body), secLines(body))
	}
	nestedB := "(" + textB("plain", "us-ascii", "7bit", secInnerText) + textB("html", "us-ascii", "7bit", secInnerHTML) + ` "alternative")`
	b := "(" + textB("plain", "utf-8", "7bit", secPlain) + textB("html", "utf-8", "quoted-printable", secHTML) +
		fmt.Sprintf(`("message" "rfc822" NIL NIL "forwarded" "7bit" %d %s %s %d)`, len(secNested), nestedEnv, nestedB, secLines(secNested)) +
		fmt.Sprintf(`("application" "octet-stream" ("name" "data.bin") NIL NIL "base64" %d)`, len(att)) +
		fmt.Sprintf(`("message" "rfc822" NIL NIL NIL "7bit" %d (NIL "simple inner" NIL NIL NIL NIL NIL NIL NIL NIL) %s %d)`,
			len(secSimple), textB("plain", "us-ascii", "7bit", secSimpleBody), secLines(secSimple)) + ` "mixed")`
	if got, want := secFetchOne(t, r, "FETCH 1 (BODY)"), "* 1 FETCH (BODY "+b+")"; got != want {
		t.Errorf("BODY:\n got %s\nwant %s", got, want)
	}
	if got, want := secFetchOne(t, r, "FETCH 1 (RFC822.SIZE)"), fmt.Sprintf("* 1 FETCH (RFC822.SIZE %d)", len(msg)); got != want {
		t.Errorf("RFC822.SIZE: %q, want %q", got, want)
	}

	// A non-PEEK fetch of a part sets \Seen and says so in the same response.
	got := secFetchOne(t, r, "FETCH 1 (BODY[1])")
	if !strings.Contains(got, fmt.Sprintf("BODY[1] {%d}%s", len(secPlain), secPlain)) || !strings.Contains(got, `FLAGS (\Seen)`) {
		t.Errorf("FETCH BODY[1]: %q", got)
	}
}

// TestIMAPUIDPlusCopyMoveExpunge: UID COPY and UID MOVE answer COPYUID with
// the destination's UIDVALIDITY, the source UIDs and the new UIDs in the
// same order (RFC 4315, RFC 6851); UID EXPUNGE removes only the \Deleted
// messages of its set.
func TestIMAPUIDPlusCopyMoveExpunge(t *testing.T) {
	e := newEnv(t)
	r := e.rawLogin()
	for i := 1; i <= 4; i++ {
		secAppend(t, r, "INBOX", "", testMessage(i))
	}
	r.ok("CREATE Dest")
	u := r.ok("STATUS Dest (UIDVALIDITY UIDNEXT MESSAGES)")
	var vd string
	for _, l := range u {
		if m := regexp.MustCompile(`UIDVALIDITY (\d+)`).FindStringSubmatch(l); m != nil {
			vd = m[1]
		}
	}
	if vd == "" {
		t.Fatalf("STATUS: %q", u)
	}
	r.ok("SELECT INBOX")

	// UID COPY of 2 and 3 (4 is not asked for): new UIDs 1 and 2 in Dest.
	u, tagged := r.cmd("UID COPY 2:3 Dest")
	if want := "OK [COPYUID " + vd + " 2:3 1:2] "; !strings.Contains(tagged, want) || len(u) != 0 {
		t.Fatalf("UID COPY: %q %q, want %q", u, tagged, want)
	}
	// UID MOVE of 4: COPYUID in an untagged OK before the EXPUNGE.
	u, tagged = r.cmd("UID MOVE 4 Dest")
	if !strings.Contains(tagged, " OK") || len(u) != 2 || !strings.HasPrefix(u[0], "* OK [COPYUID "+vd+" 4 3] ") || u[1] != "* 4 EXPUNGE" {
		t.Fatalf("UID MOVE: %q %q", u, tagged)
	}
	// A UID that is not there: nothing copied, OK without COPYUID.
	u, tagged = r.cmd("UID COPY 99 Dest")
	if !strings.Contains(tagged, " OK") || strings.Contains(tagged, "COPYUID") || len(u) != 0 {
		t.Fatalf("UID COPY of nothing: %q %q", u, tagged)
	}

	// UID EXPUNGE 3: of the \Deleted 2 and 3, only 3 goes.
	r.ok(`UID STORE 2:3 +FLAGS.SILENT (\Deleted)`)
	u = r.ok("UID EXPUNGE 3")
	if len(u) != 1 || u[0] != "* 3 EXPUNGE" {
		t.Fatalf("UID EXPUNGE 3: %q", u)
	}
	u = r.ok("UID SEARCH ALL")
	if len(u) != 1 || u[0] != "* SEARCH 1 2" {
		t.Fatalf("after UID EXPUNGE: %q", u)
	}
	u = r.ok("UID FETCH 2 (UID FLAGS)")
	if len(u) != 1 || u[0] != `* 2 FETCH (UID 2 FLAGS (\Deleted))` {
		t.Fatalf("UID 2 after UID EXPUNGE 3: %q", u)
	}

	// Dest holds copies of 2 and 3 and the moved 4, byte for byte.
	u = r.ok("STATUS Dest (MESSAGES UIDNEXT)")
	if len(u) != 1 || u[0] != `* STATUS Dest (MESSAGES 3 UIDNEXT 4)` {
		t.Fatalf("STATUS Dest: %q", u)
	}
	r.ok("SELECT Dest")
	for uid, i := range map[int]int{1: 2, 2: 3, 3: 4} {
		m := testMessage(i)
		got := secFetchOne(t, r, fmt.Sprintf("UID FETCH %d (BODY.PEEK[])", uid))
		if want := fmt.Sprintf("* %d FETCH (UID %d BODY[] {%d}%s)", uid, uid, len(m), m); got != want && got != fmt.Sprintf("* %d FETCH (BODY[] {%d}%s UID %d)", uid, len(m), m, uid) {
			t.Errorf("Dest UID %d:\n got %q\nwant %q", uid, got, want)
		}
	}
}

// TestIMAPSubscribeListsIt: SUBSCRIBE puts a mailbox in LSUB and in LIST
// (SUBSCRIBED) with \Subscribed; UNSUBSCRIBE takes it out of both.
func TestIMAPSubscribeListsIt(t *testing.T) {
	e := newEnv(t)
	r := e.rawLogin()
	r.ok("CREATE Lists")
	r.ok("UNSUBSCRIBE Lists") // CREATE may subscribe; start from not subscribed
	lsub := func() []string { return r.ok(`LSUB "" "Lists"`) }
	listSub := func() []string { return r.ok(`LIST (SUBSCRIBED) "" "Lists"`) }
	if u := lsub(); len(u) != 0 {
		t.Fatalf("LSUB before SUBSCRIBE: %q", u)
	}
	if u := listSub(); len(u) != 0 {
		t.Fatalf("LIST (SUBSCRIBED) before SUBSCRIBE: %q", u)
	}
	r.ok("SUBSCRIBE Lists")
	if u := lsub(); len(u) != 1 || u[0] != `* LSUB () "/" Lists` {
		t.Fatalf("LSUB after SUBSCRIBE: %q", u)
	}
	u := listSub()
	if len(u) != 1 || !strings.HasPrefix(u[0], "* LIST (") || !strings.HasSuffix(u[0], `) "/" Lists`) || !strings.Contains(u[0], `\Subscribed`) {
		t.Fatalf("LIST (SUBSCRIBED) after SUBSCRIBE: %q", u)
	}
	// Plain LIST has no \Subscribed unless asked for (RFC 5258 3.1).
	u = r.ok(`LIST "" "Lists" RETURN (SUBSCRIBED)`)
	if len(u) != 1 || !strings.Contains(u[0], `\Subscribed`) {
		t.Fatalf("LIST RETURN (SUBSCRIBED): %q", u)
	}
	// Another session sees the subscription too.
	if u := e.rawLogin().ok(`LSUB "" "*"`); !hasLine(u, `* LSUB () "/" Lists`) {
		t.Fatalf("LSUB in a new session: %q", u)
	}
	r.ok("UNSUBSCRIBE Lists")
	if u := lsub(); len(u) != 0 {
		t.Fatalf("LSUB after UNSUBSCRIBE: %q", u)
	}
	if u := listSub(); len(u) != 0 {
		t.Fatalf("LIST (SUBSCRIBED) after UNSUBSCRIBE: %q", u)
	}
}

// TestIMAPSearchFlagKeysAndBcc: ANSWERED, DRAFT, UNSEEN, UNFLAGGED,
// UNANSWERED and BCC against messages whose flags and Bcc are known.
func TestIMAPSearchFlagKeysAndBcc(t *testing.T) {
	e := newEnv(t)
	r := e.rawLogin()
	r.ok("CREATE Keys")
	msgs := []struct{ flags, extra string }{
		{`\Answered \Seen`, "Bcc: Secret Person <secret@example.org>\r\n"},
		{`\Draft`, ""},
		{`\Flagged \Seen`, "Bcc: other@example.net\r\n"},
		{``, ""},
	}
	for i, m := range msgs {
		body := m.extra + testMessage(i+1)
		if tagged := secAppend(t, r, "Keys", m.flags, body); !strings.Contains(tagged, " OK") {
			t.Fatalf("APPEND %d: %q", i+1, tagged)
		}
	}
	r.ok("SELECT Keys")
	for _, c := range []struct{ q, want string }{
		{"ANSWERED", "1"},
		{"DRAFT", "2"},
		{"UNDRAFT", "1 3 4"},
		{"UNSEEN", "2 4"},
		{"SEEN", "1 3"},
		{"UNFLAGGED", "1 2 4"},
		{"FLAGGED", "3"},
		{"UNANSWERED", "2 3 4"},
		{"BCC secret@example.org", "1"},
		{`BCC "Secret Person"`, "1"},
		{"BCC example", "1 3"},
		{"BCC nobody", ""},
		{"UNSEEN UNFLAGGED", "2 4"},
		{"OR ANSWERED DRAFT", "1 2"},
	} {
		u := r.ok("SEARCH " + c.q)
		want := "* SEARCH"
		if c.want != "" {
			want += " " + c.want
		}
		if len(u) != 1 || u[0] != want {
			t.Errorf("SEARCH %s: %q, want %q", c.q, u, want)
		}
	}
	// UID SEARCH answers in UIDs: the same here, as nothing was expunged.
	if u := r.ok("UID SEARCH UNANSWERED UNSEEN"); len(u) != 1 || u[0] != "* SEARCH 2 4" {
		t.Errorf("UID SEARCH UNANSWERED UNSEEN: %q", u)
	}
}

// TestIMAPAuthenticateSCRAMWithGoIMAP: go-imap's client answers SCRAM's
// server-final message with "=" (an empty response written as SASL-IR
// writes one); the exchange completes and the server's signature verifies.
// A raw "=" after a challenge is an empty response, not bad base64.
func TestIMAPAuthenticateSCRAMWithGoIMAP(t *testing.T) {
	e := newEnv(t)
	c, err := imapclient.DialInsecure(e.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := &auth.ScramClient{User: "alice@example.org", Password: testPassword}
	if err := c.Authenticate(sc); err != nil {
		t.Fatalf("AUTHENTICATE SCRAM-SHA-256: %v", err)
	}
	if !sc.Verified() {
		t.Fatal("the server's SCRAM signature did not verify")
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	// PLAIN with an empty response: a malformed PLAIN message, not bad
	// base64.
	r := e.raw()
	r.send("A1 AUTHENTICATE PLAIN\r\n")
	if l := r.line(); l != "+ " && l != "+" {
		t.Fatalf("AUTHENTICATE PLAIN: %q", l)
	}
	r.send("=\r\n")
	if _, tagged := r.until("A1"); strings.Contains(tagged, "not base64") || !strings.HasPrefix(tagged, "A1 NO") && !strings.HasPrefix(tagged, "A1 BAD") {
		t.Fatalf("empty PLAIN response: %q", tagged)
	}
}
