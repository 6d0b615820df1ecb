package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryMXPreferenceAndFallback: the MX with the lowest preference is
// used whatever order the DNS answer lists them in; when it refuses
// connections the next one takes the message in the same attempt.
func TestDeliveryMXPreferenceAndFallback(t *testing.T) {
	d := startDNS(t)
	pf := harness.StartPostfixRX(t, harness.PostfixRXOptions{Users: []string{"bob@pref.test", "bob@fallback.test"}})
	backup := startSink(t, harness.FreeLoopback(t, 25))
	dead := harness.FreeLoopback(t, 25) // nothing listens there
	// pref.test: the answer lists the backup (30) before the primary (10).
	d.setMX("pref.test", "30 backup.pref.test", "10 primary.pref.test")
	d.setA("backup.pref.test", strings.Split(backup.Addr, ":")[0])
	d.setA("primary.pref.test", pf.IP)
	// fallback.test: the primary refuses connections.
	d.setMX("fallback.test", "10 dead.fallback.test", "20 second.fallback.test")
	d.setA("dead.fallback.test", dead)
	d.setA("second.fallback.test", pf.IP)
	_, leader := deliveryCluster(t, 3, d.Addr)

	for i := 0; i < 3; i++ {
		inject(t, leader, "alice@site-a.test", "bob@pref.test", message(fmt.Sprintf("pref %d", i), 1<<10))
	}
	fb := inject(t, leader, "alice@site-a.test", "bob@fallback.test", message("fallback", 1<<10))
	var attempts uint32
	harness.Eventually(t, 30*time.Second, "the fallback message delivered", func() error {
		qs, err := queueOf(leader)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.ID == fb {
				attempts = q.Recipients[0].Attempts
				return fmt.Errorf("still queued: %+v", q.Recipients)
			}
		}
		return nil
	})
	maildirCount(t, pf, "bob@pref.test", 3)
	maildirCount(t, pf, "bob@fallback.test", 1)
	if backup.count() != 0 {
		t.Errorf("the backup MX (preference 30) got %d messages while the primary accepted", backup.count())
	}
	if attempts > 0 {
		t.Errorf("the fallback message needed %d failed attempts; the second MX should take it in the first", attempts)
	}
}

// TestQueueHoldAndRelease: an operator holds a queued message through the
// CLI; it is not delivered while held, even on retry, and goes once
// released.
func TestQueueHoldAndRelease(t *testing.T) {
	d := startDNS(t)
	ip := harness.FreeLoopback(t, 25)
	d.setMX("held.test", "mx.held.test")
	d.setA("mx.held.test", ip)
	_, leader := deliveryCluster(t, 3, d.Addr)
	id := inject(t, leader, "alice@site-a.test", "erin@held.test", message("hold me", 1<<10))
	// The remote is down: the entry waits; hold it.
	harness.Eventually(t, 30*time.Second, "a failed attempt", func() error {
		q, err := queueEntry(leader, id)
		if err != nil {
			return err
		}
		if q.Recipients[0].Attempts < 1 {
			return fmt.Errorf("%+v", q.Recipients)
		}
		return nil
	})
	if out := leader.MustCLI("queue", "hold", fmt.Sprint(id)); !strings.Contains(out, "hold: 1 entries") {
		t.Fatalf("queue hold: %q", out)
	}
	if out := leader.MustCLI("queue", "show", fmt.Sprint(id)); !strings.Contains(out, "held:         yes") {
		t.Fatalf("queue show after hold:\n%s", out)
	}
	if out := leader.MustCLI("queue", "list"); !strings.Contains(out, "(held)") {
		t.Fatalf("queue list after hold:\n%s", out)
	}
	// The remote comes up, and an operator asks for a retry of everything:
	// the held entry still stays.
	pf := harness.StartPostfixRX(t, harness.PostfixRXOptions{IP: ip, Users: []string{"erin@held.test"}})
	leader.MustCLI("queue", "retry", "--all")
	before, err := queueEntry(leader, id)
	if err != nil {
		t.Fatal(err)
	}
	// Retries run every second in these settings: three seconds without an
	// attempt show the hold works (this waits for time to pass, by design).
	time.Sleep(3 * time.Second)
	q, err := queueEntry(leader, id)
	if err != nil {
		t.Fatalf("held entry gone: %v", err)
	}
	if !q.Held || q.Recipients[0].Attempts != before.Recipients[0].Attempts || len(pf.Maildir("erin@held.test")) != 0 {
		t.Fatalf("held entry was tried: %+v, Maildir %d", q, len(pf.Maildir("erin@held.test")))
	}
	if out := leader.MustCLI("queue", "release", fmt.Sprint(id)); !strings.Contains(out, "release: 1 entries") {
		t.Fatalf("queue release: %q", out)
	}
	waitQueueEmpty(t, leader, 30*time.Second)
	maildirCount(t, pf, "erin@held.test", 1)
}

func queueEntry(n *harness.Node, id uint64) (admin.QueueEntry, error) {
	var q admin.QueueEntry
	err := n.API("GET", fmt.Sprintf("/v1/queue/%d", id), nil, &q)
	return q, err
}
