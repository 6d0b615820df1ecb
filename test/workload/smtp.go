// Package workload drives a test cluster the way its users would, records
// what the cluster acknowledged, and checks afterwards that nothing
// acknowledged was lost or duplicated.
package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/smtp"
	"net/textproto"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// Ack is a message a node answered 250 to.
type Ack struct {
	ID   string // Message-ID, unique per message
	User string
	Node string
	At   time.Time
}

// Mail sends mail to every node over SMTP (the MX port), as a real MTA
// would with several MX records: a node that refuses or cannot be reached
// is skipped for the next. A message whose fate is unknown (the connection
// broke after DATA) is not sent again, so any duplicate the checker finds is
// the cluster's doing.
type Mail struct {
	c       *harness.Cluster
	users   []string
	run     string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	acks    []Ack
	unknown map[string]bool
	refused int
}

// StartMail starts senders goroutines sending to users (addresses of local
// users of the cluster). Sender i tries node i first (modulo the cluster
// size), as the many concurrent deliveries of real MTAs spread over every
// MX: a node that holds its sessions (cut off, waiting for a leader) holds
// only its own senders, and the others' acknowledgements show whether the
// cluster as a whole accepts mail.
func StartMail(c *harness.Cluster, users []string, senders int) *Mail {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Mail{c: c, users: users, cancel: cancel, unknown: map[string]bool{},
		run: fmt.Sprintf("%x", rand.Uint32())}
	for i := 0; i < senders; i++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.send(ctx, i)
		}()
	}
	return w
}

// Stop ends the senders and returns what was acknowledged.
func (w *Mail) Stop() []Ack {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// Snapshot returns what has been acknowledged so far.
func (w *Mail) Snapshot() []Ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// AckedSince counts acknowledgements after t.
func (w *Mail) AckedSince(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, a := range w.acks {
		if a.At.After(t) {
			n++
		}
	}
	return n
}

// Unknown reports whether a message's outcome is unknown.
func (w *Mail) Unknown(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.unknown[id]
}

// Refused is how many attempts a node refused or failed.
func (w *Mail) Refused() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.refused
}

func (w *Mail) send(ctx context.Context, sender int) {
	rng := rand.New(rand.NewPCG(uint64(sender), uint64(time.Now().UnixNano())))
	for seq := 0; ctx.Err() == nil; seq++ {
		id := fmt.Sprintf("<%s.%d.%d@chaos.test>", w.run, sender, seq)
		user := w.users[rng.IntN(len(w.users))]
		body := fmt.Sprintf("From: chaos@sender.test\r\nTo: %s\r\nMessage-ID: %s\r\nSubject: chaos %d/%d\r\n\r\n%s\r\n",
			user, id, sender, seq, strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20))
		start := sender
		sent := false
		for try := 0; !sent && ctx.Err() == nil; try++ {
			n := w.c.Nodes[(start+try)%len(w.c.Nodes)]
			ok, ambiguous := deliver(n, user, body)
			switch {
			case ok:
				w.mu.Lock()
				w.acks = append(w.acks, Ack{ID: id, User: user, Node: n.ID, At: time.Now()})
				w.mu.Unlock()
				sent = true
			case ambiguous:
				w.mu.Lock()
				w.unknown[id] = true
				w.mu.Unlock()
				sent = true // never resend a message that may have been stored
			default:
				w.mu.Lock()
				w.refused++
				w.mu.Unlock()
				if (try+1)%len(w.c.Nodes) == 0 {
					select {
					case <-ctx.Done():
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		}
	}
}

// deliver sends one message to a node. ok: answered 250. ambiguous: the
// DATA was sent and no answer came.
func deliver(n *harness.Node, rcpt, body string) (ok, ambiguous bool) {
	// Like an MTA with several MX hosts, move on quickly from a node that
	// does not answer the dialogue, but wait long for the reply to DATA: the
	// cluster may rightly hold it while the message's fate is settled.
	conn, err := net.DialTimeout("tcp", n.Addr(harness.SMTPPort), 2*time.Second)
	if err != nil {
		return false, false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	c, err := smtp.NewClient(conn, n.IP)
	if err != nil {
		return false, false
	}
	if c.Hello("chaos.sender.test") != nil || c.Mail("chaos@sender.test") != nil || c.Rcpt(rcpt) != nil {
		return false, false
	}
	wc, err := c.Data()
	if err != nil {
		return false, false
	}
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := wc.Write([]byte(body)); err != nil {
		return false, true
	}
	if err := wc.Close(); err != nil {
		// A reply that is not 250 means not stored; no reply at all means
		// we cannot know.
		var perr *textproto.Error
		if errors.As(err, &perr) {
			return false, false
		}
		return false, true
	}
	_ = c.Quit()
	return true, false
}

// MaxGap is the longest time between from and to during which no node
// acknowledged any message.
func MaxGap(acks []Ack, from, to time.Time) time.Duration {
	gap, _ := MaxGapAt(acks, from, to)
	return gap
}

// MaxGapAt is MaxGap and the moment that gap began.
func MaxGapAt(acks []Ack, from, to time.Time) (time.Duration, time.Time) {
	times := []time.Time{from}
	for _, a := range acks {
		if a.At.After(from) && a.At.Before(to) {
			times = append(times, a.At)
		}
	}
	times = append(times, to)
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	var gap time.Duration
	at := from
	for i := 1; i < len(times); i++ {
		if d := times[i].Sub(times[i-1]); d > gap {
			gap, at = d, times[i-1]
		}
	}
	return gap, at
}
