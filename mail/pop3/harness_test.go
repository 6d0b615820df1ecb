package pop3

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
)

// Test messages. msgDots exercises byte-stuffing and line endings.
const (
	msgHello = "From: bob@example.org\r\nSubject: hello\r\n\r\nHi Alice.\r\nSecond line.\r\n"
	msgDots  = "Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nbare\nlf\r\nno final newline"
)

const testTimeout = 10 * time.Second

// testCert is a self-signed certificate for localhost, made once.
var testCert = sync.OnceValue(func() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
})

func testTLSConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{testCert()}}
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

// testSASL offers PLAIN (only where passwords are OK) and X-FINAL, a
// mechanism that ends with additional data: server sends "who?", client
// answers a user name, server sends "welcome <user>" as success data.
func testSASL(b *memBackend) func(ctx context.Context, c ConnInfo) map[string]func() SASLServer {
	return func(ctx context.Context, c ConnInfo) map[string]func() SASLServer {
		mechs := map[string]func() SASLServer{
			"x-final": func() SASLServer { return &finalMech{b: b} },
		}
		if c.PasswordOK {
			mechs["PLAIN"] = func() SASLServer {
				var id string
				s := sasl.NewPlainServer(func(identity, user, pass string) error {
					want, ok := b.password(user)
					if !ok || want != pass || (identity != "" && identity != user) {
						return errors.New("invalid credentials")
					}
					id = user
					return nil
				})
				return NewSASLServer(s, func() string { return id })
			}
		}
		return mechs
	}
}

type finalMech struct {
	b    *memBackend
	step int
	user string
}

func (m *finalMech) Next(resp []byte) ([]byte, bool, error) {
	m.step++
	switch m.step {
	case 1:
		if len(resp) > 0 {
			return nil, false, errors.New("no initial response expected")
		}
		return []byte("who?"), false, nil
	case 2:
		if _, ok := m.b.password(string(resp)); !ok {
			return nil, false, errors.New("unknown user")
		}
		m.user = string(resp)
		return []byte("welcome " + m.user), true, nil
	}
	return nil, false, errors.New("too many steps")
}

func (m *finalMech) Identity() string { return m.user }

type testServer struct {
	srv     *Server
	backend *memBackend
	addr    string
	logs    *lockedBuffer
	served  chan error
}

// newTestServer runs a Server on a loopback port with an in-memory backend
// holding alice (password "secret", msgHello and msgDots) and bob
// (password "hunter2", no messages). At cleanup it shuts the server down,
// checks the backend's consistency and that no session panicked.
func newTestServer(t *testing.T, configure func(*Server, *memBackend)) *testServer {
	t.Helper()
	return startTestServer(t, configure, false)
}

// startTestServer is newTestServer, with the listener wrapped by
// tls.NewListener if implicitTLS.
func startTestServer(t *testing.T, configure func(*Server, *memBackend), implicitTLS bool) *testServer {
	t.Helper()
	b := newMemBackend()
	b.add("alice", "secret", msgHello, msgDots)
	b.add("bob", "hunter2")
	logs := &lockedBuffer{}
	srv := &Server{
		Backend:   apopBackend{b},
		TLSConfig: testTLSConfig(),
		Hostname:  "pop.test",
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		SASL:      testSASL(b),
	}
	if configure != nil {
		configure(srv, b)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if implicitTLS {
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	ts := &testServer{srv: srv, backend: b, addr: ln.Addr().String(), logs: logs, served: make(chan error, 1)}
	go func() { ts.served <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-ts.served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
		b.check(t)
		if strings.Contains(logs.String(), "panicked") {
			t.Errorf("a session panicked")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return ts
}

// testClient speaks raw POP3 to a test server.
type testClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (ts *testServer) dial(t *testing.T) *testClient {
	t.Helper()
	conn, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, conn)
	if g := c.readLine(); !strings.HasPrefix(g, "+OK ") {
		t.Fatalf("greeting %q", g)
	}
	return c
}

func newTestClient(t *testing.T, conn net.Conn) *testClient {
	conn.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { conn.Close() })
	return &testClient{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *testClient) send(line string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
}

// readLine reads a CRLF-terminated line and returns it without the CRLF.
func (c *testClient) readLine() string {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reading reply: %v (got %q)", err, line)
	}
	if !strings.HasSuffix(line, "\r\n") {
		c.t.Fatalf("reply %q does not end in CRLF", line)
	}
	return strings.TrimSuffix(line, "\r\n")
}

// cmd sends a command and returns the first line of the reply.
func (c *testClient) cmd(line string) string {
	c.t.Helper()
	c.send(line)
	return c.readLine()
}

// ok sends a command and fails unless the reply is +OK.
func (c *testClient) ok(line string) string {
	c.t.Helper()
	r := c.cmd(line)
	if !strings.HasPrefix(r, "+OK") {
		c.t.Fatalf("%q: got %q, want +OK", line, r)
	}
	return r
}

// fail sends a command and fails unless the reply starts with want.
func (c *testClient) fail(line, want string) {
	c.t.Helper()
	r := c.cmd(line)
	if !strings.HasPrefix(r, want) {
		c.t.Fatalf("%q: got %q, want %q", line, r, want)
	}
}

// multi reads the lines of a multi-line response up to the terminating
// ".", still byte-stuffed.
func (c *testClient) multi() []string {
	c.t.Helper()
	var lines []string
	for {
		l := c.readLine()
		if l == "." {
			return lines
		}
		lines = append(lines, l)
	}
}

// okMulti sends a command that answers +OK with a multi-line response.
func (c *testClient) okMulti(line string) []string {
	c.t.Helper()
	c.ok(line)
	return c.multi()
}

func (c *testClient) login(user, pass string) {
	c.t.Helper()
	c.ok("USER " + user)
	c.ok("PASS " + pass)
}

// expectClosed fails unless the server closes the connection with nothing
// more to say.
func (c *testClient) expectClosed() {
	c.t.Helper()
	line, err := c.r.ReadString('\n')
	if err == nil || line != "" {
		c.t.Fatalf("got %q, %v; want connection closed", line, err)
	}
}

// startTLS runs STLS and the client side of the handshake.
func (c *testClient) startTLS() {
	c.t.Helper()
	c.ok("STLS")
	if c.r.Buffered() > 0 {
		c.t.Fatal("data after STLS reply")
	}
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.r = bufio.NewReader(tc)
}

// waitClosed waits until a maildrop has been closed n more times.
func waitClosed(t *testing.T, box *memBox, n int) {
	t.Helper()
	for range n {
		select {
		case <-box.closedCh:
		case <-time.After(testTimeout):
			t.Fatal("maildrop not closed")
		}
	}
}
