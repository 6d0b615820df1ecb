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

// ledger runs senders against the cluster and records what it answered:
// each message is offered to one node after another, as a real MTA does
// with several MX records, until one answers 250 (acknowledged) or leaves
// its fate unknown (the DATA went and no answer came), which is never sent
// again, so that any duplicate the checker finds is the cluster's doing.
type ledger struct {
	c       *harness.Cluster
	run     string // tells this run's messages from others'
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	acks    []Ack
	unknown map[string]bool
	refused int
}

func newLedger(c *harness.Cluster) ledger {
	return ledger{c: c, unknown: map[string]bool{}, run: fmt.Sprintf("%x", rand.Uint32())}
}

// launch starts senders goroutines running send.
func (l *ledger) launch(senders int, send func(ctx context.Context, sender int)) {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for i := 0; i < senders; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			send(ctx, i)
		}()
	}
}

// offer tries the message on node first, then on the next ones, until one
// answers or ctx ends.
func (l *ledger) offer(ctx context.Context, first int, id, user string, try func(*harness.Node) (ok, ambiguous bool)) {
	for k := 0; ctx.Err() == nil; k++ {
		n := l.c.Nodes[(first+k)%len(l.c.Nodes)]
		ok, ambiguous := try(n)
		l.mu.Lock()
		switch {
		case ok:
			l.acks = append(l.acks, Ack{ID: id, User: user, Node: n.ID, At: time.Now()})
		case ambiguous:
			l.unknown[id] = true
		default:
			l.refused++
		}
		l.mu.Unlock()
		if ok || ambiguous {
			return
		}
		if (k+1)%len(l.c.Nodes) == 0 {
			pause(ctx, 50*time.Millisecond) // every node refused: a breath
		}
	}
}

// Stop ends the senders and returns what was acknowledged.
func (l *ledger) Stop() []Ack {
	l.cancel()
	l.wg.Wait()
	return l.Snapshot()
}

// Snapshot returns what has been acknowledged so far.
func (l *ledger) Snapshot() []Ack {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Ack(nil), l.acks...)
}

// Acked is how many messages were acknowledged so far.
func (l *ledger) Acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks)
}

// AckedSince counts the acknowledgements after t.
func (l *ledger) AckedSince(t time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.acks {
		if a.At.After(t) {
			n++
		}
	}
	return n
}

// Unknown reports whether a message's outcome is unknown.
func (l *ledger) Unknown(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unknown[id]
}

// Refused is how many attempts a node refused or failed.
func (l *ledger) Refused() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.refused
}

// Mail sends mail to local users through every node's MX port.
type Mail struct {
	ledger
	users []string
}

// StartMail starts senders goroutines sending to users (addresses of local
// users of the cluster). Sender i tries node i first (modulo the cluster
// size), as the many concurrent deliveries of real MTAs spread over every
// MX: a node that holds its sessions (cut off, waiting for a leader) holds
// only its own senders, and the others' acknowledgements show whether the
// cluster as a whole accepts mail.
func StartMail(c *harness.Cluster, users []string, senders int) *Mail {
	w := &Mail{ledger: newLedger(c), users: users}
	w.launch(senders, w.send)
	return w
}

func (w *Mail) send(ctx context.Context, sender int) {
	rng := rand.New(rand.NewPCG(uint64(sender), uint64(time.Now().UnixNano())))
	for seq := 0; ctx.Err() == nil; seq++ {
		id := fmt.Sprintf("<%s.%d.%d@chaos.test>", w.run, sender, seq)
		user := w.users[rng.IntN(len(w.users))]
		body := fmt.Sprintf("From: chaos@sender.test\r\nTo: %s\r\nMessage-ID: %s\r\nSubject: chaos %d/%d\r\n\r\n%s\r\n",
			user, id, sender, seq, strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20))
		w.offer(ctx, sender, id, user, func(n *harness.Node) (bool, bool) { return deliver(n, user, body) })
	}
}

// deliver sends one message to a node's MX port. ok: answered 250.
// ambiguous: the DATA was sent and no answer came.
func deliver(n *harness.Node, rcpt, body string) (ok, ambiguous bool) {
	return transact(n.Addr(harness.SMTPPort), n.IP, 3*time.Second, nil, "chaos@sender.test", rcpt, body)
}

// transact runs one SMTP transaction (EHLO, AUTH when auth is given, MAIL,
// RCPT, DATA). Like an MTA with several MX hosts, it moves on quickly
// (after dialogue) from a node that does not answer, but waits long for
// the reply to DATA: the cluster may rightly hold it while the message's
// fate is settled.
func transact(addr, host string, dialogue time.Duration, auth smtp.Auth, from, rcpt, body string) (ok, ambiguous bool) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return false, false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(dialogue))
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return false, false
	}
	if c.Hello("chaos.sender.test") != nil || (auth != nil && c.Auth(auth) != nil) || c.Mail(from) != nil || c.Rcpt(rcpt) != nil {
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
		return false, !errors.As(err, &perr)
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
