package workload

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// FlagWrite is a flag a node answered a tagged OK to a UID STORE for.
type FlagWrite struct {
	User        string
	Node        string
	UIDValidity uint32
	UID         uint32
	Flag        string
	At          time.Time
}

func (f FlagWrite) String() string {
	return fmt.Sprintf("%s UID %d.%d %s (set through %s at %s)", f.User, f.UIDValidity, f.UID, f.Flag, f.Node, f.At.Format("15:04:05.000"))
}

// maxProblems bounds what a workload keeps of a flood of violations.
const maxProblems = 200

// problems collects violations, bounded.
type problems struct {
	list    []string
	dropped int
}

func (p *problems) add(s string) {
	if len(p.list) < maxProblems {
		p.list = append(p.list, s)
	} else {
		p.dropped++
	}
}

func (p *problems) all() []string {
	out := append([]string(nil), p.list...)
	if p.dropped > 0 {
		out = append(out, fmt.Sprintf("... and %d more problems", p.dropped))
	}
	return out
}

// IMAP runs IMAP sessions that read every message's flags and add flags,
// on every node, and checks each connection's view as it goes: it sees its
// own acknowledged writes on its next read, never loses a UID (the
// workloads expunge nothing), never sees UIDVALIDITY change, a message's
// MODSEQ or the mailbox's HIGHESTMODSEQ or UIDNEXT go down, a flag vanish
// (flags are only ever added), or a UID appear below one it has seen. Every
// session, on whichever node, must see the same Message-ID under a UID.
// Connections on different nodes may be at different points of the log; a
// broken connection starts a new history on the next node.
type IMAP struct {
	c      *harness.Cluster
	users  []string
	pass   map[string]string
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	writes   []FlagWrite
	problems problems
	ids      map[string]string // user/uidvalidity/uid -> Message-ID, as any session saw it
	conns    int
}

// StartIMAP starts sessions IMAP sessions on the users (address ->
// password). Session i starts on node i (modulo the cluster size) and moves
// to the next node whenever its node fails or refuses.
func StartIMAP(c *harness.Cluster, users map[string]string, sessions int) *IMAP {
	ctx, cancel := context.WithCancel(context.Background())
	w := &IMAP{c: c, pass: users, users: sortedKeys(users), cancel: cancel, ids: map[string]string{}}
	for i := 0; i < sessions; i++ {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.session(ctx, i)
		}()
	}
	return w
}

// Stop ends the sessions and returns the acknowledged flag writes and the
// violations seen.
func (w *IMAP) Stop() ([]FlagWrite, []string) {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]FlagWrite(nil), w.writes...), w.problems.all()
}

// Acked counts the acknowledged flag writes so far.
func (w *IMAP) Acked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes)
}

// AckedSince counts the flag writes acknowledged after t.
func (w *IMAP) AckedSince(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, fw := range w.writes {
		if fw.At.After(t) {
			n++
		}
	}
	return n
}

// Connections is how many connections logged in.
func (w *IMAP) Connections() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conns
}

func (w *IMAP) problem(format string, args ...any) {
	w.mu.Lock()
	w.problems.add(fmt.Sprintf(format, args...))
	w.mu.Unlock()
}

func (w *IMAP) session(ctx context.Context, i int) {
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	seq := 0
	for k := 0; ctx.Err() == nil; k++ {
		n := w.c.Nodes[(i+k)%len(w.c.Nodes)]
		user := w.users[(i+k)%len(w.users)]
		w.connection(ctx, rng, i, &seq, n, user)
		pause(ctx, 100*time.Millisecond)
	}
}

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// seenMsg is what one connection has seen of a message.
type seenMsg struct {
	modseq uint64
	flags  map[string]string // lower case -> as seen
}

// history is one connection's view so far.
type history struct {
	node, user  string
	uidValidity uint32
	highest     uint64 // HIGHESTMODSEQ
	uidNext     goimap.UID
	maxUID      uint32
	msgs        map[uint32]*seenMsg
	// own: acknowledged writes of this connection not yet read back.
	own []FlagWrite
}

// connection runs one IMAP connection until it breaks, is refused, or ctx
// ends.
func (w *IMAP) connection(ctx context.Context, rng *rand.Rand, session int, seq *int, n *harness.Node, user string) {
	raw, err := net.DialTimeout("tcp", n.Addr(harness.IMAPPort), 2*time.Second)
	if err != nil {
		return
	}
	deadline := func(d time.Duration) { _ = raw.SetDeadline(time.Now().Add(d)) }
	deadline(10 * time.Second)
	cl := imapclient.New(raw, nil)
	defer cl.Close()
	stop := context.AfterFunc(ctx, func() { cl.Close() })
	defer stop()
	if err := cl.WaitGreeting(); err != nil {
		return
	}
	if err := cl.Login(user, w.pass[user]).Wait(); err != nil {
		w.protocolError(n, user, "LOGIN", err)
		return
	}
	w.mu.Lock()
	w.conns++
	w.mu.Unlock()
	h := &history{node: n.ID, user: user, msgs: map[uint32]*seenMsg{}}
	for ctx.Err() == nil {
		// Commands may rightly wait for an election or an uncertain write's
		// fate; a node that holds them longer than this is left for the
		// next.
		deadline(30 * time.Second)
		sel, err := cl.Select("INBOX", &goimap.SelectOptions{CondStore: true}).Wait()
		if err != nil {
			w.protocolError(n, user, "SELECT", err)
			return
		}
		var msgs []*imapclient.FetchMessageBuffer
		if sel.NumMessages > 0 {
			var all goimap.UIDSet
			all.AddRange(1, 0) // 1:*
			msgs, err = cl.Fetch(all, &goimap.FetchOptions{UID: true, Flags: true, ModSeq: true}).Collect()
			if err != nil {
				w.protocolError(n, user, "UID FETCH", err)
				return
			}
		}
		fresh := w.observe(h, sel, msgs)
		if err := w.checkIDs(cl, h, fresh); err != nil {
			w.protocolError(n, user, "UID FETCH (Message-ID)", err)
			return
		}
		if len(msgs) == 0 {
			pause(ctx, 50*time.Millisecond)
			continue
		}
		m := msgs[rng.IntN(len(msgs))]
		flag := fmt.Sprintf("$wl%d-%d", session, *seq)
		switch rng.IntN(6) {
		case 0:
			flag = `\Seen`
		case 1:
			flag = `\Flagged`
		default:
			*seq++
		}
		err = cl.Store(goimap.UIDSetNum(m.UID), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Silent: true, Flags: []goimap.Flag{goimap.Flag(flag)}}, nil).Close()
		if err != nil {
			// Refused (NO): its fate is known, nothing was written; broken:
			// unknown. Either way this connection is done.
			w.protocolError(n, user, "UID STORE", err)
			return
		}
		fw := FlagWrite{User: user, Node: n.ID, UIDValidity: h.uidValidity, UID: uint32(m.UID), Flag: flag, At: time.Now()}
		h.own = append(h.own, fw)
		w.mu.Lock()
		w.writes = append(w.writes, fw)
		w.mu.Unlock()
		pause(ctx, 50*time.Millisecond)
	}
}

// protocolError records a BAD answer (a client or server bug); a NO is a
// refusal and a broken connection is a fault, both expected here.
func (w *IMAP) protocolError(n *harness.Node, user, what string, err error) {
	var ierr *goimap.Error
	if errors.As(err, &ierr) && ierr.Type == goimap.StatusResponseTypeBad {
		w.problem("IMAP %s on %s for %s: BAD %v", what, n.ID, user, err)
	}
}

// observe checks a SELECT and a FETCH of every message against what the
// connection saw before, and returns the UIDs it sees for the first time.
func (w *IMAP) observe(h *history, sel *goimap.SelectData, msgs []*imapclient.FetchMessageBuffer) []goimap.UID {
	where := fmt.Sprintf("IMAP %s on %s", h.user, h.node)
	if h.uidValidity == 0 {
		h.uidValidity = sel.UIDValidity
	} else if sel.UIDValidity != h.uidValidity {
		w.problem("%s: UIDVALIDITY changed from %d to %d", where, h.uidValidity, sel.UIDValidity)
		h.uidValidity = sel.UIDValidity
	}
	if sel.HighestModSeq == 0 && sel.NumMessages > 0 {
		w.problem("%s: SELECT (CONDSTORE) of %d messages without HIGHESTMODSEQ", where, sel.NumMessages)
	}
	if sel.HighestModSeq < h.highest {
		w.problem("%s: HIGHESTMODSEQ went back from %d to %d", where, h.highest, sel.HighestModSeq)
	}
	h.highest = max(h.highest, sel.HighestModSeq)
	if sel.UIDNext < h.uidNext {
		w.problem("%s: UIDNEXT went back from %d to %d", where, h.uidNext, sel.UIDNext)
	}
	h.uidNext = max(h.uidNext, sel.UIDNext)

	// In sequence order, UIDs strictly increase.
	sort.Slice(msgs, func(i, j int) bool { return msgs[i].SeqNum < msgs[j].SeqNum })
	now := map[uint32]*imapclient.FetchMessageBuffer{}
	var last goimap.UID
	for _, m := range msgs {
		if m.UID == 0 {
			w.problem("%s: FETCH of message %d without a UID", where, m.SeqNum)
			continue
		}
		if m.ModSeq == 0 {
			w.problem("%s: FETCH MODSEQ of UID %d without a MODSEQ", where, m.UID)
		}
		if m.UID <= last {
			w.problem("%s: UID %d at sequence number %d, after UID %d", where, m.UID, m.SeqNum, last)
		}
		last = m.UID
		now[uint32(m.UID)] = m
	}
	for uid := range h.msgs {
		if now[uid] == nil {
			w.problem("%s: UID %d vanished (nothing is expunged)", where, uid)
		}
	}
	maxBefore := h.maxUID
	var fresh []goimap.UID
	for uid, m := range now {
		flags := map[string]string{}
		for _, f := range m.Flags {
			if !strings.EqualFold(string(f), `\Recent`) {
				flags[strings.ToLower(string(f))] = string(f)
			}
		}
		prev := h.msgs[uid]
		if prev == nil {
			if uid < maxBefore {
				w.problem("%s: UID %d appeared below UID %d seen before", where, uid, maxBefore)
			}
			h.msgs[uid] = &seenMsg{modseq: m.ModSeq, flags: flags}
			h.maxUID = max(h.maxUID, uid)
			fresh = append(fresh, m.UID)
			continue
		}
		if m.ModSeq < prev.modseq {
			w.problem("%s: UID %d: MODSEQ went back from %d to %d", where, uid, prev.modseq, m.ModSeq)
		}
		if sel.HighestModSeq != 0 && prev.modseq > sel.HighestModSeq {
			w.problem("%s: UID %d had MODSEQ %d, above this SELECT's HIGHESTMODSEQ %d", where, uid, prev.modseq, sel.HighestModSeq)
		}
		for k, f := range prev.flags {
			if _, ok := flags[k]; !ok {
				w.problem("%s: UID %d lost flag %s (flags are only added)", where, uid, f)
			}
		}
		prev.modseq = max(prev.modseq, m.ModSeq)
		for k, f := range flags {
			prev.flags[k] = f
		}
	}
	// Read your writes: every acknowledged STORE of this connection shows.
	for _, fw := range h.own {
		m := now[fw.UID]
		if m == nil {
			w.problem("%s: read-your-writes: UID %d, flagged %s (acknowledged at %s), missing from the next FETCH", where, fw.UID, fw.Flag, fw.At.Format("15:04:05.000"))
			continue
		}
		found := false
		for _, f := range m.Flags {
			found = found || strings.EqualFold(string(f), fw.Flag)
		}
		if !found {
			w.problem("%s: read-your-writes: UID %d lacks %s, acknowledged at %s; FETCH says %v", where, fw.UID, fw.Flag, fw.At.Format("15:04:05.000"), m.Flags)
		}
	}
	h.own = h.own[:0]
	return fresh
}

// checkIDs reads the Message-ID of the UIDs the connection sees for the
// first time: a UID names one message, the same on every node, for ever.
func (w *IMAP) checkIDs(cl *imapclient.Client, h *history, fresh []goimap.UID) error {
	if len(fresh) == 0 {
		return nil
	}
	// ENVELOPE, not BODY.PEEK[HEADER.FIELDS (Message-ID)]: go-imap's client
	// (v2.0.0-beta.8) races with itself when a connection breaks while it
	// reads a literal, and an envelope's Message-ID comes as a quoted string.
	msgs, err := cl.Fetch(goimap.UIDSetNum(fresh...), &goimap.FetchOptions{UID: true, Envelope: true}).Collect()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range msgs {
		id := "<no envelope>"
		if m.Envelope != nil {
			id = "<" + m.Envelope.MessageID + ">"
		}
		key := fmt.Sprintf("%s/%d/%d", h.user, h.uidValidity, m.UID)
		if old, ok := w.ids[key]; ok && old != id {
			w.problems.add(fmt.Sprintf("IMAP %s on %s: UID %d.%d is %s, another session saw %s under it", h.user, h.node, h.uidValidity, m.UID, id, old))
		} else if !ok {
			w.ids[key] = id
		}
	}
	return nil
}
