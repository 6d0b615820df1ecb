package delivery

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/flotilla-mail/flotilla/storage"
)

// fakePOP3 is a POP3 server holding messages by UIDL.
type fakePOP3 struct {
	ln   net.Listener
	mu   sync.Mutex
	msgs map[string]string
	uids []string
	retr int
}

func newFakePOP3(t *testing.T, msgs map[string]string) *fakePOP3 {
	ln, err := net.Listen("tcp", "127.0.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePOP3{ln: ln, msgs: msgs}
	for u := range msgs {
		f.uids = append(f.uids, u)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakePOP3) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	fmt.Fprintf(c, "+OK ready\r\n")
	f.mu.Lock()
	uids := append([]string(nil), f.uids...)
	f.mu.Unlock()
	dele := map[string]bool{}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f2 := strings.Fields(line)
		if len(f2) == 0 {
			continue
		}
		n := 0
		if len(f2) > 1 {
			fmt.Sscan(f2[1], &n)
		}
		switch strings.ToUpper(f2[0]) {
		case "USER":
			fmt.Fprintf(c, "+OK\r\n")
		case "PASS":
			if f2[1] != "pw" {
				fmt.Fprintf(c, "-ERR bad login\r\n")
				continue
			}
			fmt.Fprintf(c, "+OK\r\n")
		case "UIDL":
			fmt.Fprintf(c, "+OK\r\n")
			for i, u := range uids {
				fmt.Fprintf(c, "%d %s\r\n", i+1, u)
			}
			fmt.Fprintf(c, ".\r\n")
		case "RETR":
			f.mu.Lock()
			m := f.msgs[uids[n-1]]
			f.retr++
			f.mu.Unlock()
			fmt.Fprintf(c, "+OK\r\n%s.\r\n", m)
		case "DELE":
			dele[uids[n-1]] = true
			fmt.Fprintf(c, "+OK\r\n")
		case "QUIT":
			f.mu.Lock()
			var keep []string
			for _, u := range f.uids {
				if !dele[u] {
					keep = append(keep, u)
				}
			}
			f.uids = keep
			f.mu.Unlock()
			fmt.Fprintf(c, "+OK bye\r\n")
			return
		}
	}
}

func TestCollectPOP3NoDuplicates(t *testing.T) {
	e := newEnv(t, 25, testSettings)
	for _, u := range []string{"bob@local.test", "carol@local.test"} {
		e.set(KeySettings, testSettings)
		clustertestAddUser(t, e, u)
	}
	pop := newFakePOP3(t, map[string]string{
		"u1": "To: bob@local.test\r\nSubject: one\r\n\r\nbody one\r\n",
		"u2": "Delivered-To: carol@local.test\r\nTo: list@else.test\r\nSubject: two\r\n\r\n..dot-stuffed\r\n",
		"u3": "To: stranger@else.test, bob@local.test\r\nSubject: three\r\n\r\nbody\r\n",
		"u4": "To: nobody@else.test\r\nSubject: four\r\n\r\nbody\r\n",
	})
	acct := Account{Name: "isp", Protocol: "pop3", Host: pop.ln.Addr().String(), TLS: TLSNone, Username: "u", Password: "pw",
		DeliverTo: "alice@local.test", MultiDrop: true, Keep: true}
	e.set(KeyCollect, []Account{acct})
	col := NewCollector(CollectorOptions{Node: e.node, Hostname: "node.local.test"})
	cfg := e.w.config()
	for i := 0; i < 3; i++ { // polls again and again: nothing twice
		if _, err := col.Poll(context.Background(), acct, &cfg); err != nil {
			t.Fatal(err)
		}
	}
	if b, c, a := len(e.inbox("bob@local.test")), len(e.inbox("carol@local.test")), len(e.inbox("alice@local.test")); b != 2 || c != 1 || a != 1 {
		t.Fatalf("bob %d carol %d alice %d", b, c, a)
	}
	if got := e.inbox("carol@local.test")[0]; !strings.Contains(got, "\r\n.dot-stuffed") || !strings.Contains(got, "for collection account isp id u2") {
		t.Fatalf("carol's message:\n%s", got)
	}
	if pop.retr != 4 {
		t.Fatalf("%d RETR for 4 messages over three polls", pop.retr)
	}
	// Now without keep: deleted on the server and forgotten here, still
	// never stored twice.
	acct.Keep = false
	if _, err := col.Poll(context.Background(), acct, &cfg); err != nil {
		t.Fatal(err)
	}
	if len(pop.uids) != 0 {
		t.Fatalf("left on the server: %v", pop.uids)
	}
	n := 0
	_ = e.node.Store().View(func(tx *storage.Tx) error { return tx.CollectedUIDs("isp", func(string) { n++ }) })
	if n != 0 || len(e.inbox("bob@local.test")) != 2 {
		t.Fatalf("remembered %d; bob %d", n, len(e.inbox("bob@local.test")))
	}
}

// TestCollectWaitsWhileDiskLow: with the node's disk nearly full, no ISP
// mailbox is polled (the mail waits there); with room, it is collected.
func TestCollectWaitsWhileDiskLow(t *testing.T) {
	e := newEnv(t, 25, testSettings)
	pop := newFakePOP3(t, map[string]string{"u1": "To: alice@local.test\r\nSubject: one\r\n\r\nbody\r\n"})
	e.set(KeyCollect, []Account{{Name: "isp", Protocol: "pop3", Host: pop.ln.Addr().String(), TLS: TLSNone,
		Username: "u", Password: "pw", DeliverTo: "alice@local.test", Keep: true}})
	var low atomic.Bool
	low.Store(true)
	col := NewCollector(CollectorOptions{Node: e.node, Hostname: "node.local.test", DiskLow: low.Load})
	col.tick(context.Background())
	col.wg.Wait()
	pop.mu.Lock()
	retr := pop.retr
	pop.mu.Unlock()
	if retr != 0 || len(e.inbox("alice@local.test")) != 0 {
		t.Fatalf("polled with the disk low: %d RETR, %d stored", retr, len(e.inbox("alice@local.test")))
	}
	low.Store(false)
	col.tick(context.Background())
	col.wg.Wait()
	if n := len(e.inbox("alice@local.test")); n != 1 {
		t.Fatalf("%d messages collected with room, want 1", n)
	}
}
