package test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/smtp"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/delivery"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// TestDeliveryBench is `make bench`'s delivery figure (scripts/bench-
// delivery.sh sets FLOTILLA_BENCH=delivery): a three-node cluster delivers
// N queued 5 KiB messages to Postfix's smtp-sink, and a Postfix instance
// relays the same N messages, queued while its delivery was deferred, to
// the same sink. Both start with a full queue; the clock runs from release
// to empty queue.
func TestDeliveryBench(t *testing.T) {
	if os.Getenv("FLOTILLA_BENCH") != "delivery" {
		t.Skip("set FLOTILLA_BENCH=delivery (make bench)")
	}
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("FLOTILLA_BENCH_MESSAGES")); err == nil && v > 0 {
		n = v
	}
	sinkIP := harness.FreeLoopback(t, 25)
	sink := exec.Command("smtp-sink", "-u", "postfix", sinkIP+":25", "1024")
	if err := sink.Start(); err != nil {
		t.Fatalf("smtp-sink: %v", err)
	}
	t.Cleanup(func() { _ = sink.Process.Kill(); _ = sink.Wait() })
	d := startDNS(t)
	d.setMX("sink.test", "mx.sink.test")
	d.setA("mx.sink.test", sinkIP)
	msg := message("bench", 5<<10)

	// Flotilla: queue N messages with delivery paused, then release.
	c, leader := deliveryCluster(t, 3, d.Addr)
	setDelivery(t, leader, "settings", `{"paused":true,"lease":"60s","per_destination":20}`)
	start := time.Now()
	parallel(t, n, 24, func(i int) error {
		nd := c.Nodes[i%3]
		q := url.Values{"from": {"alice@site-a.test"}, "to": {fmt.Sprintf("u%d@sink.test", i%50)}}
		req, _ := http.NewRequestWithContext(context.Background(), "POST", "http://"+nd.Addr(harness.HTTPPort)+"/v1/queue/inject?"+q.Encode(), strings.NewReader(msg))
		req.Header.Set("Authorization", "Bearer "+c.Token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			return fmt.Errorf("inject: %s", res.Status)
		}
		return nil
	})
	t.Logf("flotilla: %d messages queued in %s", n, time.Since(start).Round(time.Millisecond))
	before := deliveredBy(t, c)
	start = time.Now()
	setDelivery(t, leader, "settings", `{"paused":false,"lease":"60s","per_destination":20}`)
	var shares map[string]int64
	harness.Eventually(t, 10*time.Minute, "flotilla queue drained", func() error {
		shares = deliveredBy(t, c)
		total := int64(0)
		for id, v := range shares {
			total += v - before[id]
		}
		if total < int64(n) {
			return fmt.Errorf("%d of %d delivered", total, n)
		}
		return nil
	})
	flotillaTime := time.Since(start)
	if os.Getenv("FLOTILLA_BENCH_DEBUG") != "" {
		for _, nd := range c.Nodes {
			for i, l := range nd.Grep("msg=deferred") {
				if i < 5 {
					t.Log(nd.ID, l)
				}
			}
			for _, l := range nd.Grep("level=WARN") {
				if !strings.Contains(l, "raft") {
					t.Log(nd.ID, l)
				}
			}
		}
	}
	waitQueueEmpty(t, leader, time.Minute)

	// Postfix: the same messages through SMTP into its queue, delivery
	// deferred; then released and flushed.
	pf := harness.StartPostfixRX(t, harness.PostfixRXOptions{
		Relayhost: "[" + sinkIP + "]:25",
		Extra: map[string]string{
			"defer_transports":                      "smtp",
			"default_destination_concurrency_limit": "20",
			"initial_destination_concurrency":       "20",
			"in_flow_delay":                         "0",
			"smtp_dns_support_level":                "disabled",
		},
	})
	start = time.Now()
	var conns sync.Map
	parallel(t, n, 16, func(i int) error {
		wid := i % 16
		var cl *smtp.Client
		if v, ok := conns.Load(wid); ok {
			cl = v.(*smtp.Client)
		} else {
			var err error
			if cl, err = smtp.Dial(pf.Addr()); err != nil {
				return err
			}
			conns.Store(wid, cl)
		}
		if err := cl.Mail("alice@site-a.test"); err != nil {
			return err
		}
		if err := cl.Rcpt(fmt.Sprintf("u%d@sink.test", i%50)); err != nil {
			return err
		}
		w, err := cl.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write([]byte(msg)); err != nil {
			return err
		}
		return w.Close()
	}, 16)
	conns.Range(func(_, v any) bool { _ = v.(*smtp.Client).Quit(); return true })
	harness.Eventually(t, 5*time.Minute, "postfix holds every message", func() error {
		if q := pf.QueueSize(); q < n {
			return fmt.Errorf("%d queued", q)
		}
		return nil
	})
	t.Logf("postfix: %d messages queued in %s", n, time.Since(start).Round(time.Millisecond))
	start = time.Now()
	pf.Postconf("defer_transports =")
	pf.Postfix("reload")
	if out, err := exec.Command("postqueue", "-c", pf.Dir+"/conf", "-f").CombinedOutput(); err != nil {
		t.Fatalf("postqueue -f: %v %s", err, out)
	}
	harness.Eventually(t, 10*time.Minute, "postfix queue drained", func() error {
		if q := pf.QueueSize(); q > 0 {
			return fmt.Errorf("%d left", q)
		}
		return nil
	})
	postfixTime := time.Since(start)
	if os.Getenv("FLOTILLA_BENCH_DEBUG") != "" {
		lines := strings.Split(pf.Log(), "\n")
		for _, l := range lines {
			if strings.Contains(l, "status=sent") || strings.Contains(l, "warning") {
				t.Log(l)
			}
		}
	}

	fr := float64(n) / flotillaTime.Seconds()
	pr := float64(n) / postfixTime.Seconds()
	var b bytes.Buffer
	fmt.Fprintf(&b, "== delivery: %d queued 5 KiB messages to smtp-sink (60 connections each side)\n", n)
	fmt.Fprintf(&b, "flotilla (3 nodes)  %8.0f msg/s  (%s)\n", fr, flotillaTime.Round(time.Millisecond))
	fmt.Fprintf(&b, "postfix (1 host)    %8.0f msg/s  (%s)\n", pr, postfixTime.Round(time.Millisecond))
	fmt.Fprintf(&b, "ratio               %8.2fx (target >= 2x)\n", fr/pr)
	for _, nd := range c.Nodes {
		v := shares[nd.ID] - before[nd.ID]
		fmt.Fprintf(&b, "  node %s delivered %5d (%4.1f%%)\n", nd.ID, v, 100*float64(v)/float64(n))
	}
	fmt.Print(b.String())
	t.Log("\n" + b.String())
}

// deliveredBy asks every node how many recipients it delivered.
func deliveredBy(t *testing.T, c *harness.Cluster) map[string]int64 {
	out := map[string]int64{}
	for _, nd := range c.Nodes {
		var st delivery.Stats
		if err := nd.API("GET", "/v1/delivery/stats", nil, &st); err == nil {
			out[nd.ID] = st.Delivered
		}
	}
	return out
}

// parallel runs fn(0..n-1) on workers goroutines; with stride, worker w
// takes i = w, w+stride, ... (so it can keep a connection per worker).
func parallel(t *testing.T, n, workers int, fn func(int) error, stride ...int) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			if len(stride) > 0 {
				for i := w; i < n; i += stride[0] {
					if err := fn(i); err != nil {
						mu.Lock()
						first = err
						mu.Unlock()
						return
					}
				}
				return
			}
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					first = err
					mu.Unlock()
					return
				}
			}
		}(w)
	}
	wg.Wait()
	if first != nil {
		t.Fatal(first)
	}
}
