package main

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// smtpIngest runs Postfix's smtp-source against Postfix (virtual Maildir
// delivery), a one-node Flotilla and a three-node Flotilla cluster, side by
// side, and reports messages per second until every message is stored.
func smtpIngest(t *harness.Runner, sessions, messages, size int, only string) {
	if _, err := exec.LookPath("smtp-source"); err != nil {
		t.Fatalf("smtp-source (package postfix) is not installed")
	}
	type result struct {
		name string
		rate float64
	}
	var results []result

	if only == "" || only == "postfix" {
		p := harness.StartPostfixRX(t, harness.PostfixRXOptions{Users: []string{"user@bench.test"},
			Extra: map[string]string{"default_process_limit": "100"}})
		took := source(t, []string{p.Addr()}, "user@bench.test", sessions, messages, size, func() int {
			return len(p.Maildir("user@bench.test"))
		})
		results = append(results, result{"postfix (virtual Maildir)", float64(messages) / took.Seconds()})
	}

	for _, nodes := range []int{1, 3} {
		if only != "" && only != fmt.Sprint(nodes) {
			continue
		}
		c := setup(t, nodes)
		if path := os.Getenv("BENCH_PROFILE"); path != "" {
			go func() {
				time.Sleep(3 * time.Second)
				n := c.WaitLeader(time.Minute)
				if os.Getenv("BENCH_PROFILE_ALL") != "" { // every other node too, to path.<id>
					for _, o := range c.Nodes {
						if o != n {
							go fetchProfile(c, o, path+"."+o.ID)
						}
					}
				}
				if os.Getenv("BENCH_PROFILE_FOLLOWER") != "" && nodes > 1 {
					n = c.Followers(n)[0]
				}
				fetchProfile(c, n, path)
			}()
		}
		var addrs []string
		for _, n := range c.Nodes {
			addrs = append(addrs, n.Addr(harness.SMTPPort))
		}
		took := source(t, addrs, "user@example.org", sessions, messages, size, func() int {
			// Stored means stored on every node.
			least := messages
			for _, n := range c.Nodes {
				var mbs []admin.Mailbox
				if err := n.API("GET", "/v1/users/user@example.org/mailboxes?stale=1", nil, &mbs); err != nil {
					return 0
				}
				for _, mb := range mbs {
					if mb.Name == "INBOX" {
						least = min(least, int(mb.Messages))
					}
				}
			}
			return least
		})
		results = append(results, result{fmt.Sprintf("flotilla, %d node(s)", nodes), float64(messages) / took.Seconds()})
		if os.Getenv("BENCH_METRICS") != "" {
			dumpMetrics(c)
		}
		for _, n := range c.Nodes {
			n.Stop()
		}
	}
	for _, r := range results {
		ratio := ""
		if only == "" {
			ratio = fmt.Sprintf("  (%.2fx Postfix)", r.rate/results[0].rate)
		}
		fmt.Printf("smtp ingest  %-27s %d sessions, %d x %d B: %7.0f messages/s%s\n",
			r.name, sessions, messages, size, r.rate, ratio)
	}
}

// source sends messages with smtp-source, its sessions spread over addrs,
// and returns the time until stored() reports them all.
func source(t *harness.Runner, addrs []string, rcpt string, sessions, messages, size int, stored func() int) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	for i, addr := range addrs {
		s := sessions / len(addrs)
		m := messages / len(addrs)
		if i == 0 {
			s += sessions % len(addrs)
			m += messages % len(addrs)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command("smtp-source", "-s", fmt.Sprint(s), "-m", fmt.Sprint(m), "-l", fmt.Sprint(size),
				"-f", "bench@sender.test", "-t", rcpt, "-M", "bench.sender.test", addr)
			cmd.Stderr = os.Stderr
			if out, err := cmd.Output(); err != nil {
				t.Fatalf("smtp-source %s: %v %s", addr, err, out)
			}
		}()
	}
	wg.Wait()
	for n := stored(); n < messages; n = stored() {
		if time.Since(start) > 30*time.Minute {
			t.Fatalf("only %d of %d messages stored", n, messages)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}
