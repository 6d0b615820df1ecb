package pop3

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// eofConn is the server end of a net.Pipe that reports io.EOF once the
// whole input has been read, as a client that half-closes would: the
// session then runs every buffered command and can still write replies.
type eofConn struct {
	net.Conn
	left int
}

func (c *eofConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		return 0, io.EOF
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.Conn.Read(p)
	c.left -= n
	return n, err
}

var fuzzSeeds = []string{
	"",
	"CAPA\r\nQUIT\r\n",
	"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nRETR 2\r\nTOP 2 1\r\nDELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n",
	"USER alice\r\nPASS secret\r\nLIST 0\r\nLIST 3\r\nLIST -1\r\nDELE 1\r\nDELE 1\r\nRETR 1\r\nTOP 1 x\r\nNOOP\r\n",
	"user alice\npass secret\nstat\nlist 1\nuidl 2\ntop 1 0\nquit\n",
	"USER alice\r\nPASS wrong\r\nUSER bob\r\nPASS hunter2\r\nSTAT\r\nQUIT\r\n",
	"AUTH\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00alice\x00secret")) + "\r\nLIST\r\nQUIT\r\n",
	"AUTH PLAIN\r\n" + base64.StdEncoding.EncodeToString([]byte("\x00bob\x00hunter2")) + "\r\nSTAT\r\n",
	"AUTH PLAIN\r\n*\r\nAUTH PLAIN =\r\nAUTH X-FINAL\r\nYWxpY2U=\r\n\r\nUIDL\r\nQUIT\r\n",
	"AUTH X-FINAL\r\nYWxpY2U=\r\nxx\r\nAUTH NOPE\r\nAUTH PLAIN !!\r\n",
	"APOP alice 0123456789abcdef0123456789abcdef\r\nAPOP alice x\r\n",
	"STLS\r\n",
	"STLS\r\nUSER alice\r\n",
	"STLS\r\n\x16\x03\x01\x00\x05hello",
	"USER " + strings.Repeat("a", 300) + "\r\nNOOP\r\n",
	"AUTH PLAIN " + strings.Repeat("A", 2000) + "\r\n",
	"\x00\x01\xff\r\n\r\n \r\nST@T\r\n",
	strings.Repeat("BAD\r\n", 20),
}

func FuzzSession(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	tlsConfig := testTLSConfig()
	f.Fuzz(func(t *testing.T, input []byte) {
		if len(input) > 16<<10 {
			// Longer inputs add nothing (TestLineTooLong covers the
			// endless line) and make minimizing slow.
			t.Skip()
		}
		b := newMemBackend()
		b.add("alice", "secret", msgHello, msgDots)
		b.add("bob", "hunter2")
		logs := &lockedBuffer{}
		srv := &Server{
			Backend:           apopBackend{b},
			TLSConfig:         tlsConfig,
			Hostname:          "fuzz.test",
			Logger:            slog.New(slog.NewTextHandler(logs, nil)),
			SASL:              testSASL(b),
			AllowInsecureAuth: true,
			MaxSASLLineLength: 1024,
			MaxErrors:         20,
			MaxAuthFailures:   5,
		}

		client, server := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveConn(context.Background(), &eofConn{Conn: server, left: len(input)})
		}()
		go client.Write(input) // fails once the session closes early
		var out bytes.Buffer
		copied := make(chan struct{})
		go func() {
			io.Copy(&out, client)
			close(copied)
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("session hangs on %q\n%s", input, buf[:runtime.Stack(buf, true)])
		}
		client.Close()
		<-copied

		b.check(t)
		if strings.Contains(logs.String(), "panicked") {
			t.Fatalf("session panicked on %q:\n%s", input, logs.String())
		}
		if !bytes.Contains(bytes.ToLower(input), []byte("quit")) {
			if n := len(b.messages("alice")); n != 2 {
				t.Fatalf("messages deleted without QUIT: %d left", n)
			}
		}
		// Until TLS starts, the output is CRLF-terminated lines.
		o := out.Bytes()
		if i := bytes.Index(o, []byte("+OK begin TLS negotiation\r\n")); i >= 0 {
			o = o[:i]
		}
		for i, c := range o {
			if c == '\n' && (i == 0 || o[i-1] != '\r') || c == '\r' && (i+1 == len(o) || o[i+1] != '\n') {
				t.Fatalf("bare CR or LF at %d of output %q", i, o)
			}
		}
	})
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"", "STAT", "list 1", "TOP 1 10", "PASS  a b ", "USER\x00", "RETR -1", "X\xff", "top 01 99999999999999999999"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		cmd, err := parseCommand(line)
		if err != nil {
			if cmd != (command{}) {
				t.Fatalf("error %v with command %+v", err, cmd)
			}
			return
		}
		if cmd.name == "" || len(cmd.name) > maxKeyword || strings.ToUpper(cmd.name) != cmd.name {
			t.Fatalf("bad keyword %q", cmd.name)
		}
		rebuilt := cmd.name
		if len(line) > len(cmd.name) {
			rebuilt += " " + cmd.arg
		}
		if !strings.EqualFold(rebuilt, string(line)) {
			t.Fatalf("%q parsed as %+v", line, cmd)
		}
		for _, f := range fields(cmd.arg) {
			if f == "" || strings.Contains(f, " ") {
				t.Fatalf("field %q of %q", f, cmd.arg)
			}
			n, ok := parseNumber(f)
			if !ok {
				continue
			}
			if len(strings.TrimLeft(f, "0")) <= 18 {
				if want, err := strconv.Atoi(f); err != nil || n != want {
					t.Fatalf("parseNumber(%q) = %d, Atoi: %d, %v", f, n, want, err)
				}
			} else if n < 1e17 {
				t.Fatalf("parseNumber(%q) = %d", f, n)
			}
		}
	})
}

// expectedMessage is the reference for writeMessage: the message split
// into lines at LF, one CR dropped before each LF and at the end, TOP's
// selection applied, dots stuffed, CRLF after each line, then ".".
func expectedMessage(msg []byte, bodyLines int) []byte {
	var out bytes.Buffer
	inBody, count := false, 0
	for len(msg) > 0 {
		line := msg
		if i := bytes.IndexByte(msg, '\n'); i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			msg = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if inBody && bodyLines >= 0 {
			if count >= bodyLines {
				break
			}
			count++
		}
		if !inBody && len(line) == 0 {
			inBody = true
		}
		if bytes.HasPrefix(line, []byte(".")) {
			out.WriteByte('.')
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	out.WriteString(".\r\n")
	return out.Bytes()
}

func FuzzWriteMessage(f *testing.F) {
	f.Add([]byte(msgHello), -1, uint8(0))
	f.Add([]byte(msgDots), -1, uint8(0))
	f.Add([]byte(msgDots), 2, uint8(3))
	f.Add([]byte("a\r"), 0, uint8(0))
	f.Add([]byte(".\r\n..\n.\r\r\n"), 1, uint8(1))
	f.Add([]byte(strings.Repeat("x", 100)+"\r\n."), -1, uint8(0))
	f.Fuzz(func(t *testing.T, msg []byte, bodyLines int, extra uint8) {
		if bodyLines < -1 {
			bodyLines = -1
		}
		var out bytes.Buffer
		w := bufio.NewWriterSize(&out, 16)
		n, err := writeMessage(w, bytes.NewReader(msg), 16+int(extra), bodyLines)
		if err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if bodyLines < 0 && n != int64(len(msg)) {
			t.Fatalf("read %d of %d octets", n, len(msg))
		}
		if want := expectedMessage(msg, bodyLines); !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("writeMessage(%q, %d):\n got %q\nwant %q", msg, bodyLines, out.Bytes(), want)
		}
	})
}

func TestWriteMessage(t *testing.T) {
	for _, tc := range []struct {
		in        string
		bodyLines int
		want      string
	}{
		{"", -1, ".\r\n"},
		{"a", -1, "a\r\n.\r\n"},
		{".", -1, "..\r\n.\r\n"},
		{"a\nb\n", -1, "a\r\nb\r\n.\r\n"},
		{"a\r\n.\r\n", -1, "a\r\n..\r\n.\r\n"},
		{"a\r", -1, "a\r\n.\r\n"},
		{"h: 1\r\n\r\nb1\r\nb2\r\n", 0, "h: 1\r\n\r\n.\r\n"},
		{"h: 1\r\n\r\nb1\r\nb2\r\n", 1, "h: 1\r\n\r\nb1\r\n.\r\n"},
		{"h: 1\r\nh: 2\r\n", 0, "h: 1\r\nh: 2\r\n.\r\n"},
		{"h: 1\n\n.b1\n", 5, "h: 1\r\n\r\n..b1\r\n.\r\n"},
	} {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		if _, err := writeMessage(w, strings.NewReader(tc.in), 16, tc.bodyLines); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if out.String() != tc.want {
			t.Errorf("writeMessage(%q, %d) = %q, want %q", tc.in, tc.bodyLines, out.String(), tc.want)
		}
		if want := string(expectedMessage([]byte(tc.in), tc.bodyLines)); want != tc.want {
			t.Errorf("reference for %q, %d = %q, want %q", tc.in, tc.bodyLines, want, tc.want)
		}
	}
}
