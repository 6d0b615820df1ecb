package workload

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// POP3 runs POP3 sessions that log in, list the unique-ids, retrieve a
// message and QUIT, deleting nothing (so the SMTP checker's messages stay).
// While a session holds a maildrop, a second session for the same user on
// another node must be refused with -ERR [IN-USE]. Every UIDL must name
// the same message (Message-ID) in every session, on every node, for ever;
// a listing's UIDs strictly increase, under one UIDVALIDITY.
type POP3 struct {
	c      *harness.Cluster
	users  []string
	pass   map[string]string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	problems problems
	uidls    map[string]string // user + " " + unique-id -> Message-ID
	validity map[string]string // user -> UIDVALIDITY of the unique-ids
	res      POP3Result
}

// POP3Result is what the POP3 sessions did and found.
type POP3Result struct {
	Sessions  int // logged in and QUIT cleanly
	Retrieved int // messages retrieved and checked
	InUse     int // logins refused with [IN-USE], as they must be while another session holds the maildrop
	Refused   int // other refusals or failures (faults)
	// Reasons counts the other refusals by what was answered.
	Reasons  map[string]int
	Problems []string
}

// StartPOP3 starts sessions POP3 sessions on the users (address ->
// password). Session i starts on node i (modulo the cluster size) and
// moves to the next node after each round.
func StartPOP3(c *harness.Cluster, users map[string]string, sessions int) *POP3 {
	ctx, cancel := context.WithCancel(context.Background())
	w := &POP3{c: c, pass: users, users: sortedKeys(users), cancel: cancel, uidls: map[string]string{}, validity: map[string]string{}}
	for i := 0; i < sessions; i++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			for k := 0; ctx.Err() == nil; k++ {
				w.round(ctx, rng, i+k, w.users[rng.IntN(len(w.users))])
				pause(ctx, 100*time.Millisecond)
			}
		}()
	}
	return w
}

// Stop ends the sessions and returns what they found.
func (w *POP3) Stop() POP3Result {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.res
	r.Reasons = map[string]int{}
	for k, v := range w.res.Reasons {
		r.Reasons[k] = v
	}
	r.Problems = w.problems.all()
	return r
}

// Retrieved counts the messages retrieved and checked so far.
func (w *POP3) Retrieved() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.res.Retrieved
}

func (w *POP3) count(f func(r *POP3Result)) {
	w.mu.Lock()
	f(&w.res)
	w.mu.Unlock()
}

// refused counts a refusal or failure, by its reason.
func (w *POP3) refused(node, what, reply string, err error) {
	why := reply
	if err != nil {
		why = err.Error()
		if i := strings.LastIndex(why, ": "); i >= 0 {
			why = why[i+2:] // "i/o timeout", "connection refused", ...
		}
	}
	if len(why) > 60 {
		why = why[:60]
	}
	w.mu.Lock()
	w.res.Refused++
	if w.res.Reasons == nil {
		w.res.Reasons = map[string]int{}
	}
	w.res.Reasons[what+": "+why]++
	w.mu.Unlock()
}

func (w *POP3) problem(format string, args ...any) {
	w.mu.Lock()
	w.problems.add(fmt.Sprintf(format, args...))
	w.mu.Unlock()
}

// popClient is a POP3 connection.
type popClient struct {
	node string
	conn net.Conn
	r    *bufio.Reader
	stop func() bool
}

func (c *popClient) close() {
	c.stop()
	c.conn.Close()
}

func popConnect(ctx context.Context, n *harness.Node) (*popClient, error) {
	conn, err := net.DialTimeout("tcp", n.Addr(harness.POP3Port), 2*time.Second)
	if err != nil {
		return nil, err
	}
	c := &popClient{node: n.ID, conn: conn, r: bufio.NewReader(conn)}
	c.stop = context.AfterFunc(ctx, func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	g, err := c.line()
	if err != nil {
		c.close()
		return nil, err
	}
	if !strings.HasPrefix(g, "+OK") {
		c.close()
		return nil, fmt.Errorf("greeting %q", g)
	}
	return c, nil
}

func (c *popClient) line() (string, error) {
	l, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(l, "\r\n"), nil
}

// cmd sends a command and returns the status line. A command may wait for
// an election (PASS takes the maildrop lock through the log).
func (c *popClient) cmd(line string) (string, error) {
	_ = c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c.conn, line+"\r\n"); err != nil {
		return "", err
	}
	return c.line()
}

// multi sends a command with a multi-line answer and returns its lines,
// dot-unstuffed, and the status line.
func (c *popClient) multi(line string) (lines []string, status string, err error) {
	status, err = c.cmd(line)
	if err != nil || !strings.HasPrefix(status, "+OK") {
		return nil, status, err
	}
	for {
		l, err := c.line()
		if err != nil {
			return nil, status, err
		}
		if l == "." {
			return lines, status, nil
		}
		lines = append(lines, strings.TrimPrefix(l, "."))
	}
}

// login sends USER and PASS and returns the reply to PASS.
func (c *popClient) login(user, pass string) (string, error) {
	r, err := c.cmd("USER " + user)
	if err != nil || !strings.HasPrefix(r, "+OK") {
		return r, err
	}
	return c.cmd("PASS " + pass)
}

// round is one session on node k (modulo the cluster size): log in, try a
// second login on the next node while holding the maildrop, list,
// retrieve one message, QUIT.
func (w *POP3) round(ctx context.Context, rng *rand.Rand, k int, user string) {
	nodes := w.c.Nodes
	a := nodes[k%len(nodes)]
	ca, err := popConnect(ctx, a)
	if err != nil {
		w.refused(a.ID, "connect", "", err)
		return
	}
	defer ca.close()
	passSent := time.Now()
	r, err := ca.login(user, w.pass[user])
	switch {
	case err != nil:
		w.refused(a.ID, "login", r, err)
		return
	case strings.HasPrefix(r, "-ERR [IN-USE]"):
		// Another session holds it (ours, or one on a node that died, whose
		// lease has not lapsed yet).
		w.count(func(r *POP3Result) { r.InUse++ })
		return
	case !strings.HasPrefix(r, "+OK"):
		w.refused(a.ID, "login", r, nil)
		return
	}

	// We hold the maildrop: a login elsewhere must be refused.
	if len(nodes) > 1 {
		b := nodes[(k+1)%len(nodes)]
		if cb, err := popConnect(ctx, b); err != nil {
			w.refused(b.ID, "second connect", "", err)
		} else {
			rb, err := cb.login(user, w.pass[user])
			switch {
			case err != nil:
				w.refused(b.ID, "second login", rb, err)
			case strings.HasPrefix(rb, "-ERR [IN-USE]"):
				w.count(func(r *POP3Result) { r.InUse++ })
			case strings.HasPrefix(rb, "+OK"):
				// Only a violation if the first session surely still held
				// its lease (60 s from after passSent) and is alive now.
				took := time.Since(passSent)
				if noop, err := ca.cmd("NOOP"); err == nil && strings.HasPrefix(noop, "+OK") && took < 50*time.Second {
					w.problem("POP3 %s: logged in on %s while a session on %s held the maildrop (locked %s before)", user, b.ID, a.ID, took.Round(time.Millisecond))
				}
				_, _ = cb.cmd("QUIT")
			default:
				w.refused(b.ID, "second login", rb, nil)
			}
			cb.close()
		}
	}

	lines, status, err := ca.multi("UIDL")
	if err != nil || !strings.HasPrefix(status, "+OK") {
		w.refused(a.ID, "UIDL", status, err)
		return
	}
	type entry struct {
		num int
		uid string
	}
	var list []entry
	var lastNum int
	var lastUID uint64
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			w.problem("POP3 %s on %s: UIDL line %q", user, a.ID, l)
			continue
		}
		num, err := strconv.Atoi(f[0])
		validity, uidText, dot := strings.Cut(f[1], ".")
		uid, uerr := strconv.ParseUint(uidText, 10, 32)
		if err != nil || !dot || uerr != nil {
			w.problem("POP3 %s on %s: UIDL line %q is not \"n UIDVALIDITY.UID\"", user, a.ID, l)
			continue
		}
		if num != lastNum+1 {
			w.problem("POP3 %s on %s: UIDL message %d after %d", user, a.ID, num, lastNum)
		}
		if uid <= lastUID {
			w.problem("POP3 %s on %s: UIDL %s after UID %d: UIDs must increase", user, a.ID, f[1], lastUID)
		}
		lastNum, lastUID = num, uid
		w.mu.Lock()
		if v, ok := w.validity[user]; !ok {
			w.validity[user] = validity
		} else if v != validity {
			w.problems.add(fmt.Sprintf("POP3 %s on %s: UIDL %s under UIDVALIDITY %s, seen before under %s", user, a.ID, f[1], validity, v))
		}
		w.mu.Unlock()
		list = append(list, entry{num, f[1]})
	}
	if len(list) > 0 {
		e := list[rng.IntN(len(list))]
		msg, status, err := ca.multi(fmt.Sprintf("RETR %d", e.num))
		if err != nil || !strings.HasPrefix(status, "+OK") {
			w.refused(a.ID, "RETR", status, err)
			return
		}
		id := messageID([]byte(strings.Join(msg, "\r\n") + "\r\n"))
		if id == "" {
			w.problem("POP3 %s on %s: message %d (UIDL %s) has no Message-ID", user, a.ID, e.num, e.uid)
		}
		key := user + " " + e.uid
		w.mu.Lock()
		if old, ok := w.uidls[key]; ok && old != id {
			w.problems.add(fmt.Sprintf("POP3 %s on %s: UIDL %s now names %s, before %s", user, a.ID, e.uid, id, old))
		} else if !ok {
			w.uidls[key] = id
		}
		w.res.Retrieved++
		w.mu.Unlock()
	}
	if r, err := ca.cmd("QUIT"); err == nil && strings.HasPrefix(r, "+OK") {
		w.count(func(r *POP3Result) { r.Sessions++ })
	}
}
