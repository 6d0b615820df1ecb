package test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryThroughRelays: mail goes through smart hosts (Postfix
// instances standing in for an ISP's relays) instead of the recipients' MX,
// which the DNS does not even have: spread over two relays at once, then
// in turn when the first is down.
func TestDeliveryThroughRelays(t *testing.T) {
	d := startDNS(t)
	users := []string{"u@faraway.test", "v@faraway.test"}
	r1 := harness.StartPostfixRX(t, harness.PostfixRXOptions{Users: users, TLS: true})
	r2 := harness.StartPostfixRX(t, harness.PostfixRXOptions{Users: users, TLS: true})
	_, leader := deliveryCluster(t, 3, d.Addr)
	relays := func(mode string, hosts ...string) string {
		var hs []map[string]any
		for _, h := range hosts {
			hs = append(hs, map[string]any{"addr": h, "tls": "require"})
		}
		b, _ := json.Marshal([]map[string]any{{"name": "isp", "mode": mode, "hosts": hs}})
		return string(b)
	}
	setDelivery(t, leader, "relays", relays("spread", r1.Addr(), r2.Addr()))
	const n = 20
	for i := 0; i < n; i++ {
		inject(t, leader, "alice@site-a.test", "u@faraway.test", message(fmt.Sprintf("spread %d", i), 1<<10))
	}
	waitQueueEmpty(t, leader, 30*time.Second)
	harness.Eventually(t, 20*time.Second, "spread over both relays", func() error {
		a, b := len(r1.Maildir("u@faraway.test")), len(r2.Maildir("u@faraway.test"))
		if a+b != n || a == 0 || b == 0 {
			return fmt.Errorf("spread: %d + %d of %d", a, b, n)
		}
		return nil
	})
	// Failover: the first relay's address answers nothing.
	down := harness.FreeLoopback(t, 25) + ":25"
	setDelivery(t, leader, "relays", relays("failover", down, r2.Addr()))
	for i := 0; i < 5; i++ {
		inject(t, leader, "alice@site-a.test", "v@faraway.test", message(fmt.Sprintf("failover %d", i), 1<<10))
	}
	waitQueueEmpty(t, leader, 30*time.Second)
	maildirCount(t, r2, "v@faraway.test", 5)
	if got := len(r1.Maildir("v@faraway.test")); got != 0 {
		t.Fatalf("failover: the first relay got %d", got)
	}
}
