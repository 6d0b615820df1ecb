package imap

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/certs"
	"github.com/flotilla-mail/flotilla/storage"
)

const testPassword = "correct horse battery"

// testEnv is a one-node cluster with an IMAP server on 127.0.0.1.
type testEnv struct {
	t    testing.TB
	node *cluster.Node
	srv  *Server
	addr string
	user storage.User
	tls  *tls.Config
}

var (
	secretsOnce sync.Once
	secrets     storage.Secrets
)

func testSecrets(t testing.TB) storage.Secrets {
	secretsOnce.Do(func() {
		s, err := auth.Derive(testPassword, auth.TestParams())
		if err != nil {
			t.Fatal(err)
		}
		secrets = storage.Secrets(s)
	})
	return secrets
}

func newEnv(t testing.TB, tweak ...func(*Server)) *testEnv {
	t.Helper()
	return newEnvOn(t, clustertest.New(t), tweak...)
}

// newEnvOn is newEnv on a node the test started.
func newEnvOn(t testing.TB, node *cluster.Node, tweak ...func(*Server)) *testEnv {
	t.Helper()
	u := clustertest.AddUser(t, node, "alice@example.org", testSecrets(t))
	loader, err := certs.SelfSigned(t.TempDir(), []string{"localhost", "127.0.0.1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{
		Cluster:    node,
		Mechanisms: &auth.Mechanisms{Lookup: Lookup(node.Store()), DecoyParams: auth.TestParams()},
		TLSConfig:  loader.Config(),
		Version:    "test",
	}
	if os.Getenv("FLOTILLA_TEST_DEBUG") != "" {
		srv.Logger = testLogger(t)
	}
	for _, f := range tweak {
		f(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
		cancel()
		<-done
	})
	return &testEnv{t: t, node: node, srv: srv, addr: ln.Addr().String(), user: u, tls: &tls.Config{InsecureSkipVerify: true}}
}

// client dials and logs in with the go-imap v2 client.
func (e *testEnv) client(opts ...*imapclient.Options) *imapclient.Client {
	e.t.Helper()
	var o *imapclient.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	c, err := imapclient.DialInsecure(e.addr, o)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	if err := c.Login("alice@example.org", testPassword).Wait(); err != nil {
		e.t.Fatalf("login: %v", err)
	}
	return c
}

// deliver puts a message into a mailbox of the user through the cluster.
func (e *testEnv) deliver(mailbox, msg string, flags ...string) uint32 {
	e.t.Helper()
	h, c := e.node.Store().Compress([]byte(msg))
	resp := clustertest.Propose(e.t, e.node, &command.Deliver{Blob: h, Body: c, BodySize: int64(len(msg)),
		InternalDate: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano(),
		Targets:      []command.Target{{UserID: e.user.ID, Mailbox: mailbox, Flags: flags, Exact: true}}})
	if resp.IDs[0] == 0 {
		e.t.Fatalf("deliver to %s refused", mailbox)
	}
	return uint32(resp.IDs[0])
}

func testMessage(i int) string {
	return fmt.Sprintf("From: Sender %d <sender%d@example.net>\r\nTo: alice@example.org\r\nSubject: message %d\r\nDate: Wed, 1 May 2024 12:00:%02d +0000\r\nMessage-Id: <m%d@example.net>\r\n\r\nBody of message %d.\r\n", i, i, i, i%60, i, i)
}

// raw is a line-level client for protocol tests.
type raw struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
	n int
}

func (e *testEnv) raw() *raw {
	e.t.Helper()
	c, err := net.Dial("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	r := &raw{t: e.t, c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if l := r.line(); !strings.HasPrefix(l, "* OK") {
		e.t.Fatalf("greeting %q", l)
	}
	return r
}

func (e *testEnv) rawLogin() *raw {
	r := e.raw()
	r.ok("LOGIN alice@example.org \"" + testPassword + "\"")
	return r
}

func (r *raw) line() string {
	r.t.Helper()
	l, err := r.r.ReadString('\n')
	if err != nil {
		r.t.Fatalf("read: %v (got %q)", err, l)
	}
	return strings.TrimRight(l, "\r\n")
}

func (r *raw) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// cmd sends a tagged command and returns the untagged lines (with any
// literal contents inline) and the tagged line.
func (r *raw) cmd(s string) (untagged []string, tagged string) {
	r.t.Helper()
	r.n++
	tag := fmt.Sprintf("T%d", r.n)
	r.send(tag + " " + s + "\r\n")
	return r.until(tag)
}

func (r *raw) until(tag string) (untagged []string, tagged string) {
	r.t.Helper()
	for {
		l := r.line()
		for strings.HasSuffix(l, "}") && strings.Contains(l, "{") {
			var n int
			if _, err := fmt.Sscanf(l[strings.LastIndexByte(l, '{'):], "{%d}", &n); err != nil {
				break
			}
			buf := make([]byte, n)
			if _, err := io.ReadFull(r.r, buf); err != nil {
				r.t.Fatal(err)
			}
			l += string(buf) + r.line()
		}
		if strings.HasPrefix(l, tag+" ") {
			return untagged, l
		}
		untagged = append(untagged, l)
	}
}

func (r *raw) ok(s string) []string {
	r.t.Helper()
	u, tagged := r.cmd(s)
	if !strings.Contains(tagged, " OK") {
		r.t.Fatalf("%s: %s (untagged %q)", s, tagged, u)
	}
	return u
}

// expect sends a command and checks the start of the tagged status after
// the tag, e.g. "NO [TRYCREATE]".
func (r *raw) expect(s, want string) []string {
	r.t.Helper()
	u, tagged := r.cmd(s)
	_, got, _ := strings.Cut(tagged, " ")
	if !strings.HasPrefix(got, want) {
		r.t.Fatalf("%s: got %q, want %q", s, tagged, want)
	}
	return u
}

func hasLine(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

var _ = goimap.CapIMAP4rev1

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

// fakeRemote is a connection that claims to come from another host.
type fakeRemote struct{ net.Conn }

func (fakeRemote) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 4242} }
