package pop3store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/certs"
	"github.com/flotilla-mail/flotilla/mail/pop3"
	"github.com/flotilla-mail/flotilla/storage"
)

const (
	testUser     = "alice@example.org"
	testPassword = "correct horse battery staple"
	testTimeout  = 20 * time.Second
)

// Test messages: CRLF lines ending in CRLF, so that what a client receives
// is byte-identical to what was stored. msgDots needs byte-stuffing.
var testMessages = []string{
	"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: one\r\n\r\nHello Alice.\r\n",
	"Subject: dots\r\n\r\n.\r\n..\r\n.leading dot\r\nend\r\n",
	"Subject: three\r\n\r\n" + strings.Repeat("a longer body line of the third message\r\n", 500),
}

// lockedBuffer collects log output from many goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// faultNode is a cluster node seen under another name, whose writes and
// linearizable reads a test can make fail: a stand-in for one node of a
// larger cluster, cut off or dead.
type faultNode struct {
	*cluster.Node
	id string

	mu         sync.Mutex
	failWrite  func(command.Command) error // nil: pass through
	failRead   error
	lockWrites atomic.Int64 // PopLock commands committed through this node
}

func (f *faultNode) ID() string { return f.id }

func (f *faultNode) Propose(ctx context.Context, c command.Command) (command.Response, uint64, error) {
	f.mu.Lock()
	fail := f.failWrite
	f.mu.Unlock()
	if fail != nil {
		if err := fail(c); err != nil {
			return command.Response{}, 0, err
		}
	}
	resp, idx, err := f.Node.Propose(ctx, c)
	if _, ok := c.(*command.PopLock); ok && err == nil {
		f.lockWrites.Add(1)
	}
	return resp, idx, err
}

func (f *faultNode) ReadIndex(ctx context.Context) error {
	f.mu.Lock()
	err := f.failRead
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.Node.ReadIndex(ctx)
}

func (f *faultNode) setFailWrite(fn func(command.Command) error) {
	f.mu.Lock()
	f.failWrite = fn
	f.mu.Unlock()
}

func (f *faultNode) setFailRead(err error) {
	f.mu.Lock()
	f.failRead = err
	f.mu.Unlock()
}

// failLease fails the lease commands (PopLock, PopUnlock) with err and lets
// everything else through: the node can still expunge, so only the lease
// logic stands between a lost lease and a deletion.
func failLease(err error) func(command.Command) error {
	return func(c command.Command) error {
		switch c.(type) {
		case *command.PopLock, *command.PopUnlock:
			return err
		}
		return nil
	}
}

// testEnv is a one-node cluster holding alice with the test messages.
type testEnv struct {
	t    *testing.T
	node *cluster.Node
	user storage.User
	tls  *tls.Config
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	n := clustertest.New(t)
	secrets, err := auth.Derive(testPassword, auth.TestParams())
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, node: n, user: clustertest.AddUser(t, n, testUser, storage.Secrets(secrets))}
	for _, m := range testMessages {
		e.deliver(m)
	}
	loader, err := certs.SelfSigned(t.TempDir(), []string{"localhost", "127.0.0.1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e.tls = loader.Config()
	return e
}

// deliver puts a message into alice's INBOX and returns its UID.
func (e *testEnv) deliver(msg string) uint32 {
	e.t.Helper()
	h, z := e.node.Store().Compress([]byte(msg))
	resp := clustertest.Propose(e.t, e.node, &command.Deliver{Blob: h, Body: z, BodySize: int64(len(msg)),
		Targets: []command.Target{{UserID: e.user.ID}}})
	if len(resp.IDs) != 1 || resp.IDs[0] == 0 {
		e.t.Fatalf("deliver: %+v", resp)
	}
	return uint32(resp.IDs[0])
}

// inbox returns alice's INBOX and its messages' bytes by UID.
func (e *testEnv) inbox() (storage.Mailbox, map[uint32]string) {
	e.t.Helper()
	var mb storage.Mailbox
	msgs := map[uint32]string{}
	err := e.node.Store().View(func(tx *storage.Tx) error {
		var err error
		if mb, err = tx.Mailbox(e.user.ID, "INBOX"); err != nil {
			return err
		}
		var ferr error
		err = tx.Messages(mb.ID, 1, func(m storage.Message) bool {
			body, err := tx.Body(m.Blob)
			if err != nil {
				ferr = err
				return false
			}
			msgs[m.UID] = string(m.Prefix) + string(body)
			return true
		})
		if ferr != nil {
			return ferr
		}
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return mb, msgs
}

// uids returns the UIDs left in alice's INBOX, in order.
func (e *testEnv) uids() []uint32 {
	e.t.Helper()
	var out []uint32
	err := e.node.Store().View(func(tx *storage.Tx) error {
		mb, err := tx.Mailbox(e.user.ID, "INBOX")
		if err != nil {
			return err
		}
		out, err = tx.UIDs(mb.ID)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// server is a POP3 server on the test cluster, as one node would run it.
type server struct {
	node          *faultNode
	backend       *Backend
	addr, tlsAddr string // POP3 (with STLS) and POP3S
	logs          *lockedBuffer
}

// serve starts a POP3 server whose backend sees the cluster as node id.
// configure may change the backend's Config.
func (e *testEnv) serve(id string, configure func(*Config)) *server {
	t := e.t
	t.Helper()
	fn := &faultNode{Node: e.node, id: id}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := Config{Node: fn, Logger: log, AuthParams: auth.TestParams(), ProposeTimeout: 5 * time.Second}
	if configure != nil {
		configure(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := &pop3.Server{Backend: b, TLSConfig: e.tls, Hostname: id + ".test", Logger: log, SASL: b.SASL}
	s := &server{node: fn, backend: b, logs: logs}
	var served []chan error
	for _, implicit := range []bool{false, true} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if implicit {
			s.tlsAddr = l.Addr().String()
			l = tls.NewListener(l, e.tls)
		} else {
			s.addr = l.Addr().String()
		}
		ch := make(chan error, 1)
		served = append(served, ch)
		go func() { ch <- srv.Serve(context.Background(), l) }()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("%s: Shutdown: %v", id, err)
		}
		for _, ch := range served {
			if err := <-ch; !errors.Is(err, pop3.ErrServerClosed) {
				t.Errorf("%s: Serve returned %v", id, err)
			}
		}
		if strings.Contains(logs.String(), "panicked") {
			t.Errorf("%s: a session panicked", id)
		}
		if t.Failed() {
			t.Logf("log of server %s:\n%s", id, logs.String())
		}
	})
	return s
}

// client speaks raw POP3.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (s *server) dial(t *testing.T) *client {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, conn: conn, r: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { conn.Close() })
	if g := c.line(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func (c *client) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading reply: %v (got %q)", err, l)
	}
	if !strings.HasSuffix(l, "\r\n") {
		c.t.Fatalf("reply %q does not end in CRLF", l)
	}
	return strings.TrimSuffix(l, "\r\n")
}

func (c *client) cmd(line string) string {
	c.t.Helper()
	c.send(line)
	return c.line()
}

// expect sends a command and fails unless the reply starts with want.
func (c *client) expect(line, want string) string {
	c.t.Helper()
	r := c.cmd(line)
	if !strings.HasPrefix(r, want) {
		c.t.Fatalf("%q: got %q, want %q...", line, r, want)
	}
	return r
}

// multi reads the rest of a multi-line response, still byte-stuffed.
func (c *client) multi() []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.line()
		if l == "." {
			return lines
		}
		lines = append(lines, l)
	}
}

func (c *client) login() {
	c.t.Helper()
	c.expect("USER "+testUser, "+OK")
	c.expect("PASS "+testPassword, "+OK")
}

// tryLogin logs in and returns the reply to PASS, whatever it is.
func (c *client) tryLogin() string {
	c.t.Helper()
	c.expect("USER "+testUser, "+OK")
	return c.cmd("PASS " + testPassword)
}

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		<-tick.C
	}
}

// loginWorks returns nil if a fresh session on s logs in, and QUITs it.
func loginWorks(t *testing.T, s *server) error {
	c := s.dial(t)
	defer c.conn.Close()
	if r := c.tryLogin(); !strings.HasPrefix(r, "+OK") {
		c.cmd("QUIT")
		return fmt.Errorf("login: %q", r)
	}
	c.expect("QUIT", "+OK")
	return nil
}
