package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/flotilla-mail/flotilla/cluster/clustertest"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

func TestOneTransactionPerDomain(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	b := newFakeMTA(t, "127.0.0.3", a.port(), nil)
	e := newEnv(t, a.port(), testSettings)
	e.res.setMX("remote.test", "mx.remote.test")
	e.res.set("mx.remote.test", "127.0.0.2")
	e.res.set("other.test", "127.0.0.3") // no MX: its address
	e.inject("alice@local.test", []string{"x@remote.test", "y@remote.test", "Z@remote.test", "w@other.test", "alice@local.test"}, testMsg)
	e.waitEmpty(10 * time.Second)
	got := a.received()
	if len(got) != 1 || strings.Join(got[0].rcpts, ",") != "x@remote.test,y@remote.test,Z@remote.test" || got[0].from != "alice@local.test" {
		t.Fatalf("remote.test got %+v", got)
	}
	if !strings.Contains(string(got[0].data), "Received: by node.local.test") || !strings.Contains(string(got[0].data), "Hello.") {
		t.Fatalf("message as received:\n%s", got[0].data)
	}
	if got := b.received(); len(got) != 1 || got[0].rcpts[0] != "w@other.test" {
		t.Fatalf("other.test got %+v", got)
	}
	if n := len(e.inbox("alice@local.test")); n != 1 {
		t.Fatalf("local copy: %d messages", n)
	}
	if s := e.w.Stats(); s.Delivered != 4 || s.Messages != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestConnectionReuse(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	st := testSettings
	st.PerDestination = 1
	e := newEnv(t, a.port(), st)
	e.res.set("remote.test", "127.0.0.2")
	for i := 0; i < 20; i++ {
		e.inject("alice@local.test", []string{fmt.Sprintf("u%d@remote.test", i)}, testMsg)
	}
	e.waitEmpty(10 * time.Second)
	if n := len(a.received()); n != 20 {
		t.Fatalf("%d messages", n)
	}
	if c := a.connCount(); c > 3 {
		t.Fatalf("%d connections for 20 messages with one connection at a time", c)
	}
}

func TestTemporaryFailureThenAccepted(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.data = func(n int) error {
		if n <= 2 {
			return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
		}
		return nil
	}
	e := newEnv(t, a.port(), testSettings)
	e.res.set("remote.test", "127.0.0.2")
	out := e.inject("alice@local.test", []string{"bob@remote.test"}, testMsg)
	eventually(t, 10*time.Second, "two deferrals recorded", func() error {
		for _, q := range e.queue() {
			if q.ID == out.QueueID && q.Recipients[0].Attempts >= 2 && strings.Contains(q.Recipients[0].LastError, "451") {
				return nil
			}
		}
		if len(a.received()) > 0 {
			return nil // delivered already: the third attempt came fast
		}
		return errors.New("not yet")
	})
	e.waitEmpty(10 * time.Second)
	if n := len(a.received()); n != 1 {
		t.Fatalf("delivered %d times", n)
	}
	if n := len(e.inbox("alice@local.test")); n != 0 {
		t.Fatalf("sender got %d reports for a delivered message", n)
	}
}

func TestPermanentFailureOneReport(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.rcpt = func(to string) error {
		if strings.HasPrefix(to, "nobody") {
			return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user here"}
		}
		return nil
	}
	e := newEnv(t, a.port(), testSettings)
	e.res.set("remote.test", "127.0.0.2")
	e.inject("alice@local.test", []string{"nobody@remote.test", "bob@remote.test"}, testMsg)
	e.inject("", []string{"nobody2@remote.test"}, testMsg) // null sender: never a report
	e.waitEmpty(10 * time.Second)
	if got := a.received(); len(got) != 1 || got[0].rcpts[0] != "bob@remote.test" {
		t.Fatalf("received %+v", got)
	}
	var reports []string
	eventually(t, 5*time.Second, "one report", func() error {
		reports = e.inbox("alice@local.test")
		if len(reports) != 1 {
			return fmt.Errorf("%d reports", len(reports))
		}
		return nil
	})
	r := reports[0]
	for _, want := range []string{"Return-Path: <>", "multipart/report; report-type=delivery-status", "message/delivery-status",
		"Final-Recipient: rfc822; nobody@remote.test", "Action: failed", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1",
		"Content-Type: message/rfc822", "Subject: hi"} {
		if !strings.Contains(r, want) {
			t.Errorf("report lacks %q:\n%s", want, r)
		}
	}
	if strings.Contains(r, "bob@remote.test>:") {
		t.Errorf("report names the delivered recipient:\n%s", r)
	}
	// Nothing else comes: the report is queued nowhere, sent once.
	time.Sleep(300 * time.Millisecond)
	if n := len(e.inbox("alice@local.test")); n != 1 || len(e.queue()) != 0 {
		t.Fatalf("%d reports, queue %+v", n, e.queue())
	}
}

func TestReportToRemoteSenderIsQueuedFromNullSender(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.rcpt = func(to string) error {
		if to == "nobody@remote.test" {
			return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}
	e := newEnv(t, a.port(), testSettings)
	e.res.set("remote.test", "127.0.0.2")
	e.inject("sender@remote.test", []string{"nobody@remote.test"}, testMsg)
	e.waitEmpty(10 * time.Second)
	eventually(t, 5*time.Second, "report delivered to the remote sender", func() error {
		for _, m := range a.received() {
			if m.from == "" && m.rcpts[0] == "sender@remote.test" && strings.Contains(string(m.data), "Status: 5.1.1") {
				return nil
			}
		}
		return fmt.Errorf("received %d", len(a.received()))
	})
}

func TestBadDestinations(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.srv.MaxMessageBytes = 200
	e := newEnv(t, a.port(), testSettings)
	e.res.set("small.test", "127.0.0.2")
	e.res.setMX("loop.test", "mx.loop.test")
	e.res.set("mx.loop.test", "127.0.0.1") // the node itself
	e.res.setMX("nullmx.test", ".")
	e.res.setMX("noaddr.test", "mx.gone.test")
	for _, to := range []string{"a@nowhere.test", "b@loop.test", "c@nullmx.test", "d@noaddr.test"} {
		e.inject("alice@local.test", []string{to}, testMsg)
	}
	e.inject("alice@local.test", []string{"e@small.test"}, testMsg+strings.Repeat("x", 300)+"\r\n")
	e.waitEmpty(10 * time.Second)
	var reports []string
	eventually(t, 5*time.Second, "five reports", func() error {
		reports = e.inbox("alice@local.test")
		if len(reports) != 5 {
			return fmt.Errorf("%d reports", len(reports))
		}
		return nil
	})
	all := strings.Join(reports, "\n")
	for _, want := range []string{
		"<a@nowhere.test>: 5.1.2 domain nowhere.test does not exist",
		"<b@loop.test>: 5.4.6 mail for loop.test loops back to this cluster",
		"<c@nullmx.test>: 5.1.10 domain nullmx.test accepts no mail",
		"<d@noaddr.test>: 5.4.4 no address records for the MX hosts of noaddr.test",
		"<e@small.test>: 552 5.3.4 message size",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no report says %q", want)
		}
	}
	if len(a.received()) != 0 {
		t.Fatal("an oversize message was sent")
	}
}

func TestMailLoopByHops(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	st := testSettings
	st.MaxHops = 5
	e := newEnv(t, a.port(), st)
	e.res.set("remote.test", "127.0.0.2")
	e.inject("alice@local.test", []string{"bob@remote.test"}, strings.Repeat("Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n", 5)+testMsg)
	e.waitEmpty(10 * time.Second)
	eventually(t, 5*time.Second, "loop report", func() error {
		if r := e.inbox("alice@local.test"); len(r) == 1 && strings.Contains(r[0], "5.4.6 mail loop: the message has 6 Received") {
			return nil
		}
		return errors.New("no loop report")
	})
}

func TestRemoteNeverAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // silent until the test ends
		}
	}()
	st := testSettings
	st.CommandTimeout = Duration(300 * time.Millisecond)
	st.Retry = []Duration{Duration(time.Hour)}
	e := newEnv(t, ln.Addr().(*net.TCPAddr).Port, st)
	e.res.set("silent.test", "127.0.0.2")
	e.inject("alice@local.test", []string{"bob@silent.test"}, testMsg)
	eventually(t, 10*time.Second, "deferred with a timeout", func() error {
		q := e.queue()
		if len(q) == 1 && q[0].Recipients[0].Attempts == 1 && strings.Contains(q[0].Recipients[0].LastError, "4.4.2") &&
			strings.Contains(q[0].Recipients[0].LastError, "timed out") && q[0].LeaseNode == "" {
			return nil
		}
		return fmt.Errorf("queue %+v", q)
	})
}

func TestTLS(t *testing.T) {
	withTLS := newFakeMTA(t, "127.0.0.2", 0, selfSigned(t))
	plain := newFakeMTA(t, "127.0.0.3", withTLS.port(), nil)
	st := testSettings
	st.TLS = map[string]string{"plain.test": TLSRequire}
	st.Retry = []Duration{Duration(time.Hour)}
	e := newEnv(t, withTLS.port(), st)
	e.res.set("tls.test", "127.0.0.2")
	e.res.set("plain.test", "127.0.0.3")
	e.res.set("plain2.test", "127.0.0.3")
	e.inject("alice@local.test", []string{"a@tls.test", "b@plain.test", "c@plain2.test"}, testMsg)
	eventually(t, 10*time.Second, "delivered over TLS and plain; refused without TLS", func() error {
		if len(withTLS.received()) != 1 || len(plain.received()) != 1 {
			return fmt.Errorf("tls %d plain %d", len(withTLS.received()), len(plain.received()))
		}
		q := e.queue()
		if len(q) != 1 || q[0].Recipients[1].Attempts == 0 {
			return fmt.Errorf("queue %+v", q)
		}
		if !strings.Contains(q[0].Recipients[1].LastError, "TLS is required") {
			return fmt.Errorf("last error %q", q[0].Recipients[1].LastError)
		}
		return nil
	})
}

func TestRelayFailoverWithAuth(t *testing.T) {
	down, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close()
	r := newFakeMTA(t, "127.0.0.2", 0, selfSigned(t))
	r.needAuth = true
	e := newEnv(t, r.port(), testSettings)
	e.set(KeyRelays, []Relay{{Name: "isp", Hosts: []Host{
		{Addr: downAddr, TLS: TLSMay, Username: "relayuser", Password: "secret"},
		{Addr: r.addr, TLS: TLSRequire, Username: "relayuser", Password: "secret"},
	}}})
	e.inject("alice@local.test", []string{"x@anywhere.test", "y@elsewhere.test"}, testMsg)
	e.waitEmpty(10 * time.Second)
	got := r.received()
	if len(got) != 1 || len(got[0].rcpts) != 2 || got[0].auth != "relayuser" {
		t.Fatalf("relay got %+v", got)
	}
}

func TestRelaySpreadAndSenderDomain(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	b := newFakeMTA(t, "127.0.0.3", a.port(), nil)
	c := newFakeMTA(t, "127.0.0.4", a.port(), nil)
	e := newEnv(t, a.port(), testSettings)
	e.set(KeyRelays, []Relay{
		{Name: "bulk", Mode: Spread, Hosts: []Host{{Addr: a.addr, TLS: TLSNone}, {Addr: b.addr, TLS: TLSNone}}},
		{Name: "partner", Senders: []string{"partner.test"}, Hosts: []Host{{Addr: c.addr, TLS: TLSNone}}},
	})
	for i := 0; i < 10; i++ {
		e.inject("alice@local.test", []string{fmt.Sprintf("u%d@remote.test", i)}, testMsg)
	}
	e.inject("someone@partner.test", []string{"v@remote.test"}, testMsg)
	e.waitEmpty(10 * time.Second)
	if na, nb := len(a.received()), len(b.received()); na+nb != 10 || na == 0 || nb == 0 {
		t.Fatalf("spread %d/%d", na, nb)
	}
	if got := c.received(); len(got) != 1 || got[0].from != "someone@partner.test" {
		t.Fatalf("sender-domain relay got %+v", got)
	}
}

func TestRouteKeepsAddress(t *testing.T) {
	site := newFakeMTA(t, "127.0.0.2", 0, selfSigned(t))
	site.needAuth = true
	e := newEnv(t, site.port(), testSettings)
	if err := ValidateRoutes([]Route{{Name: "b", Match: []string{"x@y.test"}, Hosts: []Host{{Addr: site.addr}}}}); err == nil {
		t.Fatal("a route without authentication was accepted")
	}
	e.set(KeyRoutes, []Route{{Name: "site-b", Match: []string{"bob@local.test", "*@branch.local.test"},
		Hosts: []Host{{Addr: site.addr, TLS: TLSRequire, Username: "relayuser", Password: "secret"}}}})
	// bob is no user here: he lives at site B, under the same domain.
	out := e.inject("alice@local.test", []string{"bob@local.test", "carol@branch.local.test", "alice@local.test"}, testMsg)
	if len(out.Queued) != 2 || len(out.Local) != 1 {
		t.Fatalf("inject %+v", out)
	}
	e.waitEmpty(10 * time.Second)
	got := site.received()
	if len(got) != 1 || strings.Join(got[0].rcpts, ",") != "bob@local.test,carol@branch.local.test" || got[0].auth != "relayuser" {
		t.Fatalf("site B got %+v", got)
	}
}

func TestExpiryAndDelayReports(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.data = func(int) error {
		return &gosmtp.SMTPError{Code: 452, EnhancedCode: gosmtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
	}
	st := testSettings
	st.NoDelayDSN = false
	st.DelayWarning = Duration(200 * time.Millisecond)
	st.Expire = Duration(1500 * time.Millisecond)
	st.Retry = []Duration{Duration(150 * time.Millisecond)}
	e := newEnv(t, a.port(), st)
	e.res.set("remote.test", "127.0.0.2")
	e.inject("alice@local.test", []string{"bob@remote.test"}, testMsg)
	e.waitEmpty(15 * time.Second)
	var reports []string
	eventually(t, 5*time.Second, "a delay and a failure report", func() error {
		reports = e.inbox("alice@local.test")
		if len(reports) != 2 {
			return fmt.Errorf("%d reports", len(reports))
		}
		return nil
	})
	if !strings.Contains(reports[0], "Action: delayed") || !strings.Contains(reports[0], "Will-Retry-Until:") || !strings.Contains(reports[0], "text/rfc822-headers") {
		t.Errorf("first report is not the delay report:\n%s", reports[0])
	}
	if !strings.Contains(reports[1], "Action: failed") || !strings.Contains(reports[1], "Status: 4.4.7") || !strings.Contains(reports[1], "mailbox full") {
		t.Errorf("second report is not the final one:\n%s", reports[1])
	}
}

func TestQueueAdmin(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	st := testSettings
	st.Paused = true
	e := newEnv(t, a.port(), st)
	e.res.set("remote.test", "127.0.0.2")
	id1 := e.inject("alice@local.test", []string{"a@remote.test"}, testMsg).QueueID
	id2 := e.inject("alice@local.test", []string{"b@remote.test"}, testMsg).QueueID
	clustertest.Propose(t, e.node, &command.QueueAdmin{Op: command.QueueHold, IDs: []uint64{id1}})
	clustertest.Propose(t, e.node, &command.QueueAdmin{Op: command.QueueDelete, IDs: []uint64{id2}})
	st.Paused = false
	e.set(KeySettings, st)
	time.Sleep(300 * time.Millisecond)
	if q := e.queue(); len(q) != 1 || !q[0].Held || len(a.received()) != 0 {
		t.Fatalf("held entry: %+v, received %d", q, len(a.received()))
	}
	clustertest.Propose(t, e.node, &command.QueueAdmin{Op: command.QueueRelease, IDs: []uint64{id1}})
	e.waitEmpty(10 * time.Second)
	if got := a.received(); len(got) != 1 || got[0].rcpts[0] != "a@remote.test" {
		t.Fatalf("received %+v", got)
	}
	if _, _, err := e.node.Propose(context.Background(), &command.QueueAdmin{Op: command.QueueRetry, IDs: []uint64{999}}); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("retry of a missing entry: %v", err)
	}
}

func TestLapsedLeaseIsTakenOver(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	st := testSettings
	st.Paused = true
	e := newEnv(t, a.port(), st)
	e.res.set("remote.test", "127.0.0.2")
	id := e.inject("alice@local.test", []string{"a@remote.test"}, testMsg).QueueID
	// A node that died holding the lease for 1.5s.
	until := time.Now().Add(1500 * time.Millisecond)
	resp := clustertest.Propose(t, e.node, &command.QueueClaim{Node: "dead-node", Until: until.UnixNano(), IDs: []uint64{id}})
	if len(resp.IDs) != 1 {
		t.Fatalf("claim %+v", resp)
	}
	// A second claim by another node is refused while the lease runs.
	if resp := clustertest.Propose(t, e.node, &command.QueueClaim{Node: "other", Until: until.UnixNano(), IDs: []uint64{id}}); len(resp.Failed) != 1 {
		t.Fatalf("second claim %+v", resp)
	}
	st.Paused = false
	e.set(KeySettings, st)
	e.waitEmpty(10 * time.Second)
	if time.Now().Before(until) {
		t.Fatal("delivered while another node's lease was running")
	}
	if len(a.received()) != 1 {
		t.Fatalf("received %d", len(a.received()))
	}
}

func TestStalledDeliveryKeepsLease(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.stall = make(chan struct{})
	st := testSettings
	st.Lease = Duration(time.Second)
	e := newEnv(t, a.port(), st)
	e.res.set("remote.test", "127.0.0.2")
	id := e.inject("alice@local.test", []string{"a@remote.test"}, testMsg).QueueID
	<-a.inData
	// The delivery hangs in DATA for three lease lengths; the lease is
	// renewed, so another node's claim is refused all along.
	for i := 0; i < 6; i++ {
		time.Sleep(500 * time.Millisecond)
		resp := clustertest.Propose(t, e.node, &command.QueueClaim{Node: "other", Until: time.Now().Add(time.Second).UnixNano(), IDs: []uint64{id}})
		if len(resp.IDs) != 0 {
			t.Fatalf("lease lost during a long delivery at %d", i)
		}
	}
	close(a.stall)
	e.waitEmpty(10 * time.Second)
	if len(a.received()) != 1 {
		t.Fatalf("received %d", len(a.received()))
	}
}

func TestOwnerIsStableAndSpread(t *testing.T) {
	nodes := []string{"n1", "n2", "n3"}
	count := map[string]int{}
	moved := 0
	for i := uint64(1); i <= 3000; i++ {
		o := Owner(entryKey(i), nodes)
		count[o]++
		o2 := Owner(entryKey(i), []string{"n1", "n3"})
		if o != "n2" && o2 != o {
			moved++
		}
	}
	for _, n := range nodes {
		if count[n] < 800 || count[n] > 1200 {
			t.Fatalf("uneven shares %v", count)
		}
	}
	if moved != 0 {
		t.Fatalf("%d entries of live nodes moved when n2 left", moved)
	}
}

// dnsServer serves MX and A records, and a malformed answer for one name.
func dnsServer(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		q := r.Question[0]
		if q.Name == "broken.test." {
			b, _ := new(dns.Msg).SetReply(r).Pack()
			_, _ = w.Write(append(b[:12:12], 0xff, 0x01)) // header claims nothing; garbage after
			bad := make([]byte, 12)
			copy(bad, b[:12])
			bad[7] = 1 // one answer that is not there
			_, _ = w.Write(bad)
			return
		}
		m := new(dns.Msg).SetReply(r)
		switch {
		case q.Name == "good.test." && q.Qtype == dns.TypeMX:
			rr, _ := dns.NewRR("good.test. 60 IN MX 10 mx.good.test.")
			m.Answer = append(m.Answer, rr)
		case q.Name == "mx.good.test." && q.Qtype == dns.TypeA:
			rr, _ := dns.NewRR("mx.good.test. 60 IN A 127.0.0.2")
			m.Answer = append(m.Answer, rr)
		case q.Name == "mx.good.test.", q.Name == "good.test.":
		default:
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestDNSResolver(t *testing.T) {
	r, err := NewDNSResolver(dnsServer(t))
	if err != nil {
		t.Fatal(err)
	}
	r.Timeout = time.Second
	ctx := context.Background()
	mx, err := r.LookupMX(ctx, "good.test")
	if err != nil || len(mx) != 1 || mx[0].Host != "mx.good.test." {
		t.Fatalf("MX %v %v", mx, err)
	}
	ips, err := r.LookupIP(ctx, "mx.good.test")
	if err != nil || len(ips) != 1 || !ips[0].Equal(net.ParseIP("127.0.0.2")) {
		t.Fatalf("A %v %v", ips, err)
	}
	var de *DNSError
	if _, err := r.LookupMX(ctx, "missing.test"); !errors.As(err, &de) || !de.NotFound {
		t.Fatalf("missing: %v", err)
	}
	_, err = r.LookupMX(ctx, "broken.test")
	if !errors.As(err, &de) || de.NotFound || !strings.Contains(err.Error(), "malformed DNS answer") {
		t.Fatalf("broken: %v", err)
	}
}

func TestMalformedDNSDefers(t *testing.T) {
	r, err := NewDNSResolver(dnsServer(t))
	if err != nil {
		t.Fatal(err)
	}
	r.Timeout = 500 * time.Millisecond
	st := testSettings
	st.Retry = []Duration{Duration(time.Hour)}
	e := newEnv(t, 25, st)
	e.w.opt.Resolver = r
	e.inject("alice@local.test", []string{"bob@broken.test"}, testMsg)
	eventually(t, 10*time.Second, "deferred for a malformed answer", func() error {
		q := e.queue()
		if len(q) == 1 && strings.Contains(q[0].Recipients[0].LastError, "4.4.3") && strings.Contains(q[0].Recipients[0].LastError, "malformed DNS answer") {
			return nil
		}
		return fmt.Errorf("queue %+v", q)
	})
}

func TestSettingsValidation(t *testing.T) {
	for key, bad := range map[string]string{
		KeySettings: `{"retry":["-1s"]}`,
		KeyRelays:   `[{"name":"a","hosts":[]}]`,
		KeyRoutes:   `[{"name":"a","match":["@x.test"],"hosts":[{"addr":"1.2.3.4:25","tls":"require"}]}]`,
		KeyCollect:  `[{"name":"a","protocol":"smtp","host":"h:1","username":"u","deliver_to":"a@b"}]`,
	} {
		if _, err := ParseSetting(key, []byte(bad)); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("%s %s: %v", key, bad, err)
		}
	}
	if _, err := ParseSetting(KeySettings, []byte(`{"retry":["1m","10m"],"expire":"2d"}`)); err == nil {
		t.Error(`"2d" accepted`)
	}
	b, err := ParseSetting(KeySettings, []byte(`{"retry":["1m","10m"],"expire":"48h","lease":"30s"}`))
	if err != nil || !strings.Contains(string(b), `"lease":"30s"`) {
		t.Fatalf("%s %v", b, err)
	}
}

func TestSystemResolverKeepsTestNamesLocal(t *testing.T) {
	r := &DNSResolver{Servers: []string{"127.0.0.1:9"}, Timeout: 50 * time.Millisecond, System: true}
	_, err := r.LookupMX(context.Background(), "remote.test")
	var de *DNSError
	if !errors.As(err, &de) || de.NotFound || !strings.Contains(err.Error(), "special-use name") {
		t.Fatalf("remote.test through the system resolver: %v", err)
	}
}

func TestManyRecipientsSplitInHundreds(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	e := newEnv(t, a.port(), testSettings)
	e.res.set("remote.test", "127.0.0.2")
	var to []string
	for i := 0; i < 250; i++ {
		to = append(to, fmt.Sprintf("r%d@remote.test", i))
	}
	e.inject("alice@local.test", to, testMsg)
	e.waitEmpty(10 * time.Second)
	got := a.received()
	if len(got) != 3 || len(got[0].rcpts)+len(got[1].rcpts)+len(got[2].rcpts) != 250 {
		t.Fatalf("%d transactions", len(got))
	}
	for _, m := range got {
		if len(m.rcpts) > 100 {
			t.Fatalf("a transaction of %d recipients", len(m.rcpts))
		}
	}
}

func TestRelayedReportWhenNextHopHasNoDSN(t *testing.T) {
	a := newFakeMTA(t, "127.0.0.2", 0, nil)
	a.srv.EnableDSN = false
	e := newEnv(t, a.port(), testSettings)
	e.res.set("remote.test", "127.0.0.2")
	hash, z := e.node.Store().Compress([]byte(testMsg))
	clustertest.Propose(t, e.node, &command.Deliver{Blob: hash, Body: z, BodySize: int64(len(testMsg)), From: "alice@local.test",
		Queue: []storage.QueueRecipient{{Address: "x@remote.test", Notify: "SUCCESS,FAILURE"}, {Address: "y@remote.test"}}})
	e.waitEmpty(10 * time.Second)
	eventually(t, 5*time.Second, "one relayed report", func() error {
		r := e.inbox("alice@local.test")
		if len(r) != 1 {
			return fmt.Errorf("%d reports", len(r))
		}
		for _, want := range []string{"Action: relayed", "Status: 2.0.0", "Final-Recipient: rfc822; x@remote.test", "Successful Mail Relay Report"} {
			if !strings.Contains(r[0], want) {
				return fmt.Errorf("report lacks %q:\n%s", want, r[0])
			}
		}
		if strings.Contains(r[0], "rfc822; y@remote.test") {
			return errors.New("report names y, who asked for nothing")
		}
		return nil
	})
}

func TestDNSCacheAndCoalescing(t *testing.T) {
	var asked atomic.Int64
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		asked.Add(1)
		m := new(dns.Msg).SetReply(r)
		if r.Question[0].Qtype == dns.TypeMX {
			rr, _ := dns.NewRR("c.test. 60 IN MX 10 mx.c.test.")
			m.Answer = append(m.Answer, rr)
		}
		time.Sleep(20 * time.Millisecond)
		_ = w.WriteMsg(m)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	r, _ := NewDNSResolver(pc.LocalAddr().String())
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if mx, err := r.LookupMX(context.Background(), "c.test"); err != nil || len(mx) != 1 {
				t.Errorf("%v %v", mx, err)
			}
		}()
	}
	wg.Wait()
	if n := asked.Load(); n != 1 {
		t.Fatalf("50 lookups asked the server %d times", n)
	}
}
