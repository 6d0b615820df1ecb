package test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// testDNS is a DNS server in the test process: the nodes send every
// lookup to it (--dns-resolver), so test domains point at loopback peers.
type testDNS struct {
	Addr   string
	mu     sync.Mutex
	mx     map[string][]string // domain -> MX hosts, by preference
	a      map[string]string   // host -> IPv4
	broken map[string]bool     // names answered with a malformed message
}

func startDNS(t *testing.T) *testDNS {
	t.Helper()
	return startDNSAt(t, "127.0.0.1")
}

// startDNSAt is startDNS on a given address.
func startDNSAt(t *testing.T, ip string) *testDNS {
	t.Helper()
	d := &testDNS{mx: map[string][]string{}, a: map[string]string{}, broken: map[string]bool{}}
	// UDP and TCP on one port: a port free for UDP may be taken for TCP
	// (by any of the many connections of a test run), so try a few.
	var pc net.PacketConn
	var ln net.Listener
	for try := 0; ln == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", net.JoinHostPort(ip, "0")); err != nil {
			t.Fatal(err)
		}
		if ln, err = net.Listen("tcp", pc.LocalAddr().String()); err != nil {
			pc.Close()
			if try == 20 {
				t.Fatalf("no port free for both UDP and TCP on %s: %v", ip, err)
			}
		}
	}
	d.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: d}
	tcp := &dns.Server{Listener: ln, Handler: d}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return d
}

func (d *testDNS) setMX(domain string, hosts ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mx[domain] = hosts
}

func (d *testDNS) setA(host, ip string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[host] = ip
}

func (d *testDNS) setBroken(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.broken[name] = true
}

func (d *testDNS) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := r.Question[0]
	name := strings.TrimSuffix(strings.ToLower(q.Name), ".")
	if d.broken[name] {
		b, _ := new(dns.Msg).SetReply(r).Pack()
		b[7] = 2 // two answers announced, none there
		_, _ = w.Write(append(b, 0xc0))
		return
	}
	m := new(dns.Msg).SetReply(r)
	m.Authoritative = true
	_, hasMX := d.mx[name]
	ip, hasA := d.a[name]
	switch {
	case q.Qtype == dns.TypeMX && hasMX:
		for i, h := range d.mx[name] {
			// "20 host" gives a preference; otherwise 10, 20, ... in order.
			pref := fmt.Sprint(10 * (i + 1))
			if p, host, ok := strings.Cut(h, " "); ok {
				pref, h = p, host
			}
			rr, _ := dns.NewRR(fmt.Sprintf("%s. 60 IN MX %s %s.", name, pref, h))
			m.Answer = append(m.Answer, rr)
		}
	case q.Qtype == dns.TypeA && hasA:
		rr, _ := dns.NewRR(fmt.Sprintf("%s. 60 IN A %s", name, ip))
		m.Answer = append(m.Answer, rr)
	case hasMX || hasA:
		// the name exists, without records of this type
	default:
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// fastDelivery are settings that make a test quick: retries every second,
// 3 s leases, short timeouts.
const fastDelivery = `{"retry":["1s"],"lease":"3s","connect_timeout":"2s","command_timeout":"3s","data_timeout":"5s","delay_warning":"1h"}`

// deliveryCluster starts a cluster whose nodes ask dnsAddr, with fast
// delivery settings and a local sender alice@site-a.test.
func deliveryCluster(t *testing.T, nodes int, dnsAddr string) (*harness.Cluster, *harness.Node) {
	t.Helper()
	c := harness.New(t, harness.Options{Nodes: nodes, Args: []string{"--dns-resolver", dnsAddr}})
	leader := c.WaitLeader(60 * time.Second)
	var ids []string
	for _, n := range c.Nodes {
		ids = append(ids, n.ID)
	}
	c.WaitVoters(leader, 60*time.Second, ids...)
	setDelivery(t, leader, "settings", fastDelivery)
	leader.MustCLI("domain", "add", "site-a.test")
	if out, errOut, err := leader.CLIInput("pw-alice\n", "user", "add", "alice@site-a.test", "--password-stdin"); err != nil {
		t.Fatalf("user add: %v %s %s", err, out, errOut)
	}
	return c, leader
}

func setDelivery(t *testing.T, n *harness.Node, kind, js string) {
	t.Helper()
	if out, errOut, err := n.CLIInput(js, "delivery", "set", kind); err != nil {
		t.Fatalf("delivery set %s: %v %s %s", kind, err, out, errOut)
	}
}

// inject queues a message through the CLI and returns its queue ID.
func inject(t *testing.T, n *harness.Node, from, to, msg string) uint64 {
	t.Helper()
	out, errOut, err := n.CLIInput(msg, "queue", "inject", "--json", "--from", from, "--to", to)
	if err != nil {
		t.Fatalf("queue inject: %v %s %s", err, out, errOut)
	}
	var res struct {
		QueueID uint64 `json:"queue_id"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("inject output %q: %v", out, err)
	}
	return res.QueueID
}

func queueOf(n *harness.Node) ([]admin.QueueEntry, error) {
	var qs []admin.QueueEntry
	err := n.API("GET", "/v1/queue", nil, &qs)
	return qs, err
}

func waitQueueEmpty(t *testing.T, n *harness.Node, d time.Duration) {
	t.Helper()
	harness.Eventually(t, d, "queue empty", func() error {
		qs, err := queueOf(n)
		if err != nil {
			return err
		}
		if len(qs) > 0 {
			return fmt.Errorf("%d entries; first %+v", len(qs), qs[0])
		}
		return nil
	})
}

// mailbox returns the messages of a cluster user's INBOX.
func mailbox(n *harness.Node, user string) ([]string, error) {
	var ms []admin.Message
	if err := n.API("GET", "/v1/users/"+user+"/messages", nil, &ms); err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		b, err := n.Raw("GET", fmt.Sprintf("/v1/users/%s/messages/%d", user, m.UID))
		if err != nil {
			return nil, err
		}
		out = append(out, string(b))
	}
	return out, nil
}

func message(subject string, size int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: Alice <alice@site-a.test>\r\nTo: someone\r\nSubject: %s\r\nMessage-ID: <%s@site-a.test>\r\n\r\n", subject, strings.ReplaceAll(subject, " ", "."))
	line := strings.Repeat("0123456789abcdefghij", 3) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.String()
}

// sinkMTA is an SMTP server in the test process whose behaviour a test
// sets: it can hold a transaction in DATA (to kill the node sending it).
type sinkMTA struct {
	srv   *gosmtp.Server
	Addr  string
	mu    sync.Mutex
	msgs  []string
	stall chan struct{} // while open, the first DATA waits and then fails
	inDat chan string   // the sending node's address, when DATA is held
	held  bool
}

func startSink(t *testing.T, ip string) *sinkMTA {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "25"))
	if err != nil {
		t.Fatal(err)
	}
	s := &sinkMTA{Addr: ln.Addr().String(), inDat: make(chan string, 4)}
	s.srv = gosmtp.NewServer(gosmtp.BackendFunc(func(c *gosmtp.Conn) (gosmtp.Session, error) {
		return &sinkSession{s: s, remote: c.Conn().RemoteAddr().String()}, nil
	}))
	s.srv.Domain = "sink.test"
	s.srv.ReadTimeout, s.srv.WriteTimeout = time.Minute, time.Minute
	go func() { _ = s.srv.Serve(ln) }()
	t.Cleanup(func() { s.srv.Close() })
	return s
}

func (s *sinkMTA) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

type sinkSession struct {
	s      *sinkMTA
	remote string
}

func (x *sinkSession) Reset()                                      {}
func (x *sinkSession) Logout() error                               { return nil }
func (x *sinkSession) Mail(string, *gosmtp.MailOptions) error      { return nil }
func (x *sinkSession) Rcpt(to string, _ *gosmtp.RcptOptions) error { return nil }
func (x *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	x.s.mu.Lock()
	stall := x.s.stall
	first := stall != nil && !x.s.held
	if first {
		x.s.held = true
	}
	x.s.mu.Unlock()
	if first {
		x.s.inDat <- x.remote
		<-stall
		// The sender is gone by now: this transaction never completes.
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "aborted"}
	}
	x.s.mu.Lock()
	x.s.msgs = append(x.s.msgs, string(b))
	x.s.mu.Unlock()
	return nil
}
