package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestCollectFromDovecot: a three-node cluster collects from ISP mailboxes
// on Debian's Dovecot, one POP3 account sorted by headers (multi-drop) and
// one IMAP account for one user. Each message is stored once although the
// accounts are polled many times, by whichever node owns them, and they
// are emptied on the server.
func TestCollectFromDovecot(t *testing.T) {
	dv := harness.StartDovecot(t, map[string]string{"shared": "pw-shared", "solo": "pw-solo"})
	d := startDNS(t)
	c, leader := deliveryCluster(t, 3, d.Addr)
	for _, u := range []string{"bob@site-a.test", "carol@site-a.test"} {
		if out, errOut, err := leader.CLIInput("pw\n", "user", "add", u, "--password-stdin"); err != nil {
			t.Fatalf("user add: %v %s %s", err, out, errOut)
		}
	}
	for i := 0; i < 5; i++ {
		dv.Put("shared", fmt.Sprintf("Delivered-To: bob@site-a.test\r\nFrom: x@isp.test\r\nSubject: for bob %d\r\n\r\nhello bob\r\n", i))
		dv.Put("shared", fmt.Sprintf("To: Carol <carol@site-a.test>, someone@else.test\r\nFrom: y@isp.test\r\nSubject: for carol %d\r\n\r\n.leading dot\r\n", i))
		dv.Put("solo", fmt.Sprintf("To: whoever@isp.test\r\nFrom: z@isp.test\r\nSubject: for alice %d\r\n\r\nhello\r\n", i))
	}
	dv.Put("shared", "To: stranger@else.test\r\nSubject: nobody here\r\n\r\nfalls back to alice\r\n")
	accounts := []map[string]any{
		{"name": "isp-pop", "protocol": "pop3", "host": dv.Addr("pop3"), "tls": "none", "username": "shared", "password": "pw-shared",
			"multidrop": true, "deliver_to": "alice@site-a.test", "interval": "300ms"},
		{"name": "isp-imap", "protocol": "imap", "host": dv.Addr("imap"), "tls": "none", "username": "solo", "password": "pw-solo",
			"deliver_to": "alice@site-a.test", "interval": "300ms"},
	}
	b, _ := json.Marshal(accounts)
	setDelivery(t, leader, "collect", string(b))
	if out := leader.MustCLI("delivery", "show", "collect"); strings.Contains(out, "pw-solo") || !strings.Contains(out, `"password": "(set)"`) {
		t.Fatalf("passwords shown:\n%s", out)
	}

	want := map[string]int{"bob@site-a.test": 5, "carol@site-a.test": 5, "alice@site-a.test": 6}
	harness.Eventually(t, 60*time.Second, "collected mail in the mailboxes", func() error {
		for u, n := range want {
			ms, err := mailbox(leader, u)
			if err != nil {
				return err
			}
			if len(ms) != n {
				return fmt.Errorf("%s has %d, want %d", u, len(ms), n)
			}
		}
		if dv.Count("shared")+dv.Count("solo") != 0 {
			return fmt.Errorf("still on the server: %d + %d", dv.Count("shared"), dv.Count("solo"))
		}
		return nil
	})
	// Many more polls go by; nothing comes twice.
	time.Sleep(2 * time.Second)
	seen := map[string]bool{}
	for u, n := range want {
		ms, err := mailbox(c.Nodes[2], u)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != n {
			t.Fatalf("%s has %d after more polls, want %d", u, len(ms), n)
		}
		for _, m := range ms {
			s := header(m, "Subject")
			if seen[s] {
				t.Errorf("%q stored twice", s)
			}
			seen[s] = true
			if !strings.Contains(m, "(Flotilla) with ") {
				t.Errorf("no trace header:\n%s", m)
			}
		}
	}
	// A node dies and comes back while new mail arrives: still once each.
	victim := c.Nodes[0]
	if victim == leader {
		victim = c.Nodes[1]
	}
	victim.Kill()
	for i := 0; i < 3; i++ {
		dv.Put("solo", fmt.Sprintf("To: whoever@isp.test\r\nSubject: late %d\r\n\r\nhello\r\n", i))
	}
	victim.Start()
	want["alice@site-a.test"] += 3
	harness.Eventually(t, 60*time.Second, "late mail collected once", func() error {
		ms, err := mailbox(leader, "alice@site-a.test")
		if err != nil {
			return err
		}
		if len(ms) != want["alice@site-a.test"] || dv.Count("solo") != 0 {
			return fmt.Errorf("alice has %d, want %d; %d on the server", len(ms), want["alice@site-a.test"], dv.Count("solo"))
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	harness.Eventually(t, 30*time.Second, "the restarted node agrees", func() error {
		ms, err := mailbox(victim, "alice@site-a.test")
		if err != nil {
			return err
		}
		if len(ms) != want["alice@site-a.test"] {
			return fmt.Errorf("after the restart alice has %d, want %d", len(ms), want["alice@site-a.test"])
		}
		return nil
	})
	var st []admin.CollectStatus
	if err := leader.API("GET", "/v1/delivery/collect/status", nil, &st); err != nil || len(st) != 2 {
		t.Fatalf("collect status %+v %v", st, err)
	}
}
