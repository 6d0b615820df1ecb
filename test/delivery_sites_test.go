package test

import (
	"encoding/json"
	"fmt"
	"net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryToAnotherSite: bob of shared.test lives at site B, another
// Flotilla cluster; site A holds shared.test too and routes bob there.
// Mail for bob reaches his INBOX at site B with the address unchanged,
// whether it was injected at site A or sent to site A over SMTP (A accepts
// bob although he has no account there), over TLS with the link's AUTH; a
// wrong password is refused by B (the message waits); B relays for nobody
// unknown.
func TestDeliveryToAnotherSite(t *testing.T) {
	d := startDNS(t)
	b := harness.New(t, harness.Options{Nodes: 1})
	bn := b.WaitLeader(60 * time.Second)
	bn.MustCLI("domain", "add", "shared.test")
	for _, u := range []string{"bob@shared.test", "link@shared.test"} {
		if out, errOut, err := bn.CLIInput("pw-"+strings.Split(u, "@")[0]+"\n", "user", "add", u, "--password-stdin"); err != nil {
			t.Fatalf("site B user add: %v %s %s", err, out, errOut)
		}
	}

	a, leader := deliveryCluster(t, 3, d.Addr)
	leader.MustCLI("domain", "add", "shared.test")
	if out, errOut, err := leader.CLIInput("pw\n", "user", "add", "carol@shared.test", "--password-stdin"); err != nil {
		t.Fatalf("user add: %v %s %s", err, out, errOut)
	}
	route := func(password string) string {
		r, _ := json.Marshal([]map[string]any{{"name": "site-b", "match": []string{"bob@shared.test", "*@b.shared.test"},
			"hosts": []map[string]any{{"addr": bn.Addr(harness.SMTPPort), "tls": "require", "username": "link@shared.test", "password": password}}}})
		return string(r)
	}
	// An open route (no credentials) is refused.
	open := `[{"name":"x","match":["@y.test"],"hosts":[{"addr":"127.0.0.1:25","tls":"require"}]}]`
	if _, errOut, err := leader.CLIInput(open, "delivery", "set", "routes"); err == nil || !strings.Contains(errOut, "never open") {
		t.Fatalf("unauthenticated route accepted: %v %s", err, errOut)
	}
	// Wrong password first: the message waits, saying why.
	setDelivery(t, leader, "routes", route("wrong"))
	id := inject(t, a.Nodes[1], "alice@site-a.test", "bob@shared.test,carol@shared.test", message("to bob at site B", 2<<10))
	harness.Eventually(t, 30*time.Second, "refused authentication recorded", func() error {
		qs, err := queueOf(leader)
		if err != nil {
			return err
		}
		if len(qs) == 1 && qs[0].ID == id && strings.Contains(qs[0].Recipients[0].LastError, "authentication as link@shared.test") {
			return nil
		}
		return fmt.Errorf("queue %+v", qs)
	})
	if out := leader.MustCLI("delivery", "show", "routes"); strings.Contains(out, `"wrong"`) {
		t.Fatalf("password shown:\n%s", out)
	}
	setDelivery(t, leader, "routes", route("pw-link"))
	leader.MustCLI("queue", "retry", fmt.Sprint(id))
	waitQueueEmpty(t, leader, 30*time.Second)
	// Sent to site A over SMTP: A takes bob (routed) and passes him on.
	sendSMTP(t, a.Nodes[2], "dave@elsewhere.test", "bob@shared.test", "Subject: over smtp to site A\r\n\r\nhello bob\r\n")

	var got []string
	harness.Eventually(t, 20*time.Second, "bob's INBOX at site B", func() error {
		var err error
		got, err = mailbox(bn, "bob@shared.test")
		if err != nil {
			return err
		}
		if len(got) != 2 {
			return fmt.Errorf("%d messages", len(got))
		}
		return nil
	})
	if !strings.Contains(got[0]+got[1], "Subject: over smtp to site A") {
		t.Errorf("the message sent to site A over SMTP did not reach bob at site B")
	}
	m := got[0]
	for _, want := range []string{"Subject: to bob at site B", "for <bob@shared.test>", "(Flotilla) via the admin API"} {
		if !strings.Contains(m, want) {
			t.Errorf("bob's message lacks %q:\n%s", want, m[:min(len(m), 1200)])
		}
	}
	if ms, err := mailbox(leader, "carol@shared.test"); err != nil || len(ms) != 1 {
		t.Fatalf("carol at site A: %d %v", len(ms), err)
	}
	// Site B is no open relay: without authentication it takes mail for
	// its own users only.
	c, err := smtp.Dial(bn.Addr(harness.SMTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("someone@site-a.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("victim@elsewhere.test"); err == nil || !strings.HasPrefix(err.Error(), "5") {
		t.Fatalf("site B relayed without authentication: %v", err)
	}
}

// sendSMTP sends one message to a node's MX port, as a plain MTA would.
func sendSMTP(t *testing.T, n *harness.Node, from, to, msg string) {
	t.Helper()
	c, err := smtp.Dial(n.Addr(harness.SMTPPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail(from); err != nil {
		t.Fatalf("MAIL through %s: %v", n.ID, err)
	}
	if err := c.Rcpt(to); err != nil {
		t.Fatalf("RCPT %s through %s: %v", to, n.ID, err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("DATA through %s: %v", n.ID, err)
	}
	_ = c.Quit()
}
