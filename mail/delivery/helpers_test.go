package delivery

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/certs"
	"github.com/flotilla-mail/flotilla/storage"
)

// fakeMTA is a receiving SMTP server written with go-smtp whose answers a
// test sets.
type fakeMTA struct {
	t    *testing.T
	srv  *gosmtp.Server
	ln   net.Listener
	addr string

	mu    sync.Mutex
	msgs  []received
	conns int
	auths []string
	// rcpt answers by recipient: an *gosmtp.SMTPError to refuse.
	rcpt func(to string) error
	// data answers a message (attempt counts from 1).
	data func(attempt int) error
	// stall, if set, blocks DATA until closed.
	stall   chan struct{}
	inData  chan struct{}
	attempt int
	// needAuth refuses MAIL without AUTH.
	needAuth bool
}

type received struct {
	from  string
	rcpts []string
	data  []byte
	auth  string
}

// newFakeMTA listens on ip (a loopback address) at port (0: any).
func newFakeMTA(t *testing.T, ip string, port int, tlsCfg *tls.Config) *fakeMTA {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeMTA{t: t, ln: ln, addr: ln.Addr().String(), inData: make(chan struct{}, 16)}
	f.srv = gosmtp.NewServer(f)
	f.srv.Domain = "fake.test"
	f.srv.AllowInsecureAuth = true
	f.srv.TLSConfig = tlsCfg
	f.srv.EnableDSN = true
	f.srv.ReadTimeout = 30 * time.Second
	f.srv.WriteTimeout = 30 * time.Second
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *fakeMTA) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *fakeMTA) NewSession(c *gosmtp.Conn) (gosmtp.Session, error) {
	f.mu.Lock()
	f.conns++
	f.mu.Unlock()
	return &fakeSession{f: f}, nil
}

func (f *fakeMTA) received() []received {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]received(nil), f.msgs...)
}

func (f *fakeMTA) connCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

type fakeSession struct {
	f     *fakeMTA
	from  string
	rcpts []string
	auth  string
}

func (s *fakeSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *fakeSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != "relayuser" || password != "secret" {
			return errors.New("bad credentials")
		}
		s.auth = username
		s.f.mu.Lock()
		s.f.auths = append(s.f.auths, username)
		s.f.mu.Unlock()
		return nil
	}), nil
}

func (s *fakeSession) Reset()        { s.from, s.rcpts = "", nil }
func (s *fakeSession) Logout() error { return nil }
func (s *fakeSession) Mail(from string, _ *gosmtp.MailOptions) error {
	if s.f.needAuth && s.auth == "" {
		return &gosmtp.SMTPError{Code: 530, EnhancedCode: gosmtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	}
	s.from = from
	return nil
}
func (s *fakeSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if s.f.rcpt != nil {
		if err := s.f.rcpt(to); err != nil {
			return err
		}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}
func (s *fakeSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.f.mu.Lock()
	s.f.attempt++
	n := s.f.attempt
	stall := s.f.stall
	s.f.mu.Unlock()
	if stall != nil {
		s.f.inData <- struct{}{}
		<-stall
	}
	if s.f.data != nil {
		if err := s.f.data(n); err != nil {
			return err
		}
	}
	s.f.mu.Lock()
	s.f.msgs = append(s.f.msgs, received{from: s.from, rcpts: append([]string(nil), s.rcpts...), data: b, auth: s.auth})
	s.f.mu.Unlock()
	return nil
}

// mapResolver answers from maps; names it does not know do not exist.
type mapResolver struct {
	mu  sync.Mutex
	mx  map[string][]*net.MX
	ips map[string][]net.IP
	err map[string]error
}

func newMapResolver() *mapResolver {
	return &mapResolver{mx: map[string][]*net.MX{}, ips: map[string][]net.IP{}, err: map[string]error{}}
}

func (r *mapResolver) set(name string, ip ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, s := range ip {
		r.ips[name] = append(r.ips[name], net.ParseIP(s))
	}
}

func (r *mapResolver) setMX(domain string, hosts ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, h := range hosts {
		r.mx[domain] = append(r.mx[domain], &net.MX{Host: h, Pref: uint16(10 * (i + 1))})
	}
}

func (r *mapResolver) LookupMX(_ context.Context, domain string) ([]*net.MX, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.err[domain]; err != nil {
		return nil, err
	}
	if mx, ok := r.mx[domain]; ok {
		return mx, nil
	}
	if _, ok := r.ips[domain]; ok {
		return nil, nil
	}
	return nil, &DNSError{Name: domain, Type: "MX", Reason: "no such domain (NXDOMAIN)", NotFound: true}
}

func (r *mapResolver) LookupIP(_ context.Context, host string) ([]net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if ips, ok := r.ips[host]; ok {
		return ips, nil
	}
	return nil, &DNSError{Name: host, Type: "A", Reason: "no such domain (NXDOMAIN)", NotFound: true}
}

// env is a one-node cluster with a worker.
type env struct {
	t    *testing.T
	node *cluster.Node
	res  *mapResolver
	w    *Worker
	port int
}

// testSettings are fast: retries after 100ms, short leases and timeouts.
var testSettings = Settings{
	Retry: []Duration{Duration(100 * time.Millisecond)}, Lease: Duration(2 * time.Second),
	ConnectTimeout: Duration(2 * time.Second), CommandTimeout: Duration(5 * time.Second), DataTimeout: Duration(5 * time.Second),
	DelayWarning: Duration(time.Hour), NoDelayDSN: true,
}

func newEnv(t *testing.T, port int, st Settings) *env {
	t.Helper()
	n := clustertest.New(t)
	e := &env{t: t, node: n, res: newMapResolver(), port: port}
	e.set(KeySettings, st)
	clustertest.AddUser(t, n, "alice@local.test", storage.Secrets{})
	e.w = New(Options{Node: n, Hostname: "node.local.test", Resolver: e.res, MXPort: port,
		ScanInterval: 50 * time.Millisecond,
		Log:          slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	e.w.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.w.Stop(ctx)
	})
	return e
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	if os.Getenv("FLOTILLA_TEST_DEBUG") != "" {
		w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (e *env) set(key string, v any) {
	e.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		e.t.Fatal(err)
	}
	norm, err := ParseSetting(key, b)
	if err != nil {
		e.t.Fatal(err)
	}
	clustertest.Propose(e.t, e.node, &command.SetSetting{Key: key, Value: norm})
}

func (e *env) inject(from string, to []string, msg string) Injected {
	e.t.Helper()
	out, err := Inject(context.Background(), e.node, "node.local.test", from, to, []byte(msg))
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) queue() []storage.QueueEntry {
	var out []storage.QueueEntry
	_ = e.node.Store().View(func(tx *storage.Tx) error {
		return tx.QueueEntries(func(q storage.QueueEntry) bool { out = append(out, q); return true })
	})
	return out
}

func (e *env) inbox(user string) []string {
	var out []string
	err := e.node.Store().View(func(tx *storage.Tx) error {
		u, err := tx.User(user)
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		if err != nil {
			return err
		}
		return tx.Messages(mb.ID, 1, func(m storage.Message) bool {
			b, _ := tx.Body(m.Blob)
			out = append(out, string(m.Prefix)+string(b))
			return true
		})
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// eventually waits for cond with a deadline.
func eventually(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, d, err)
}

func (e *env) waitEmpty(d time.Duration) {
	e.t.Helper()
	eventually(e.t, d, "queue empty", func() error {
		if q := e.queue(); len(q) > 0 {
			return fmt.Errorf("%d entries, first %+v", len(q), q[0].Recipients)
		}
		return nil
	})
}

const testMsg = "From: alice@local.test\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nHello.\r\n"

// selfSigned is a TLS config for fake servers.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	l, err := certs.SelfSigned(filepath.Join(t.TempDir(), "tls"), []string{"mx.remote.test"}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return l.Config()
}

func clustertestAddUser(t *testing.T, e *env, addr string) {
	t.Helper()
	clustertest.Propose(t, e.node, &command.AddUser{Address: addr})
}
