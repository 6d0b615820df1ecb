package test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryBadInput: destinations that cannot work end in a report with
// a clear reason (bounced) or wait with one (deferred), never in a lost or
// duplicated message.
func TestDeliveryBadInput(t *testing.T) {
	d := startDNS(t)
	pf := harness.StartPostfixRX(t, harness.PostfixRXOptions{Users: []string{"big@small.test"}, MessageSizeLimit: 20000})
	d.setMX("small.test", "mx.small.test")
	d.setA("mx.small.test", pf.IP)
	// A remote that accepts connections and never says a word.
	silentIP := harness.FreeLoopback(t, 25)
	ln, err := net.Listen("tcp", silentIP+":25")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	d.setMX("silent.test", "mx.silent.test")
	d.setA("mx.silent.test", silentIP)
	d.setMX("nomx.test") // exists, with no MX and no address
	d.setBroken("broken.test")

	c, leader := deliveryCluster(t, 3, d.Addr)
	// MX pointing back at this cluster.
	d.setMX("loop.test", "mx.loop.test")
	d.setA("mx.loop.test", c.Nodes[1].IP)

	for _, to := range []string{"a@nomx.test", "b@loop.test", "c@nowhere.test"} {
		inject(t, leader, "alice@site-a.test", to, message("to "+to, 1<<10))
	}
	inject(t, leader, "alice@site-a.test", "big@small.test", message("too big", 50<<10))
	silent := inject(t, leader, "alice@site-a.test", "e@silent.test", message("silent", 1<<10))
	broken := inject(t, leader, "alice@site-a.test", "f@broken.test", message("broken", 1<<10))

	var reports []string
	harness.Eventually(t, 60*time.Second, "four reports", func() error {
		var err error
		reports, err = mailbox(leader, "alice@site-a.test")
		if err != nil {
			return err
		}
		if len(reports) != 4 {
			return fmt.Errorf("%d reports", len(reports))
		}
		return nil
	})
	all := strings.Join(reports, "\n")
	for _, want := range []string{
		"<a@nomx.test>: 5.1.2 domain nomx.test has no MX and no address records",
		"<b@loop.test>: 5.4.6 mail for loop.test loops back to this cluster: its MX host mx.loop.test is " + c.Nodes[1].IP,
		"<c@nowhere.test>: 5.1.2 domain nowhere.test does not exist",
		"<big@small.test>: 552 5.3.4 message size",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no report says %q", want)
		}
	}
	if n := len(pf.Maildir("big@small.test")); n != 0 {
		t.Errorf("oversize message delivered %d times", n)
	}
	harness.Eventually(t, 30*time.Second, "the silent remote and the broken DNS answer deferred with reasons", func() error {
		qs, err := queueOf(leader)
		if err != nil {
			return err
		}
		reasons := map[uint64]string{}
		for _, q := range qs {
			reasons[q.ID] = q.Recipients[0].LastError
		}
		if !strings.Contains(reasons[silent], "4.4.2") || !strings.Contains(reasons[silent], "timed out") {
			return fmt.Errorf("silent: %q", reasons[silent])
		}
		if !strings.Contains(reasons[broken], "malformed DNS answer") {
			return fmt.Errorf("broken: %q", reasons[broken])
		}
		if len(qs) != 2 {
			return fmt.Errorf("%d entries", len(qs))
		}
		return nil
	})
	leader.MustCLI("queue", "delete", "--all")
	waitQueueEmpty(t, leader, 10*time.Second)
}
