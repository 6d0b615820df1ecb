package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/xdg-go/scram"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/certs"
	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
	"github.com/flotilla-mail/flotilla/storage"
)

// env is a real SMTP server on the three kinds of listener, over a real
// one-node cluster, with a directory to deliver to:
//
//	example.org: alice, bob, carol (quota 2000 octets, half used); only
//	  alice's secrets include CRAM-MD5
//	  team@     -> alice, bob
//	  fwd@      -> alice, far@remote.test
//	  @other.test catch-all -> bob (domain other.test)
type env struct {
	t       *testing.T
	node    *cluster.Node
	srv     *Server
	backend Backend
	addr    map[Kind]string
	tls     *tls.Config // for clients: trusts the server's certificate
	pem     []byte      // the server's certificate
	logs    *logBuffer
	done    chan struct{}
}

const password = "correct horse"

type envOption func(*Config, *env)

func withConfig(f func(*Config)) envOption { return func(c *Config, _ *env) { f(c) } }

// withBackend wraps the node, e.g. to make Propose fail.
func withBackend(f func(Backend) Backend) envOption {
	return func(c *Config, e *env) { c.Backend = f(c.Backend) }
}

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	node := clustertest.New(t)
	e := &env{t: t, node: node, addr: map[Kind]string{}, logs: &logBuffer{}, done: make(chan struct{})}
	seed(t, node)

	dir := t.TempDir()
	loader, err := certs.SelfSigned(filepath.Join(dir, "tls"), []string{"localhost", "127.0.0.1"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "tls", "server.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	e.tls = &tls.Config{RootCAs: pool, ServerName: "localhost"}
	e.pem = pem

	level := slog.LevelInfo
	if os.Getenv("FLOTILLA_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	cfg := Config{
		Backend: node, Hostname: "mx.test", TLSConfig: loader.Config(),
		Logger:       slog.New(slog.NewTextHandler(io.MultiWriter(e.logs, testWriter{t}), &slog.HandlerOptions{Level: level})),
		AllowCRAMMD5: true, AuthParams: auth.TestParams(),
		MaxMessageBytes: 64 << 10, MaxRecipients: 10, ReadTimeout: 20 * time.Second,
	}
	for _, o := range opts {
		o(&cfg, e)
	}
	e.backend = cfg.Backend
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	var wg sync.WaitGroup
	for _, k := range []Kind{MX, Submission, SubmissionTLS} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		e.addr[k] = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln, k); !errors.Is(err, ErrServerClosed) {
				t.Errorf("serve %s: %v", k, err)
			}
		}()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		wg.Wait()
		e.checkConsistency()
		if strings.Contains(e.logs.String(), "panic") {
			t.Errorf("a panic was logged:\n%s", e.logs.String())
		}
	})
	return e
}

func seed(t testing.TB, node *cluster.Node) {
	t.Helper()
	secrets := func(cram bool) storage.Secrets {
		p := auth.TestParams()
		p.CRAMMD5 = cram
		s, err := auth.Derive(password, p)
		if err != nil {
			t.Fatal(err)
		}
		return storage.Secrets(s)
	}
	clustertest.AddUser(t, node, "alice@example.org", secrets(true))
	clustertest.AddUser(t, node, "bob@example.org", secrets(false))
	clustertest.Propose(t, node, &command.AddDomain{Name: "other.test"})
	clustertest.Propose(t, node, &command.AddUser{Address: "carol@example.org", Secrets: secrets(false), QuotaBytes: 2000})
	clustertest.Propose(t, node, &command.AddAlias{Address: "team@example.org", Targets: []string{"alice@example.org", "bob@example.org"}})
	clustertest.Propose(t, node, &command.AddAlias{Address: "fwd@example.org", Targets: []string{"alice@example.org", "far@remote.test"}})
	clustertest.Propose(t, node, &command.AddAlias{Address: "@other.test", Targets: []string{"bob@example.org"}})
	// carol has 1000 of her 2000 octets used.
	var carol storage.User
	_ = node.Store().View(func(tx *storage.Tx) error { carol, _ = tx.User("carol@example.org"); return nil })
	body := []byte(strings.Repeat("x", 998) + "\r\n")
	h, z := node.Store().Compress(body)
	clustertest.Propose(t, node, &command.Deliver{Blob: h, Body: z, BodySize: int64(len(body)), Targets: []command.Target{{UserID: carol.ID}}})
}

func (e *env) certPEM() []byte { return e.pem }

// setRelay sets the cluster's relay policy.
func (e *env) setRelay(mode relay.Mode, trusted ...string) {
	e.t.Helper()
	s, err := relay.Settings{Mode: mode, Trusted: trusted}.Normalize()
	if err != nil {
		e.t.Fatal(err)
	}
	clustertest.Propose(e.t, e.node, &command.SetSetting{Key: relay.SettingKey, Value: s.Marshal()})
}

// caughtUp makes the next local read include every committed write: a 250
// means committed, and the node applies it a moment later.
func (e *env) caughtUp() {
	e.t.Helper()
	if err := e.node.ReadIndex(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// inbox returns the full bytes of every message in a user's INBOX.
func (e *env) inbox(user string) [][]byte {
	e.t.Helper()
	e.caughtUp()
	var out [][]byte
	err := e.node.Store().View(func(tx *storage.Tx) error {
		u, err := tx.User(user)
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		if err != nil {
			return err
		}
		var ferr error
		err = tx.Messages(mb.ID, 1, func(m storage.Message) bool {
			body, err := tx.Body(m.Blob)
			if err != nil {
				ferr = err
				return false
			}
			if int64(len(m.Prefix)+len(body)) != m.Size {
				ferr = fmt.Errorf("message %d: size %d, bytes %d", m.UID, m.Size, len(m.Prefix)+len(body))
			}
			out = append(out, append(append([]byte(nil), m.Prefix...), body...))
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
	return out
}

func (e *env) queue() []storage.QueueEntry {
	e.t.Helper()
	e.caughtUp()
	var out []storage.QueueEntry
	_ = e.node.Store().View(func(tx *storage.Tx) error {
		return tx.QueueEntries(func(q storage.QueueEntry) bool { out = append(out, q); return true })
	})
	return out
}

func (e *env) blobs() int64 {
	e.caughtUp()
	var n int64
	_ = e.node.Store().View(func(tx *storage.Tx) error { n, _ = tx.BlobStats(); return nil })
	return n
}

// checkConsistency: every stored body is referenced by a message or a
// queue entry (a refused or aborted message leaves no body behind), and
// every referenced body is stored.
func (e *env) checkConsistency() {
	e.caughtUp()
	referenced := map[storage.Hash]bool{}
	var stored int64
	err := e.node.Store().View(func(tx *storage.Tx) error {
		users, err := tx.Users("")
		if err != nil {
			return err
		}
		for _, u := range users {
			mbs, err := tx.Mailboxes(u.ID)
			if err != nil {
				return err
			}
			for _, mb := range mbs {
				if err := tx.Messages(mb.ID, 1, func(m storage.Message) bool { referenced[m.Blob] = true; return true }); err != nil {
					return err
				}
			}
		}
		if err := tx.QueueEntries(func(q storage.QueueEntry) bool { referenced[q.Blob] = true; return true }); err != nil {
			return err
		}
		for h := range referenced {
			if !tx.HasBlob(h) {
				return fmt.Errorf("body %s referenced but missing", h)
			}
		}
		stored, _ = tx.BlobStats()
		return nil
	})
	if err != nil {
		e.t.Errorf("consistency: %v", err)
	}
	if stored != int64(len(referenced)) {
		e.t.Errorf("consistency: %d bodies stored, %d referenced: a body leaked", stored, len(referenced))
	}
}

// client is a raw SMTP client: what it sends is sent byte for byte.
type client struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (e *env) dial(kind Kind) *client {
	e.t.Helper()
	var conn net.Conn
	var err error
	if kind == SubmissionTLS {
		conn, err = tls.Dial("tcp", e.addr[kind], e.tls)
	} else {
		conn, err = net.Dial("tcp", e.addr[kind])
	}
	if err != nil {
		e.t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	c := &client{t: e.t, conn: conn, r: bufio.NewReader(conn)}
	e.t.Cleanup(func() { conn.Close() })
	c.expect(220)
	return c
}

// reply reads one reply, all its lines.
func (c *client) reply() (int, string) {
	c.t.Helper()
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(append(lines, "<"+err.Error()+">"), "\n")
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			c.t.Fatalf("short reply line %q", line)
		}
		lines = append(lines, line[4:])
		if line[3] == ' ' {
			code, _ := strconv.Atoi(line[:3])
			return code, strings.Join(lines, "\n")
		}
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// cmd sends a command line and returns the reply.
func (c *client) cmd(line string) (int, string) {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.reply()
}

// expect reads a reply and fails the test unless it has the code.
func (c *client) expect(code int) string {
	c.t.Helper()
	got, text := c.reply()
	if got != code {
		c.t.Fatalf("reply %d %q, want %d", got, text, code)
	}
	return text
}

// must sends a command and checks the reply's code (and, when given, that
// its text contains want).
func (c *client) must(line string, code int, want ...string) string {
	c.t.Helper()
	got, text := c.cmd(line)
	if got != code {
		c.t.Fatalf("%q: reply %d %q, want %d", line, got, text, code)
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			c.t.Fatalf("%q: reply %d %q, want it to contain %q", line, got, text, w)
		}
	}
	return text
}

// closed reports whether the server closes the connection (soon), after
// whatever more it sends.
func (c *client) closed() bool {
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c.r)
	return err == nil || !isTimeout(err)
}

func (c *client) starttls(e *env) {
	c.t.Helper()
	c.must("STARTTLS", 220)
	tc := tls.Client(c.conn, e.tls)
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

// authPlain logs in with AUTH PLAIN and an initial response.
func (c *client) authPlain(user, pass string) (int, string) {
	c.t.Helper()
	return c.cmd("AUTH PLAIN " + b64("\x00"+user+"\x00"+pass))
}

// goClient returns a go-smtp client on kind, after EHLO.
func (e *env) goClient(kind Kind) *gosmtp.Client {
	e.t.Helper()
	var c *gosmtp.Client
	var err error
	if kind == SubmissionTLS {
		c, err = gosmtp.DialTLS(e.addr[kind], e.tls)
	} else {
		c, err = gosmtp.Dial(e.addr[kind])
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// goClientTLS returns a go-smtp client on TLS: STARTTLS on MX and
// submission, implicit on SubmissionTLS.
func (e *env) goClientTLS(kind Kind) *gosmtp.Client {
	e.t.Helper()
	var c *gosmtp.Client
	var err error
	if kind == SubmissionTLS {
		c, err = gosmtp.DialTLS(e.addr[kind], e.tls)
	} else {
		c, err = gosmtp.DialStartTLS(e.addr[kind], e.tls)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// scramClient is xdg-go/scram's client as a go-sasl client.
type scramClient struct {
	conv *scram.ClientConversation
}

func newScram(t *testing.T, user, pass string) *scramClient {
	c, err := scram.SHA256.NewClient(user, pass, "")
	if err != nil {
		t.Fatal(err)
	}
	return &scramClient{conv: c.NewConversation()}
}

func (c *scramClient) Start() (string, []byte, error) {
	first, err := c.conv.Step("")
	return auth.ScramSHA256, []byte(first), err
}

func (c *scramClient) Next(challenge []byte) ([]byte, error) {
	resp, err := c.conv.Step(string(challenge))
	if err != nil {
		return nil, err
	}
	if c.conv.Done() {
		if !c.conv.Valid() {
			return nil, errors.New("server signature invalid")
		}
		return []byte{}, nil // the empty response after server-final
	}
	return []byte(resp), nil
}

var _ sasl.Client = (*scramClient)(nil)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() || os.Getenv("FLOTILLA_TEST_DEBUG") != "" {
		w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// logBuffer keeps the server's log for assertions.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// failingBackend refuses every write as a cluster without a leader does.
type failingBackend struct {
	Backend
	err error
}

func (f failingBackend) ProposeCommitted(context.Context, command.Command) (uint64, error) {
	return 0, f.err
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func relaySetting(mode relay.Mode, trusted ...string) *command.SetSetting {
	s, err := relay.Settings{Mode: mode, Trusted: trusted}.Normalize()
	if err != nil {
		panic(err)
	}
	return &command.SetSetting{Key: relay.SettingKey, Value: s.Marshal()}
}
