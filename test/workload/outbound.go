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
	c       *harness.Cluster
	pass    map[string]string
	users   []string
	domain  string
	run     string
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	acks    []Ack
	unknown map[string]bool
}

// StartOutbound starts senders submitting mail to random recipients at
// domain, each as one of the users (address -> password).
func StartOutbound(c *harness.Cluster, pass map[string]string, domain string, senders int) *Outbound {
	ctx, cancel := context.WithCancel(context.Background())
	w := &Outbound{c: c, pass: pass, users: sortedKeys(pass), domain: domain, cancel: cancel,
		unknown: map[string]bool{}, run: fmt.Sprintf("%x", rand.Uint32())}
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
func (w *Outbound) Stop() []Ack {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Ack(nil), w.acks...)
}

// Acked is how many submissions were acknowledged so far.
func (w *Outbound) Acked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acks)
}

// Unknown reports whether a submission's outcome is unknown.
func (w *Outbound) Unknown(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.unknown[id]
}

func (w *Outbound) send(ctx context.Context, sender int) {
	rng := rand.New(rand.NewPCG(uint64(sender), uint64(time.Now().UnixNano())))
	for seq := 0; ctx.Err() == nil; seq++ {
		id := fmt.Sprintf("<%s.out.%d.%d@chaos.test>", w.run, sender, seq)
		user := w.users[rng.IntN(len(w.users))]
		rcpt := fmt.Sprintf("r%d@%s", rng.IntN(50), w.domain)
		body := fmt.Sprintf("From: %s\r\nTo: %s\r\nMessage-ID: %s\r\nSubject: outbound %d/%d\r\n\r\nfar away\r\n",
			user, rcpt, id, sender, seq)
		sent := false
		for try := 0; !sent && ctx.Err() == nil; try++ {
			n := w.c.Nodes[(sender+try)%len(w.c.Nodes)]
			ok, ambiguous := submit(n, user, w.pass[user], rcpt, body)
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
				sent = true // never resend what may have been queued
			case (try+1)%len(w.c.Nodes) == 0:
				pause(ctx, 50*time.Millisecond)
			}
		}
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

// submit sends one message through a node's submission port.
func submit(n *harness.Node, user, pass, rcpt, body string) (ok, ambiguous bool) {
	conn, err := net.DialTimeout("tcp", n.Addr(harness.SubmissionPort), 2*time.Second)
	if err != nil {
		return false, false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := smtp.NewClient(conn, n.IP)
	if err != nil {
		return false, false
	}
	if c.Hello("client.test") != nil || c.Auth(plainAuth{user, pass}) != nil || c.Mail(user) != nil || c.Rcpt(rcpt) != nil {
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
		var perr *textproto.Error
		return false, !errors.As(err, &perr)
	}
	_ = c.Quit()
	return true, false
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
