package workload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// Outbound submits mail for a remote domain through every node's
// submission port (AUTH PLAIN as local users), as mail clients do, moving
// on to the next node when one refuses; the cluster queues it and delivers
// it to the remote peer (a Sink). Acknowledged means answered 250 to DATA.
type Outbound struct {
	ledger
	pass   map[string]string
	users  []string
	domain string
}

// StartOutbound starts senders submitting mail to random recipients at
// domain, each as one of the users (address -> password).
func StartOutbound(c *harness.Cluster, pass map[string]string, domain string, senders int) *Outbound {
	w := &Outbound{ledger: newLedger(c), pass: pass, users: sortedKeys(pass), domain: domain}
	w.launch(senders, w.send)
	return w
}

func (w *Outbound) send(ctx context.Context, sender int) {
	rng := rand.New(rand.NewPCG(uint64(sender), uint64(time.Now().UnixNano())))
	for seq := 0; ctx.Err() == nil; seq++ {
		id := fmt.Sprintf("<%s.out.%d.%d@chaos.test>", w.run, sender, seq)
		user := w.users[rng.IntN(len(w.users))]
		rcpt := fmt.Sprintf("r%d@%s", rng.IntN(50), w.domain)
		body := fmt.Sprintf("From: %s\r\nTo: %s\r\nMessage-ID: %s\r\nSubject: outbound %d/%d\r\n\r\nfar away\r\n",
			user, rcpt, id, sender, seq)
		w.offer(ctx, sender, id, user, func(n *harness.Node) (bool, bool) { return submit(n, user, w.pass[user], rcpt, body) })
		pause(ctx, 20*time.Millisecond) // a trickle beside the inbound load
	}
}

// plainAuth is AUTH PLAIN without net/smtp's refusal of cleartext to
// other hosts: the nodes allow it (loopback, or --allow-insecure-auth).
type plainAuth struct{ user, pass string }

func (a plainAuth) Start(*smtp.ServerInfo) (string, []byte, error) {
	return "PLAIN", []byte("\x00" + a.user + "\x00" + a.pass), nil
}

func (a plainAuth) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return nil, errors.New("unexpected challenge")
	}
	return nil, nil
}

// submit sends one message through a node's submission port, as user
// (AUTH verifies a password hash: a longer dialogue than deliver's).
func submit(n *harness.Node, user, pass, rcpt, body string) (ok, ambiguous bool) {
	return transact(n.Addr(harness.SubmissionPort), n.IP, 5*time.Second, plainAuth{user, pass}, user, rcpt, body)
}

// Sink is the remote peer: an SMTP server that takes every message and
// counts each Message-ID it receives.
type Sink struct {
	Addr string
	srv  *gosmtp.Server
	mu   sync.Mutex
	got  map[string]int
}

// StartSink listens on addr (host:port) until Close.
func StartSink(addr string) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sink: %w", err)
	}
	s := &Sink{Addr: ln.Addr().String(), got: map[string]int{}}
	s.srv = gosmtp.NewServer(gosmtp.BackendFunc(func(*gosmtp.Conn) (gosmtp.Session, error) { return sinkSession{s}, nil }))
	s.srv.Domain = "peer.test"
	s.srv.ReadTimeout, s.srv.WriteTimeout = time.Minute, time.Minute
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// Close stops the sink.
func (s *Sink) Close() { s.srv.Close() }

// Received is how many times the sink got the message with this ID.
func (s *Sink) Received(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.got[id]
}

type sinkSession struct{ s *Sink }

func (sinkSession) Reset()                                 {}
func (sinkSession) Logout() error                          { return nil }
func (sinkSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (sinkSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (x sinkSession) Data(r io.Reader) error {
	tp := textproto.NewReader(bufio.NewReader(r))
	h, err := tp.ReadMIMEHeader()
	if err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, tp.R); err != nil {
		return err
	}
	id := strings.TrimSpace(h.Get("Message-Id"))
	x.s.mu.Lock()
	x.s.got[id]++
	x.s.mu.Unlock()
	return nil
}

// OutboundResult is what CheckOutbound found.
type OutboundResult struct {
	Acked, Lost, Duplicated int
}

// CheckOutbound waits (up to wait) until every acknowledged submission has
// reached the sink, then counts those that never did and those that came
// more than once (at-least-once delivery may repeat one whose sending node
// died mid-transfer; with healthy nodes none may come twice).
func CheckOutbound(acks []Ack, sink *Sink, wait time.Duration) OutboundResult {
	deadline := time.Now().Add(wait)
	for {
		missing := 0
		for _, a := range acks {
			if sink.Received(a.ID) == 0 {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	r := OutboundResult{Acked: len(acks)}
	for _, a := range acks {
		switch sink.Received(a.ID) {
		case 0:
			r.Lost++
		case 1:
		default:
			r.Duplicated++
		}
	}
	return r
}
