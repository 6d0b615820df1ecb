package smtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
)

// pipeListener hands out the server ends of net.Pipe connections.
type pipeListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 25} }

// loopbackPipe looks like a loopback TCP connection, so that AUTH is
// offered and fuzzed too.
type loopbackPipe struct{ net.Conn }

func (loopbackPipe) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)

// FuzzSession feeds arbitrary client bytes to a real session (MX and
// submission) over a pipe: no input may panic the server, hang it past its
// timeouts, or produce anything but well-formed replies without internal
// error text.
func FuzzSession(f *testing.F) {
	for _, seed := range []string{
		"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<a@remote.test> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<team@example.org> NOTIFY=SUCCESS ORCPT=rfc822;x@y\r\nBDAT 5\r\nabcdeBDAT 2 LAST\r\n\r\n",
		"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nx\n.\nMAIL FROM:<e@v>\r\n.\r\n",
		"EHLO x\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\nx\r.\rRCPT TO:<bob@example.org>\r\n\r\n.\r\n",
		"EHLO x\r\nAUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAGNvcnJlY3QgaG9yc2U=\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<far@remote.test>\r\nDATA\r\n\r\n.\r\n",
		"EHLO x\r\nAUTH SCRAM-SHA-256 biwsbj11c2VyLHI9ZnlrbytkMmxiYkZnT05Sdjl0cWt4ZFJYNA==\r\n*\r\nAUTH LOGIN\r\nYQ==\r\nYg==\r\n",
		"EHLO x\r\nAUTH CRAM-MD5\r\nZm9vIGJhcg==\r\n",
		"HELO\r\nEHLO\r\nMAIL\r\nRCPT TO:<>\r\nDATA\r\nBDAT x\r\nBDAT 1 LAST\r\n\x00\xff\r\nVRFY a\r\nRSET\r\nNOOP\r\n",
		"EHLO x\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello",
		"EHLO x\r\nMAIL FROM:<\xc3\xa9@x.test> SMTPUTF8\r\nRCPT TO:<\xc3\xa9@example.org>\r\n",
		"EHLO " + strings.Repeat("a", 3000) + "\r\n",
	} {
		f.Add(false, []byte(seed))
		f.Add(true, []byte(seed))
	}
	node := clustertest.New(f)
	seed(f, node)
	var logs logBuffer
	srv, err := New(Config{Backend: node, Hostname: "mx.test", Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		AllowCRAMMD5: true, AuthParams: auth.TestParams(), MaxMessageBytes: 4096, ReadTimeout: time.Second,
		WriteTimeout: time.Second, MaxSessionTime: 5 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	lns := map[Kind]*pipeListener{}
	for _, k := range []Kind{MX, Submission} {
		ln := &pipeListener{ch: make(chan net.Conn), closed: make(chan struct{})}
		lns[k] = ln
		go func() { _ = srv.Serve(ln, k) }()
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	clustertest.Propose(f, node, relaySetting(relay.Listed, "127.0.0.1"))

	f.Fuzz(func(t *testing.T, submission bool, input []byte) {
		if len(input) > 64<<10 {
			return
		}
		kind := MX
		if submission {
			kind = Submission
		}
		client, server := net.Pipe()
		lns[kind].ch <- loopbackPipe{server}
		_ = client.SetDeadline(time.Now().Add(10 * time.Second))
		var out bytes.Buffer
		done := make(chan struct{})
		go func() {
			_, _ = io.Copy(&out, client)
			close(done)
		}()
		_, _ = client.Write(input)
		// Let the server answer what it read, then hang up.
		time.Sleep(5 * time.Millisecond) // not synchronisation: just more of the session exercised
		client.Close()
		<-done
		sc := bufio.NewScanner(&out)
		for sc.Scan() {
			line := sc.Text()
			if !replyLine.MatchString(line) {
				t.Fatalf("malformed reply line %q", line)
			}
			if strings.Contains(line, "127.0.0.1") || strings.Contains(line, "cluster") || strings.Contains(line, "bolt") {
				t.Fatalf("internal detail in reply %q", line)
			}
		}
		if l := logs.String(); strings.Contains(l, "panic") {
			t.Fatalf("panic:\n%s", l)
		}
	})
}

// FuzzLineScanner compares the streaming check of line endings and lengths
// with a plain one, over arbitrary chunkings.
func FuzzLineScanner(f *testing.F) {
	for _, s := range []string{"a\r\nb\r\n", "a\nb", "a\rb", "\r", "\n", "\r\r\n", strings.Repeat("x", 40) + "\r\n", "ab\r", ""} {
		f.Add([]byte(s), uint8(1), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, cut1, cut2 uint8) {
		const maxLine = 32
		want := referenceCheck(data, maxLine)
		sc := lineScanner{maxLine: maxLine}
		a := min(int(cut1), len(data))
		b := min(a+int(cut2), len(data))
		var err error
		for _, chunk := range [][]byte{data[:a], data[a:b], data[b:]} {
			if err = sc.scan(chunk); err != nil {
				break
			}
		}
		if err == nil && sc.cr {
			err = errBareNewline
		}
		got := ""
		var r *Reply
		if errors.As(err, &r) {
			got = r.Text
		} else if err != nil {
			got = replyBareNewline.Text
		}
		if got != want {
			t.Fatalf("%q cut %d/%d: got %q, want %q", data, a, b, got, want)
		}
	})
}

// referenceCheck: the first problem of data, found line by line.
func referenceCheck(data []byte, maxLine int) string {
	for len(data) > 0 {
		i := bytes.IndexAny(data, "\r\n")
		var line []byte
		if i < 0 {
			line, data = data, nil
		} else {
			line = data[:i]
		}
		if len(line)+2 > maxLine {
			return replyLineTooLong.Text
		}
		if i < 0 {
			return ""
		}
		if data[i] == '\n' || i+1 >= len(data) || data[i+1] != '\n' {
			return replyBareNewline.Text
		}
		data = data[i+2:]
	}
	return ""
}

// FuzzHeaders: header scanning never panics, and completing a submitted
// message always leaves it with exactly one Date and one Message-ID when it
// had at most one.
func FuzzHeaders(f *testing.F) {
	for _, s := range []string{"Subject: x\r\n\r\nbody\r\n", "Date: x\r\nMessage-ID: <a@b>\r\n\r\n", "\r\nbody", "no header\r\n", "Received: a\r\n b\r\nreceived: c\r\n\r\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		n := countHeader(msg, "received")
		out := completeHeaders(msg, "mx.test", time.Unix(0, 0))
		if !bytes.HasSuffix(out, msg) {
			t.Fatal("message changed, not just prefixed")
		}
		if countHeader(out, "received") != n && len(out) == len(msg) {
			t.Fatal("received count changed")
		}
		for _, h := range []string{"date", "message-id"} {
			if c := countHeader(msg, h); c <= 1 && countHeader(out, h) < 1 {
				// a header section cut short by a line without a colon
				// stops the scan; completing adds at the top, so it counts.
				t.Fatalf("%s missing after completion:\n%q", h, out)
			}
		}
	})
}

// FuzzAddress: what checkAddress accepts formats to something without line
// breaks or unbalanced brackets, for trace headers.
func FuzzAddress(f *testing.F) {
	for _, s := range []string{"a@b.test", "a b@c.test", `a"b@c.test`, "@x", "a@[127.0.0.1]", "a@[IPv6:::1]", "\xc3\xa9@x.test", "a@b@c.test"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, a string) {
		if !checkAddress(a) {
			return
		}
		out := formatAddress(a)
		if strings.ContainsAny(out, "\r\n\x00<>") && !strings.HasPrefix(out, `"`) {
			t.Fatalf("%q formats to %q", a, out)
		}
		if strings.ContainsAny(out, "\r\n") {
			t.Fatalf("%q formats to %q", a, out)
		}
	})
}

// FuzzRelaySettings: stored settings parse to something valid, and
// normalising is idempotent.
func FuzzRelaySettings(f *testing.F) {
	for _, s := range []string{`{"mode":"listed","trusted":["10.0.0.0/8","Mx.Example.","::ffff:1.2.3.4"]}`, `{}`, `{"mode":"open"}`, `[`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := relay.Parse(b)
		if err != nil {
			if s.Mode != relay.LocalUsers {
				t.Fatalf("unreadable settings give %q", s.Mode)
			}
			return
		}
		again, err := relay.Parse(s.Marshal())
		if err != nil || again.Mode != s.Mode || strings.Join(again.Trusted, ",") != strings.Join(s.Trusted, ",") {
			t.Fatalf("not idempotent: %+v -> %+v (%v)", s, again, err)
		}
	})
}
