package imap

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

// storeOnly serves reads from a store filled directly, for read-path tests
// at sizes that would take minutes to put through Raft.
type storeOnly struct{ st *storage.Store }

func (c storeOnly) Store() *storage.Store { return c.st }
func (c storeOnly) Propose(context.Context, command.Command) (command.Response, uint64, error) {
	return command.Response{}, 0, cluster.ErrUnavailable
}
func (c storeOnly) ProposeCommitted(context.Context, command.Command) (uint64, error) {
	return 0, cluster.ErrUnavailable
}
func (c storeOnly) WaitApplied(context.Context, uint64) error { return nil }

// bigMailbox makes a store whose user alice has n messages in INBOX. The
// messages share one body; their headers differ (in the per-message prefix).
func bigMailbox(t testing.TB, n int) *storage.Store {
	t.Helper()
	st, err := storage.Open(filepath.Join(t.TempDir(), "state.db"), storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	body := []byte("Content-Type: text/plain\r\n\r\n" + string(make([]byte, 0)) + "A body line that is the same in every message.\r\n")
	h, z := st.Compress(body)
	var mbID uint64
	seq := uint64(1)
	err = st.Update(func(tx *storage.Tx) error {
		tx.SetClock(seq, time.Now())
		if _, err := tx.AddDomain("example.org"); err != nil {
			return err
		}
		u, err := tx.AddUser(storage.User{Address: "alice@example.org", Secrets: testSecrets(t)})
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		mbID = mb.ID
		if err != nil {
			return err
		}
		return tx.PutBlob(h, z)
	})
	if err != nil {
		t.Fatal(err)
	}
	for done := 0; done < n; {
		seq++
		err := st.Update(func(tx *storage.Tx) error {
			tx.SetClock(seq, time.Now())
			for i := 0; i < 5000 && done < n; i++ {
				done++
				prefix := fmt.Sprintf("From: Sender %d <s%d@example.net>\r\nTo: alice@example.org\r\nSubject: message %d\r\nDate: Wed, 1 May 2024 12:00:00 +0000\r\nMessage-Id: <m%d@example.net>\r\n", done, done, done, done)
				if _, err := tx.AppendMessage(mbID, storage.Message{Blob: h, Prefix: []byte(prefix), Size: int64(len(prefix) + len(body))}, false); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func serveStore(t testing.TB, st *storage.Store) string {
	t.Helper()
	srv := &Server{Cluster: storeOnly{st}, Mechanisms: &auth.Mechanisms{Lookup: Lookup(st), DecoyParams: auth.TestParams()}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(context.Background(), ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ln.Addr().String()
}

// selectNewest50 is what a mail client does on opening a big folder: a new
// session, SELECT, and the headers of the newest 50 messages.
func selectNewest50(t testing.TB, addr string) (time.Duration, []*imapclient.FetchMessageBuffer) {
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice@example.org", testPassword).Wait(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	n := sel.NumMessages
	msgs, err := c.Fetch(seqRange(n-49, n), &goimap.FetchOptions{
		UID: true, Flags: true, RFC822Size: true, Envelope: true,
		BodySection: []*goimap.FetchItemBodySection{{Specifier: goimap.PartSpecifierHeader, HeaderFields: []string{"From", "Subject", "Date"}, Peek: true}},
	}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	return time.Since(start), msgs
}

func TestIMAPLargeMailboxSelect(t *testing.T) {
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	st := bigMailbox(t, n)
	addr := serveStore(t, st)
	best := time.Hour
	for i := 0; i < 3; i++ {
		d, msgs := selectNewest50(t, addr)
		if len(msgs) != 50 || msgs[49].UID != goimap.UID(n) || msgs[49].Envelope.Subject != fmt.Sprintf("message %d", n) {
			t.Fatalf("newest 50: %d messages, last %+v", len(msgs), msgs[len(msgs)-1])
		}
		best = min(best, d)
	}
	t.Logf("SELECT + header FETCH of the newest 50 of %d: %v", n, best)
	limit := 50 * time.Millisecond
	if raceEnabled {
		limit = 500 * time.Millisecond
	}
	if best > limit {
		t.Fatalf("SELECT + FETCH newest 50 of %d took %v, over %v", n, best, limit)
	}
}

func BenchmarkIMAPSelectNewest50(b *testing.B) {
	st := bigMailbox(b, 100_000)
	addr := serveStore(b, st)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		selectNewest50(b, addr)
	}
}

func seqRange(lo, hi uint32) goimap.SeqSet {
	var s goimap.SeqSet
	s.AddRange(lo, hi)
	return s
}

func benchClient(b *testing.B, n int) *imapclient.Client {
	st := bigMailbox(b, n)
	addr := serveStore(b, st)
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	if err := c.Login("alice@example.org", testPassword).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	return c
}

func BenchmarkIMAPFetchHeaders20(b *testing.B) {
	c := benchClient(b, 300)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var set goimap.UIDSet
		lo := goimap.UID(1 + i%280)
		set.AddRange(lo, lo+19)
		if _, err := c.Fetch(set, &goimap.FetchOptions{UID: true, Flags: true, Envelope: true, RFC822Size: true,
			BodySection: []*goimap.FetchItemBodySection{{Specifier: goimap.PartSpecifierHeader, HeaderFields: []string{"From", "To", "Subject", "Date"}, Peek: true}}}).Collect(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkIMAPSearchSubject(b *testing.B) {
	c := benchClient(b, 300)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.UIDSearch(&goimap.SearchCriteria{Header: []goimap.SearchCriteriaHeaderField{{Key: "Subject", Value: "message 12"}}}, nil).Wait(); err != nil {
			b.Fatal(err)
		}
	}
}

// distinctMailbox is bigMailbox with a body of its own for every message,
// as in a real mailbox.
func distinctMailbox(t testing.TB, n int) *storage.Store {
	st := bigMailbox(t, 0)
	err := st.Update(func(tx *storage.Tx) error {
		tx.SetClock(1000, time.Now())
		u, err := tx.User("alice@example.org")
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		if err != nil {
			return err
		}
		for i := 1; i <= n; i++ {
			var b strings.Builder
			b.WriteString(testMessage(i))
			for l := 0; l < 30; l++ {
				fmt.Fprintf(&b, "Line %d of message %d: the quick brown fox jumps over the lazy dog.\r\n", l, i)
			}
			body := []byte(b.String())
			h, z := st.Compress(body)
			if err := tx.PutBlob(h, z); err != nil {
				return err
			}
			flags := []string(nil)
			if i%7 == 0 {
				flags = []string{`\Flagged`}
			}
			if _, err := tx.AppendMessage(mb.ID, storage.Message{Blob: h, Size: int64(len(body)), Flags: flags}, false); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func BenchmarkIMAPSearchDistinct(b *testing.B) {
	addr := serveStore(b, distinctMailbox(b, 300))
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("alice@example.org", testPassword).Wait(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		crit := &goimap.SearchCriteria{Flag: []goimap.Flag{goimap.FlagFlagged}}
		if i%2 == 1 {
			crit = &goimap.SearchCriteria{Header: []goimap.SearchCriteriaHeaderField{{Key: "Subject", Value: "message 12"}}}
		}
		if _, err := c.UIDSearch(crit, nil).Wait(); err != nil {
			b.Fatal(err)
		}
	}
}
