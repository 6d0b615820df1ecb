package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/delivery"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryToPostfix: a three-node cluster delivers through MX records
// of a DNS server the test runs to Debian's Postfix, which stores into
// Maildirs. Every message arrives exactly once, all nodes share the work,
// a recipient Postfix refuses gives exactly one report, and a recipient it
// answers 451 is delivered once it accepts.
func TestDeliveryToPostfix(t *testing.T) {
	d := startDNS(t)
	pf := harness.StartPostfixRX(t, harness.PostfixRXOptions{
		Users:  []string{"bob@remote.test", "carol@remote.test", "slow@remote.test"},
		TLS:    true,
		Access: map[string]string{"slow@remote.test": "451 4.7.1 not now, try later"},
	})
	d.setMX("remote.test", "mx.remote.test")
	d.setA("mx.remote.test", pf.IP)
	c, leader := deliveryCluster(t, 3, d.Addr)

	const n = 30
	for i := 0; i < n; i++ {
		inject(t, c.Nodes[i%3], "alice@site-a.test", "bob@remote.test,carol@remote.test", message(fmt.Sprintf("msg %d", i), 5<<10))
	}
	bad := inject(t, leader, "alice@site-a.test", "bob@remote.test,nosuchuser@remote.test", message("half bad", 2<<10))
	slow := inject(t, leader, "alice@site-a.test", "slow@remote.test", message("slow one", 2<<10))

	harness.Eventually(t, 60*time.Second, "all messages in the Maildirs", func() error {
		if b, cc := len(pf.Maildir("bob@remote.test")), len(pf.Maildir("carol@remote.test")); b != n+1 || cc != n {
			return fmt.Errorf("bob %d, carol %d", b, cc)
		}
		return nil
	})
	// 451 first: the entry stays, with the answer recorded.
	harness.Eventually(t, 30*time.Second, "the 451 recorded", func() error {
		qs, err := queueOf(leader)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.ID == slow && q.Recipients[0].Attempts >= 1 && strings.Contains(q.Recipients[0].LastError, "451 4.7.1") {
				return nil
			}
		}
		return fmt.Errorf("queue %+v", qs)
	})
	out := leader.MustCLI("queue", "show", fmt.Sprint(slow))
	if !strings.Contains(out, "slow@remote.test") || !strings.Contains(out, "451 4.7.1") || !strings.Contains(out, "Subject: slow one") {
		t.Fatalf("queue show:\n%s", out)
	}
	pf.SetAccess(nil)
	leader.MustCLI("queue", "retry", fmt.Sprint(slow))
	waitQueueEmpty(t, leader, 30*time.Second)
	maildirCount(t, pf, "slow@remote.test", 1)

	// Exactly once, over TLS, with our trace header.
	for _, u := range []string{"bob@remote.test", "carol@remote.test"} {
		seen := map[string]bool{}
		for _, m := range pf.Maildir(u) {
			subj := header(m, "Subject")
			if seen[subj] {
				t.Errorf("%s got %q twice", u, subj)
			}
			seen[subj] = true
			if !strings.Contains(m, "with ESMTPS") || !strings.Contains(m, "(Flotilla) via the admin API") {
				t.Errorf("%s: message not received over TLS or without our trace:\n%s", u, m[:min(len(m), 600)])
			}
		}
	}
	// One report for the refused recipient, none for anything else.
	var reports []string
	harness.Eventually(t, 20*time.Second, "the report in alice's INBOX", func() error {
		var err error
		reports, err = mailbox(leader, "alice@site-a.test")
		if err != nil {
			return err
		}
		if len(reports) != 1 {
			return fmt.Errorf("%d messages", len(reports))
		}
		return nil
	})
	r := reports[0]
	for _, want := range []string{"Final-Recipient: rfc822; nosuchuser@remote.test", "Action: failed", "Status: 5.1.1",
		"Remote-MTA: dns; mx.remote.test", "Subject: half bad"} {
		if !strings.Contains(r, want) {
			t.Errorf("report lacks %q:\n%s", want, r)
		}
	}
	_ = bad
	time.Sleep(2 * time.Second) // a second report would come within a retry
	if ms, _ := mailbox(leader, "alice@site-a.test"); len(ms) != 1 {
		t.Fatalf("%d reports", len(ms))
	}

	// Every node delivered a share.
	total := int64(0)
	for _, nd := range c.Nodes {
		var st delivery.Stats
		if err := nd.API("GET", "/v1/delivery/stats", nil, &st); err != nil {
			t.Fatal(err)
		}
		t.Logf("node %s delivered %d recipients in %d transactions", nd.ID, st.Delivered, st.Messages)
		if st.Messages == 0 {
			t.Errorf("node %s delivered nothing", nd.ID)
		}
		total += st.Delivered
	}
	if total != 2*n+1+1 {
		t.Errorf("nodes report %d recipients delivered, want %d (no recipient twice)", total, 2*n+2)
	}
	verifyClean(t, leader, 3)
}

func header(msg, name string) string {
	for _, l := range strings.Split(msg, "\n") {
		if strings.HasPrefix(l, name+": ") {
			return strings.TrimSpace(strings.TrimPrefix(l, name+": "))
		}
		if strings.TrimSpace(l) == "" {
			break
		}
	}
	return ""
}

// TestDeliveryNodeKilledMidTransfer: the node holding an entry's lease is
// killed with SIGKILL while the remote holds its DATA; another node
// delivers the message, once, within the lease length plus gossip's
// failure detection and a scan (bounded here by 20 s; measured ~5-8 s with
// 3 s leases).
func TestDeliveryNodeKilledMidTransfer(t *testing.T) {
	d := startDNS(t)
	sink := startSink(t, harness.FreeLoopback(t, 25))
	sink.stall = make(chan struct{})
	host := strings.Split(sink.Addr, ":")[0]
	d.setMX("far.test", "mx.far.test")
	d.setA("mx.far.test", host)
	c, leader := deliveryCluster(t, 3, d.Addr)
	id := inject(t, leader, "alice@site-a.test", "x@far.test", message("kill me", 3<<10))

	var from string
	select {
	case from = <-sink.inDat:
	case <-time.After(30 * time.Second):
		t.Fatal("no delivery started")
	}
	var holder *harness.Node
	for _, n := range c.Nodes {
		if strings.HasPrefix(from, n.IP+":") {
			holder = n
		}
	}
	if holder == nil {
		t.Fatalf("delivery from %s, not a node", from)
	}
	qs, err := queueOf(leader)
	if err != nil || len(qs) != 1 || qs[0].ID != id || qs[0].LeaseNode != holder.ID {
		t.Fatalf("queue %+v %v; sending node %s", qs, err, holder.ID)
	}
	killed := time.Now()
	holder.Kill()
	close(sink.stall)
	var survivor *harness.Node
	for _, n := range c.Nodes {
		if n != holder {
			survivor = n
		}
	}
	harness.Eventually(t, 20*time.Second, "delivered by another node", func() error {
		if sink.count() != 1 {
			return fmt.Errorf("%d delivered", sink.count())
		}
		return nil
	})
	took := time.Since(killed)
	waitQueueEmpty(t, survivor, 10*time.Second)
	t.Logf("taken over and delivered %s after the SIGKILL of %s", took.Round(100*time.Millisecond), holder.ID)
	time.Sleep(2 * time.Second)
	if sink.count() != 1 {
		t.Fatalf("delivered %d times", sink.count())
	}
}

// TestDeliveryRemoteDownForAWhile: the remote refuses connections; the
// message waits, retried on schedule, and goes once the remote is up.
func TestDeliveryRemoteDownForAWhile(t *testing.T) {
	d := startDNS(t)
	ip := harness.FreeLoopback(t, 25)
	d.setMX("later.test", "mx.later.test")
	d.setA("mx.later.test", ip)
	_, leader := deliveryCluster(t, 3, d.Addr)
	id := inject(t, leader, "alice@site-a.test", "dave@later.test", message("wait for me", 1<<10))
	harness.Eventually(t, 30*time.Second, "two failed attempts", func() error {
		qs, err := queueOf(leader)
		if err != nil {
			return err
		}
		if len(qs) == 1 && qs[0].ID == id && qs[0].Recipients[0].Attempts >= 2 && strings.Contains(qs[0].Recipients[0].LastError, "4.4.1") {
			return nil
		}
		return fmt.Errorf("queue %+v", qs)
	})
	pf := harness.StartPostfixRX(t, harness.PostfixRXOptions{IP: ip, Users: []string{"dave@later.test"}})
	waitQueueEmpty(t, leader, 30*time.Second)
	maildirCount(t, pf, "dave@later.test", 1)
}

// maildirCount waits until Postfix has stored n messages for user (it
// answers 250 before its delivery agent writes the Maildir) and checks
// that no more come.
func maildirCount(t *testing.T, pf *harness.PostfixRX, user string, n int) {
	t.Helper()
	harness.Eventually(t, 20*time.Second, fmt.Sprintf("%d messages in the Maildir of %s", n, user), func() error {
		if got := len(pf.Maildir(user)); got != n {
			return fmt.Errorf("%d messages", got)
		}
		if q := pf.QueueSize(); q != 0 {
			return fmt.Errorf("%d still in postfix's queue", q)
		}
		return nil
	})
	if got := len(pf.Maildir(user)); got != n {
		t.Fatalf("%s: %d messages, want %d", user, got, n)
	}
}
