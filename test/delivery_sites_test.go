package test

import (
	"encoding/json"
	"fmt"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryToAnotherSite: bob of shared.test lives at site B, another
// Flotilla cluster; site A holds shared.test too and routes bob there.
// Mail for bob sent at site A reaches his INBOX at site B with the address
// unchanged, over TLS with a client certificate; a route with a password
// is checked by B (a wrong one is refused, and the message waits); B
// relays for nobody unknown.
//
// Not shown: a route authenticating with AUTH end to end. Site B's SMTP
// listener lets an authenticated user send only as its own addresses, so
// it refuses a site link relaying other senders' mail (553 5.7.1); that
// needs a site-link permission in mail/smtp.
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
	dir := t.TempDir()
	cert, key := harness.SelfSignedPEM(t, "site-a.link")
	certFile, keyFile := filepath.Join(dir, "link.pem"), filepath.Join(dir, "link-key.pem")
	if err := os.WriteFile(certFile, []byte(cert), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	certRoute, _ := json.Marshal([]map[string]any{{"name": "site-b", "match": []string{"bob@shared.test"},
		"hosts": []map[string]any{{"addr": bn.Addr(harness.SMTPPort), "tls": "require", "cert_file": certFile, "key_file": keyFile}}}})
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
	setDelivery(t, leader, "routes", string(certRoute))
	leader.MustCLI("queue", "retry", fmt.Sprint(id))
	waitQueueEmpty(t, leader, 30*time.Second)

	var got []string
	harness.Eventually(t, 20*time.Second, "bob's INBOX at site B", func() error {
		var err error
		got, err = mailbox(bn, "bob@shared.test")
		if err != nil {
			return err
		}
		if len(got) != 1 {
			return fmt.Errorf("%d messages", len(got))
		}
		return nil
	})
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
