package smtp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// smuggled is what an attacker hides after a fake end of data: a second
// transaction to bob that no sender ever sent.
const smuggled = "MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"

// Every way to end DATA other than CRLF.CRLF, and every bare CR or LF, is
// refused: never an end of data, nothing stored, nothing of the smuggled
// transaction run, and the session goes on at the real end of data.
var smuggling = []struct{ name, body string }{
	{"bare LF", "line one\nline two\r\n"},
	{"bare CR", "line one\rline two\r\n"},
	{"LF.LF", "text\n.\n" + smuggled},
	{"CR.CR", "text\r.\r" + smuggled},
	{"CRLF.LF", "text\r\n.\n" + smuggled},
	{"LF.CRLF", "text\n.\r\n" + smuggled},
	{"CR.CRLF", "text\r.\r\n" + smuggled},
	{"LF at end", "text\n"},
	{"CR at end", "text\r"},
}

func TestSmugglingDATA(t *testing.T) {
	e := newEnv(t)
	before := e.blobs()
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	for _, tc := range smuggling {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			c.must("MAIL FROM:<s@remote.test>", 250)
			c.must("RCPT TO:<alice@example.org>", 250)
			c.must("DATA", 354)
			// The extra CRLF: go-smtp's DATA reader misses a CRLF right
			// after a bare CR, so "text<CR><CRLF>.<CRLF>" would not end
			// the transfer at all (which is no smuggling, but a stall).
			c.send("Subject: smuggling\r\n\r\n" + tc.body + "\r\n\r\n.\r\n")
			if text := c.expect(554); !strings.Contains(text, "5.6.0") {
				t.Errorf("reply %q", text)
			}
			c.must("NOOP", 250)
		})
	}
	c.t = t
	if len(e.inbox("alice@example.org")) != 0 || len(e.inbox("bob@example.org")) != 0 || e.blobs() != before {
		t.Fatal("a smuggling attempt stored something")
	}
	if strings.Contains(e.logs.String(), "evil@remote.test") {
		t.Fatal("the smuggled transaction ran")
	}
}

func TestSmugglingBDAT(t *testing.T) {
	e := newEnv(t)
	before := e.blobs()
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	for _, tc := range smuggling {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			body := "Subject: smuggling\r\n\r\n" + tc.body
			c.must("MAIL FROM:<s@remote.test>", 250)
			c.must("RCPT TO:<alice@example.org>", 250)
			c.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
			if text := c.expect(554); !strings.Contains(text, "5.6.0") {
				t.Errorf("reply %q", text)
			}
			c.must("NOOP", 250)
		})
	}
	c.t = t
	// A CR at the end of one chunk and its LF at the start of the next is
	// a line ending like any other; a CR followed by anything else is not.
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.send("BDAT 8\r\nSubject:")
	c.expect(250)
	c.send("BDAT 3\r\n x\r")
	c.expect(250)
	c.send("BDAT 7 LAST\r\n\n\r\nok\r\n")
	c.expect(250)
	c.must("MAIL FROM:<s@remote.test>", 250)
	c.must("RCPT TO:<alice@example.org>", 250)
	c.send("BDAT 4\r\nab\r\r")
	c.expect(250)
	c.send("BDAT 3 LAST\r\nx\r\n")
	c.expect(554)
	if got := e.inbox("alice@example.org"); len(got) != 1 || !bytes.HasSuffix(got[0], []byte("\r\nSubject: x\r\n\r\nok\r\n")) {
		t.Fatalf("alice: %q", got)
	}
	if len(e.inbox("bob@example.org")) != 0 || e.blobs() != before+1 {
		t.Fatal("a smuggling attempt stored something")
	}
}

// go-smtp drops ".<CR>" after CRLF when what follows is not LF (its dot
// unstuffing): "<CRLF>.<CR>X" reaches us as "<CRLF>X", and so
// "<CRLF>.<CR><CR><LF>" as a blank line. That is no end of data either: the
// smuggled commands stay text inside the one message.
func TestSmugglingDotCRNeutralised(t *testing.T) {
	e := newEnv(t)
	c := e.dial(MX)
	c.must("EHLO client.test", 250)
	for i, body := range []string{"text\r\n.\r" + smuggled, "text\r\n.\r\r\n" + smuggled} {
		c.must("MAIL FROM:<s@remote.test>", 250)
		c.must("RCPT TO:<alice@example.org>", 250)
		c.must("DATA", 354)
		c.send("Subject: dot-cr\r\n\r\n" + body + ".\r\n")
		c.expect(250)
		got := e.inbox("alice@example.org")
		if len(got) != i+1 || !bytes.Contains(got[i], []byte("\r\nMAIL FROM:<evil@remote.test>\r\n")) {
			t.Fatalf("alice: %q", got)
		}
	}
	if len(e.inbox("bob@example.org")) != 0 {
		t.Fatal("the smuggled transaction ran")
	}
}
