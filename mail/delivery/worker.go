// Package delivery works the replicated outbound queue: every node of the
// cluster delivers a share of it, and a node that dies mid-delivery loses
// nothing, since another node takes its entries over.
//
// Ownership. Each entry has one owner among the nodes gossip sees alive,
// by rendezvous hashing of the entry ID (Owner). The owner claims a batch of
// entries with one QueueClaim command: a lease until a time the proposer
// stamps, granted by Apply only if the entry is unleased, already the
// node's, or its lease lapsed at the command's time. While a delivery runs
// the node renews its leases; the result (QueueResult: per recipient
// delivered, bounced or deferred with the next attempt) ends the lease. A
// node works only on entries it owns, on its own leases from before a
// restart, and on entries whose lease lapsed more than half a lease ago
// (their owner is alive to gossip but stuck). After a node dies, its
// entries are the survivors' once gossip drops it and its leases lapse:
// within the lease length plus gossip's failure detection (a few seconds).
//
// Promises. With healthy nodes a message is delivered once: the lease
// serialises nodes, and the result is committed (Propose) before the lease
// is given up. Under faults delivery is at least once: a node that dies (or
// loses the cluster) after the remote accepted the message and before the
// result is committed leaves the entry pending, and its successor delivers
// it again. That window is the remote's "250" to the result's commit: one
// Raft commit plus the result batch's wait, a few milliseconds.
//
// Reports. A bounce report (RFC 3464) travels inside the result that bounces
// the recipient and is stored only by that result, so a result applied
// twice never makes two reports; the null sender never gets one. A delay
// report is sent once per entry.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Options configure a node's delivery.
type Options struct {
	Node     *cluster.Node
	Log      *slog.Logger
	Hostname string // EHLO name and the reporting MTA of reports
	Resolver Resolver
	// LocalIP is the source address of outgoing connections (and one of
	// this cluster's own addresses, for loop detection).
	LocalIP net.IP
	// MXPort is the port of MX delivery (25).
	MXPort int
	// ScanInterval: how often the queue is looked at when nothing wakes
	// the worker (default 1s).
	ScanInterval time.Duration
	// MaxInFlight caps the entries this node works on at once (400).
	MaxInFlight int
	// Now is the clock (tests).
	Now func() time.Time
}

// Stats counts this node's outcomes since it started.
type Stats struct {
	Node      string `json:"node"`
	Delivered int64  `json:"delivered"` // recipients accepted by the next hop
	Deferred  int64  `json:"deferred"`
	Bounced   int64  `json:"bounced"`
	Messages  int64  `json:"messages"` // transactions that delivered at least one recipient
	InFlight  int    `json:"in_flight"`
}

// Worker delivers this node's share of the queue.
type Worker struct {
	opt  Options
	node *cluster.Node
	log  *slog.Logger
	self string
	pool *pool

	mu       sync.Mutex
	inflight map[uint64]time.Time // claimed entries -> lease end
	sems     map[string]chan struct{}
	spread   map[string]*atomic.Uint64

	wake    chan struct{}
	results chan command.EntryResult
	cancel  context.CancelFunc
	loops   sync.WaitGroup // scan, renew, janitor: they start jobs
	record  sync.WaitGroup // the recorder: it outlives the jobs
	jobs    sync.WaitGroup
	stopped atomic.Bool

	delivered, deferred, bounced, messages atomic.Int64
}

// New makes a worker; Start starts it.
func New(opt Options) *Worker {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.MXPort == 0 {
		opt.MXPort = 25
	}
	if opt.ScanInterval == 0 {
		opt.ScanInterval = time.Second
	}
	if opt.MaxInFlight == 0 {
		opt.MaxInFlight = 400
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Hostname == "" {
		opt.Hostname = "localhost"
	}
	return &Worker{
		opt: opt, node: opt.Node, log: opt.Log.With("component", "delivery"), self: opt.Node.ID(),
		pool: newPool(), inflight: map[uint64]time.Time{}, sems: map[string]chan struct{}{},
		spread: map[string]*atomic.Uint64{}, wake: make(chan struct{}, 1), results: make(chan command.EntryResult, 1024),
	}
}

// running maps each node to its worker, for the admin API's statistics.
// Keyed by node, so that several nodes in one process stay apart.
var running sync.Map // *cluster.Node -> *Worker

// Running returns the worker started for node, or nil.
func Running(node *cluster.Node) *Worker {
	if w, ok := running.Load(node); ok {
		return w.(*Worker)
	}
	return nil
}

// Hostname is the name the worker greets with.
func (w *Worker) Hostname() string { return w.opt.Hostname }

// Start runs the worker until Stop.
func (w *Worker) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	running.Store(w.node, w)
	w.node.Store().Observe(func(evs []storage.Event) {
		if w.stopped.Load() {
			return
		}
		for _, e := range evs {
			if e.Kind == storage.QueueChanged || e.Kind == storage.DirectoryChanged {
				select {
				case w.wake <- struct{}{}:
				default:
				}
				return
			}
		}
	})
	w.loops.Add(3)
	go func() { defer w.loops.Done(); w.scanLoop(ctx) }()
	go func() { defer w.loops.Done(); w.renewLoop(ctx) }()
	go func() { defer w.loops.Done(); w.pool.janitor(ctx) }()
	w.record.Add(1)
	go func() { defer w.record.Done(); w.recordLoop() }()
}

// Stop claims nothing more, lets deliveries under way finish until ctx
// ends (then cuts their connections), records their results and returns.
// Entries it could not finish keep their leases, which lapse.
func (w *Worker) Stop(ctx context.Context) {
	if w.cancel == nil || w.stopped.Swap(true) {
		return
	}
	running.CompareAndDelete(w.node, w)
	w.cancel()
	w.loops.Wait() // no job starts after this
	done := make(chan struct{})
	go func() { w.jobs.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		w.pool.closeAll()
		<-done
	}
	close(w.results)
	w.record.Wait()
	w.pool.closeAll()
}

// Stats returns this node's counters.
func (w *Worker) Stats() Stats {
	w.mu.Lock()
	n := len(w.inflight)
	w.mu.Unlock()
	return Stats{Node: w.self, Delivered: w.delivered.Load(), Deferred: w.deferred.Load(), Bounced: w.bounced.Load(),
		Messages: w.messages.Load(), InFlight: n}
}

func (w *Worker) config() Config {
	var c Config
	_ = w.node.Store().View(func(tx *storage.Tx) error {
		var err error
		c, err = LoadConfig(tx)
		if err != nil {
			w.log.Warn("delivery settings unreadable; using defaults where so", "err", err)
		}
		return nil
	})
	return c
}

func (w *Worker) scanLoop(ctx context.Context) {
	t := time.NewTicker(w.opt.ScanInterval)
	defer t.Stop()
	for {
		w.scan(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.wake:
			// Changes come in bursts: one look after a short pause.
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// scan finds entries this node should work on now and claims them.
func (w *Worker) scan(ctx context.Context) {
	cfg := w.config()
	st := &cfg.Settings
	if st.Paused {
		return
	}
	w.mu.Lock()
	room := w.opt.MaxInFlight - len(w.inflight)
	w.mu.Unlock()
	if room <= 0 {
		return
	}
	now := w.opt.Now()
	nowN := now.UnixNano()
	lease := st.Lease.D()
	live := w.node.LiveNodes()
	var cands []uint64
	_ = w.node.Store().View(func(tx *storage.Tx) error {
		return tx.QueueEntries(func(q storage.QueueEntry) bool {
			if q.Held || q.NextAttempt > nowN || !q.Pending() {
				return true
			}
			w.mu.Lock()
			_, busy := w.inflight[q.ID]
			w.mu.Unlock()
			if busy {
				return true
			}
			leased := q.LeaseNode != "" && q.LeaseUntil > nowN
			mine := false
			switch {
			case leased && q.LeaseNode != w.self:
			case q.LeaseNode == w.self:
				mine = true // ours from before a restart
			case Owner(entryKey(q.ID), live) == w.self:
				mine = true
			case q.LeaseNode != "" && q.LeaseUntil+int64(lease/2) <= nowN:
				mine = true // lapsed long ago: its owner is stuck
			}
			if mine {
				cands = append(cands, q.ID)
			}
			return len(cands) < room
		})
	})
	for len(cands) > 0 && ctx.Err() == nil {
		n := min(len(cands), 200)
		w.claim(ctx, cands[:n], lease, st)
		cands = cands[n:]
	}
}

func (w *Worker) claim(ctx context.Context, ids []uint64, lease time.Duration, st *Settings) {
	until := w.opt.Now().Add(lease)
	resp, _, err := w.node.Propose(ctx, &command.QueueClaim{Node: w.self, Until: until.UnixNano(), IDs: ids})
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("cannot claim queue entries", "err", err)
		}
		return
	}
	for _, id := range resp.IDs {
		w.mu.Lock()
		if _, dup := w.inflight[id]; dup {
			w.mu.Unlock()
			continue
		}
		w.inflight[id] = until
		w.mu.Unlock()
		w.jobs.Add(1)
		go func(id uint64) {
			defer w.jobs.Done()
			res, ok := w.attempt(ctx, id)
			if !ok {
				w.mu.Lock()
				delete(w.inflight, id)
				w.mu.Unlock()
				return
			}
			w.results <- res
		}(id)
	}
}

// renewLoop extends the leases of entries still being worked on.
func (w *Worker) renewLoop(ctx context.Context) {
	for {
		lease := w.config().Settings.Lease.D()
		select {
		case <-ctx.Done():
			// Entries whose results wait to be recorded are renewed by
			// the recorder's own retries only; stopping ends here.
			return
		case <-time.After(lease / 4):
		}
		now := w.opt.Now()
		var ids []uint64
		w.mu.Lock()
		for id, until := range w.inflight {
			if until.Sub(now) < lease/2 {
				ids = append(ids, id)
			}
		}
		w.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		until := now.Add(lease)
		resp, _, err := w.node.Propose(ctx, &command.QueueClaim{Node: w.self, Until: until.UnixNano(), IDs: ids})
		if err != nil {
			w.log.Warn("cannot renew queue leases", "entries", len(ids), "err", err)
			continue
		}
		w.mu.Lock()
		for _, id := range resp.IDs {
			if _, ok := w.inflight[id]; ok {
				w.inflight[id] = until
			}
		}
		w.mu.Unlock()
		for _, id := range resp.Failed {
			w.log.Warn("lost the lease of a queue entry being delivered", "id", id)
		}
	}
}

// recordLoop commits results in batches (one Raft entry for many) and
// retries until they are committed: a result is a durable promise.
func (w *Worker) recordLoop() {
	for first := range w.results {
		batch := []command.EntryResult{first}
	drain:
		for len(batch) < 256 {
			select {
			case r, ok := <-w.results:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		backoff := 50 * time.Millisecond
		for attempt := 1; ; attempt++ {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, _, err := w.node.Propose(ctx, &command.QueueResult{Node: w.self, Entries: batch})
			cancel()
			if err == nil {
				break
			}
			if errors.Is(err, cluster.ErrUnavailable) && strings.Contains(err.Error(), "shutting down") || w.stopped.Load() && attempt >= 3 {
				w.log.Error("delivery results not recorded; the entries will be tried again after their leases lapse", "entries", len(batch), "err", err)
				break
			}
			w.log.Warn("cannot record delivery results yet; retrying", "entries", len(batch), "err", err)
			time.Sleep(backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
		w.mu.Lock()
		for _, r := range batch {
			delete(w.inflight, r.ID)
		}
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// maxRcpts is the most recipients of one transaction: RFC 5321 (4.5.3.1.8)
// has servers take at least 100.
const maxRcpts = 100

// outcome is what became of one recipient in this attempt.
type outcome struct {
	o      command.Outcome
	text   string // SMTP reply or our reason
	remote string // host that answered
	noDSN  bool   // delivered to a server without the DSN extension
}

// attempt delivers the pending recipients of one entry and returns the
// result to record; false if there is nothing to record.
func (w *Worker) attempt(ctx context.Context, id uint64) (command.EntryResult, bool) {
	cfg := w.config()
	st := &cfg.Settings
	var q storage.QueueEntry
	var meta storage.QueueMeta
	var msg []byte
	err := w.node.Store().View(func(tx *storage.Tx) error {
		var err error
		if q, err = tx.QueueEntry(id); err != nil {
			return err
		}
		if meta, err = tx.QueueMeta(id); err != nil {
			return err
		}
		body, err := tx.Body(q.Blob)
		if err != nil {
			return err
		}
		msg = append(append(make([]byte, 0, len(q.Prefix)+len(body)), q.Prefix...), body...)
		return nil
	})
	if errors.Is(err, storage.ErrNotFound) {
		return command.EntryResult{}, false
	}
	now := w.opt.Now()
	res := command.EntryResult{ID: id}
	var pending []storage.QueueRecipient
	for _, r := range q.Recipients {
		if r.State == storage.RcptPending {
			pending = append(pending, r)
		}
	}
	if len(pending) == 0 {
		return res, true
	}
	outcomes := map[string]outcome{}
	switch {
	case err != nil:
		// The body is missing locally (being fetched after a snapshot):
		// try again soon, counted as an attempt.
		for _, r := range pending {
			outcomes[r.Address] = outcome{o: command.Deferred, text: "4.3.0 message body not available on node " + w.self + ": " + err.Error()}
		}
	case countReceived(msg) > st.MaxHops:
		for _, r := range pending {
			outcomes[r.Address] = outcome{o: command.Bounced, text: fmt.Sprintf("5.4.6 mail loop: the message has %d Received header fields (limit %d)", countReceived(msg), st.MaxHops)}
		}
	default:
		groups := map[string]*group{}
		var order []string
		count := map[string]int{}
		for _, r := range pending {
			d := w.destFor(&cfg, q.From, r.Address)
			// One transaction per next hop, of at most maxRcpts
			// recipients (what RFC 5321 servers must take).
			k := fmt.Sprintf("%s#%d", d.key, count[d.key]/maxRcpts)
			count[d.key]++
			g, ok := groups[k]
			if !ok {
				g = &group{dest: d}
				groups[k] = g
				order = append(order, k)
			}
			g.rcpts = append(g.rcpts, r)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, k := range order {
			g := groups[k]
			wg.Add(1)
			go func() {
				defer wg.Done()
				out := w.deliverGroup(ctx, st, &q, msg, g)
				mu.Lock()
				for a, o := range out {
					outcomes[a] = o
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
	}

	expired := now.Sub(time.Unix(0, q.Created)) >= st.Expire.D()
	maxAttempts := 0
	var failed, delayed, relayed []dsnRcpt
	for _, r := range pending {
		o, ok := outcomes[r.Address]
		if !ok {
			o = outcome{o: command.Deferred, text: "4.3.0 not attempted"}
		}
		if o.o == command.Deferred && expired {
			o.o = command.Bounced
			o.text = fmt.Sprintf("4.4.7 gave up after %s in the queue; last error: %s", st.Expire.D(), o.text)
		}
		res.Rcpts = append(res.Rcpts, command.RcptResult{Address: r.Address, Outcome: o.o, Error: o.text})
		switch o.o {
		case command.Delivered:
			w.delivered.Add(1)
			if o.noDSN && notifyHas(r.Notify, "SUCCESS") {
				// The next hop cannot report success itself: we say
				// it was relayed (RFC 3461 5.2.2).
				relayed = append(relayed, dsnRcpt{Address: r.Address, ORcpt: r.ORcpt, Action: "relayed", Status: "2.0.0", RemoteMTA: o.remote,
					Diagnostic: o.text + ", which does not support DSN"})
			}
		case command.Bounced:
			w.bounced.Add(1)
			w.log.Info("bounced", "id", id, "to", r.Address, "reason", o.text)
			if wantsDSN(r.Notify, "FAILURE") {
				failed = append(failed, dsnRcpt{Address: r.Address, ORcpt: r.ORcpt, Action: "failed", Status: statusOf(o.text, true), RemoteMTA: o.remote, Diagnostic: o.text})
			}
		case command.Deferred:
			w.deferred.Add(1)
			maxAttempts = max(maxAttempts, int(r.Attempts)+1)
			w.log.Info("deferred", "id", id, "to", r.Address, "reason", o.text)
			if wantsDSN(r.Notify, "DELAY") {
				delayed = append(delayed, dsnRcpt{Address: r.Address, ORcpt: r.ORcpt, Action: "delayed", Status: statusOf(o.text, false), RemoteMTA: o.remote, Diagnostic: o.text})
			}
		}
	}
	if maxAttempts > 0 {
		res.NextAttempt = now.Add(st.RetryAfter(maxAttempts)).UnixNano()
	}
	if q.From != "" && len(failed) > 0 {
		res.FailureDSN = w.report(&cfg, &q, buildDSN(w.opt.Hostname, &q, msg, failed, now, false, time.Time{}), now)
	}
	if q.From != "" && len(relayed) > 0 {
		res.SuccessDSN = w.report(&cfg, &q, buildDSN(w.opt.Hostname, &q, msg, relayed, now, false, time.Time{}), now)
	}
	if q.From != "" && len(delayed) > 0 && !st.NoDelayDSN && !meta.DelayNotified && now.Sub(time.Unix(0, q.Created)) >= st.DelayWarning.D() {
		until := time.Unix(0, q.Created).Add(st.Expire.D())
		res.DelayDSN = w.report(&cfg, &q, buildDSN(w.opt.Hostname, &q, msg, delayed, now, true, until), now)
	}
	return res, true
}

// report makes the command that stores a report to q's sender: into the
// sender's mailbox when the sender is a local user, else into the queue
// with the null sender (so that it never causes a report itself).
func (w *Worker) report(cfg *Config, q *storage.QueueEntry, msg []byte, now time.Time) *command.Deliver {
	hash, z := w.node.Store().Compress(msg)
	d := &command.Deliver{Blob: hash, Body: z, BodySize: int64(len(msg)), InternalDate: now.UnixNano()}
	if _, routed := cfg.RouteFor(q.From); routed {
		d.Queue = []storage.QueueRecipient{{Address: q.From}}
		return d
	}
	err := w.node.Store().View(func(tx *storage.Tx) error {
		res, err := tx.Resolve(q.From)
		if err != nil {
			return err
		}
		for _, u := range res.Users {
			d.Targets = append(d.Targets, command.Target{UserID: u.ID, Prefix: []byte("Return-Path: <>\r\n")})
		}
		for _, r := range res.Remote {
			d.Queue = append(d.Queue, storage.QueueRecipient{Address: r})
		}
		return nil
	})
	if err != nil || len(d.Targets)+len(d.Queue) == 0 {
		w.log.Warn("no report to the sender: the sender's address leads nowhere", "id", q.ID, "sender", q.From, "err", err)
		return nil
	}
	return d
}

// dest is where a group of recipients is handed over.
type dest struct {
	key    string // "mx:domain", "relay:name", "route:name"
	kind   string
	domain string
	hosts  []Host
	mode   string
}

type group struct {
	dest  dest
	rcpts []storage.QueueRecipient
}

// destFor picks a recipient's next hop: a route (another site), else a
// relay (by sender domain, recipient domain, or the default), else the
// recipient domain's MX.
func (w *Worker) destFor(cfg *Config, from, rcpt string) dest {
	if r, ok := cfg.RouteFor(rcpt); ok {
		hosts := append([]Host(nil), r.Hosts...)
		for i := range hosts {
			if hosts[i].TLS == "" {
				hosts[i].TLS = TLSRequire
			}
		}
		return dest{key: "route:" + r.Name, kind: "route", hosts: hosts, mode: r.Mode}
	}
	if r, ok := cfg.RelayFor(from, rcpt); ok {
		return dest{key: "relay:" + r.Name, kind: "relay", hosts: r.Hosts, mode: r.Mode}
	}
	domain := strings.ToLower(rcpt[strings.LastIndexByte(rcpt, '@')+1:])
	return dest{key: "mx:" + domain, kind: "mx", domain: domain}
}

// sem returns the connection limit of a destination.
func (w *Worker) sem(key string, n int) chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	s, ok := w.sems[key]
	if !ok || cap(s) != n {
		s = make(chan struct{}, n)
		w.sems[key] = s
	}
	return s
}

func (w *Worker) spreadStart(key string, n int) int {
	w.mu.Lock()
	c, ok := w.spread[key]
	if !ok {
		c = &atomic.Uint64{}
		w.spread[key] = c
	}
	w.mu.Unlock()
	return int(c.Add(1) % uint64(n))
}

// selfIPs are the addresses at which mail would come back to this cluster.
func (w *Worker) selfIPs() []net.IP {
	ips := w.node.MemberIPs()
	if w.opt.LocalIP != nil {
		ips = append(ips, w.opt.LocalIP)
	}
	return ips
}

func (w *Worker) isSelf(ip net.IP) bool {
	for _, s := range w.selfIPs() {
		if s.Equal(ip) {
			return true
		}
	}
	return false
}
