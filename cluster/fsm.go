package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// requestTTL is how long a write's response is remembered for deduplication.
// A forwarded write is retried within seconds; ten minutes is ample.
const requestTTL = 10 * time.Minute

// fsm applies committed log entries to the store.
//
// Raft hands the FSM one batch per advance of the commit index and waits
// for each; a store transaction per batch would cost two fsyncs per batch,
// and a slow disk would make the FSM the narrowest stage of every write.
// So ApplyBatch only queues the entries, and one applier goroutine applies
// everything queued in one transaction, recording the last index in the
// same transaction: the busier the node, the more a transaction carries.
// Proposers wait on the applied index (wait), never on Raft's futures,
// and read a write's response from the store (the request record).
type fsm struct {
	store   *storage.Store
	log     *slog.Logger
	metrics *metrics
	fetch   storage.FetchFunc // bodies from peers, for snapshot installs
	fatal   func(error)       // the node cannot go on applying

	applied atomic.Uint64

	// committed, if set, learns of every batch before it is applied: Raft
	// hands the FSM only committed entries (see commitTracker).
	committed func([]*raft.Log)

	mu      sync.Mutex
	changed chan struct{} // closed and replaced after every batch
	digests map[uint64][]byte

	// The queue between Raft and the applier, guarded by qmu; qcond is
	// signalled whenever any of these change.
	qmu      sync.Mutex
	qcond    *sync.Cond
	queue    []*raft.Log
	qbytes   int
	busy     bool // the applier holds entries taken from the queue
	held     bool // a snapshot is being taken or installed (hold)
	waiters  int  // callers of wait and hold: apply now, not lazily
	due      bool // the lazy window of the queue's oldest entries ended
	lazy     *time.Timer
	window   time.Duration // lazyWindow; tests lengthen it
	queuedTo uint64        // the last index Raft has handed over
	failed   error         // the applier stopped; nothing more is applied
	closing  bool
	done     chan struct{}

	// A commit learnt ahead of Raft (see hint): entries up to hinted, whose
	// entry there has term hintTerm, are committed; loggedTo is the last
	// index in this node's log.
	logs             raft.LogStore
	hinted, hintTerm uint64
	loggedTo         uint64
}

// The queue is bounded so that a node replaying a long log does not hold it
// all in memory: beyond this, ApplyBatch waits for the applier.
const (
	maxQueuedEntries = 4096
	maxQueuedBytes   = 64 << 20
)

// While nobody on this node waits for an entry to be applied (a write
// acknowledged at commit, like SMTP's 250, or one made through another
// node), the applier lets entries gather for up to lazyWindow, or
// lazyEntries of them, before a transaction: fewer fsyncs per message on
// every node. Someone starting to wait ends the window at once.
const (
	lazyWindow  = 10 * time.Millisecond
	lazyEntries = 512
)

func newFSM(store *storage.Store, log *slog.Logger, m *metrics, fatal func(error)) (*fsm, error) {
	f := &fsm{store: store, log: log, metrics: m, fatal: fatal, window: lazyWindow,
		changed: make(chan struct{}), digests: map[uint64][]byte{}, done: make(chan struct{})}
	f.qcond = sync.NewCond(&f.qmu)
	idx, err := store.Applied()
	if err != nil {
		return nil, err
	}
	f.applied.Store(idx)
	go f.run()
	return f, nil
}

// Apply is here for raft.FSM; batches are the normal path.
func (f *fsm) Apply(l *raft.Log) interface{} { return f.ApplyBatch([]*raft.Log{l})[0] }

// ApplyBatch queues committed entries for the applier. The responses Raft
// gets are empty: proposers read theirs from the store.
func (f *fsm) ApplyBatch(logs []*raft.Log) []interface{} {
	if f.committed != nil {
		f.committed(logs)
	}
	size := 0
	for _, l := range logs {
		size += len(l.Data)
	}
	f.qmu.Lock()
	for len(f.queue) > 0 && (len(f.queue)+len(logs) > maxQueuedEntries || f.qbytes+size > maxQueuedBytes) && f.failed == nil {
		f.qcond.Wait()
	}
	if f.failed != nil {
		// Raft would count these entries as applied; the node is stopping
		// with the reason instead, and must not let Raft go on.
		f.qmu.Unlock()
		select {}
	}
	f.queue = append(f.queue, logs...)
	f.qbytes += size
	f.queuedTo = max(f.queuedTo, logs[len(logs)-1].Index)
	f.qcond.Broadcast()
	f.qmu.Unlock()
	return make([]interface{}, len(logs))
}

// hint tells the applier that the entry at index, written in term, is
// committed: the leader said so when it answered a write this node
// forwarded. Raft tells a follower of a commit only with the next append
// from the leader, up to CommitTimeout later; a client that waits for its
// own write to be applied here need not wait for that. If this node's log
// holds the same entry (index and term), it holds every entry before it as
// the leader does (Raft's log matching), all committed, and the applier
// applies them from the log. Raft hands them over again later; they are
// skipped then.
func (f *fsm) hint(index, term uint64) {
	f.qmu.Lock()
	if index > f.hinted {
		f.hinted, f.hintTerm = index, term
		f.qcond.Broadcast()
	}
	f.qmu.Unlock()
}

// logged is told the last index of every write to this node's log.
func (f *fsm) logged(last uint64) {
	f.qmu.Lock()
	f.loggedTo = last
	if f.hinted > 0 {
		f.qcond.Broadcast()
	}
	f.qmu.Unlock()
}

// useLog lets the applier read committed entries from the log (see hint).
func (f *fsm) useLog(logs raft.LogStore) {
	last, _ := logs.LastIndex()
	f.qmu.Lock()
	f.logs, f.loggedTo = logs, last
	f.qmu.Unlock()
}

// maxHintGap bounds how far ahead of Raft a hint is followed; a node that
// far behind is catching up, and Raft's own batches serve it better.
const maxHintGap = 512

// hintReady reports whether a hint can be followed now; qmu is held.
func (f *fsm) hintReady() bool {
	return f.logs != nil && f.hinted > max(f.applied.Load(), f.queuedTo) && f.hinted <= f.loggedTo
}

// fromLog reads the committed entries from..to from this node's log, if
// the entry at to has the given term; qmu is not held.
func (f *fsm) fromLog(from, to, term uint64) []*raft.Log {
	if to < from || to-from >= maxHintGap {
		return nil
	}
	var last raft.Log
	if err := f.logs.GetLog(to, &last); err != nil || last.Term != term {
		return nil
	}
	out := make([]*raft.Log, 0, to-from+1)
	for i := from; i < to; i++ {
		l := new(raft.Log)
		if err := f.logs.GetLog(i, l); err != nil {
			return nil
		}
		out = append(out, l)
	}
	return append(out, &last)
}

// next waits for the applier's next work: queued entries and a hint to
// follow (0 if none). It reports false when the applier is to stop.
func (f *fsm) next() (logs []*raft.Log, hinted, term uint64, ok bool) {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	for {
		// A hint is followed within the lazy window too: a write forwarded
		// and acknowledged at commit (SMTP's 250) has nobody waiting here,
		// and following each hint at once made a transaction per write.
		urgent := f.closing || f.waiters > 0 || f.due
		hint := f.hintReady()
		switch {
		case f.held:
		case hint && (urgent || f.hinted-f.applied.Load() >= lazyEntries):
			return f.take(), f.hinted, f.hintTerm, true
		case len(f.queue) > 0 && (urgent || len(f.queue) >= lazyEntries):
			return f.take(), 0, 0, true
		case (len(f.queue) > 0 || hint) && f.lazy == nil:
			f.lazy = time.AfterFunc(f.window, func() {
				f.qmu.Lock()
				f.due = true
				f.qcond.Broadcast()
				f.qmu.Unlock()
			})
		case len(f.queue) == 0 && f.closing:
			return nil, 0, 0, false
		}
		f.qcond.Wait()
	}
}

// take hands the queue to the applier; qmu is held.
func (f *fsm) take() []*raft.Log {
	logs := f.queue
	f.queue, f.qbytes, f.busy = nil, 0, true
	if f.lazy != nil {
		f.lazy.Stop()
		f.lazy = nil
	}
	f.due = false
	f.qcond.Broadcast()
	return logs
}

// run is the applier: it applies whatever is queued, and what a hint
// shows committed, a transaction at a time, until close.
func (f *fsm) run() {
	defer close(f.done)
	for {
		logs, hinted, term, ok := f.next()
		if !ok {
			return
		}
		if hinted > 0 {
			from := f.applied.Load() + 1
			if len(logs) > 0 {
				from = max(from, logs[len(logs)-1].Index+1)
			}
			extra := f.fromLog(from, hinted, term)
			if extra == nil {
				// Not this node's entry (its log diverged, or was compacted):
				// Raft will bring the commit.
				f.qmu.Lock()
				if f.hinted == hinted {
					f.hinted = 0
				}
				f.qmu.Unlock()
			}
			logs = append(logs, extra...)
			if f.metrics != nil {
				f.metrics.hinted.Add(float64(len(extra)))
			}
		}
		// Entries applied already (from a hint, or before a restart) are
		// dropped: a transaction with nothing in it still costs fsyncs.
		applied := f.applied.Load()
		for len(logs) > 0 && logs[0].Index <= applied {
			logs = logs[1:]
		}
		var err error
		if len(logs) > 0 {
			err = f.apply(logs)
		}

		f.qmu.Lock()
		f.busy = false
		if err != nil {
			f.failed = err
		}
		f.qcond.Broadcast()
		f.qmu.Unlock()
		if err != nil {
			f.fatal(err)
			return
		}
	}
}

// hold waits until everything queued is applied and keeps the applier
// still until release: Raft takes a snapshot or installs one believing the
// FSM has applied all it was handed, and nothing may be applied meanwhile.
func (f *fsm) hold() error {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	f.waiters++
	f.qcond.Broadcast()
	for (len(f.queue) > 0 || f.busy) && f.failed == nil {
		f.qcond.Wait()
	}
	f.waiters--
	if f.failed != nil {
		return f.failed
	}
	f.held = true
	return nil
}

func (f *fsm) release() {
	f.qmu.Lock()
	f.held = false
	f.qcond.Broadcast()
	f.qmu.Unlock()
}

// close applies what is queued and stops the applier; call it after Raft
// has shut down, before the store is closed.
func (f *fsm) close() {
	f.qmu.Lock()
	f.closing = true
	f.qcond.Broadcast()
	f.qmu.Unlock()
	<-f.done
}

// apply applies entries in one store transaction, recording the last index
// in the same transaction. Entries at or below the recorded index were
// applied before a restart and are skipped.
func (f *fsm) apply(logs []*raft.Log) error {
	start := time.Now()
	var fail error
	err := f.store.Update(func(tx *storage.Tx) error {
		done := tx.Applied()
		var last time.Time
		for _, l := range logs {
			if l.Index <= done {
				continue
			}
			if l.Type != raft.LogCommand {
				continue
			}
			env, err := command.Open(l.Data)
			if err != nil {
				fail = fmt.Errorf("log entry %d cannot be read: %w", l.Index, err)
				return fail
			}
			tx.SetClock(l.Index, env.Time)
			last = env.Time
			if _, err := f.applyEnvelope(tx, l.Index, env); err != nil {
				fail = fmt.Errorf("log entry %d (%s): %w", l.Index, env.Type, err)
				return fail
			}
		}
		if !last.IsZero() {
			if err := tx.PruneRequests(last.Add(-requestTTL).UnixNano()); err != nil {
				return err
			}
		}
		if idx := logs[len(logs)-1].Index; idx > done {
			return tx.SetApplied(idx)
		}
		return nil
	})
	if err != nil {
		// The transaction was rolled back: nothing of this batch is stored.
		// Raft counts the entries as applied, so this node must not go on;
		// it stops with the reason rather than diverge.
		if fail == nil {
			fail = fmt.Errorf("store write failed: %w", err)
		}
		return fail
	}
	f.applied.Store(logs[len(logs)-1].Index)
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	if f.metrics != nil {
		f.metrics.applyBatch.Observe(float64(len(logs)))
		f.metrics.applyLatency.Observe(time.Since(start).Seconds())
	}
	return nil
}

// applyEnvelope applies one command. Domain failures become the response;
// only an entry that cannot be decoded is an error.
func (f *fsm) applyEnvelope(tx *storage.Tx, index uint64, env command.Envelope) (command.Response, error) {
	if prev, ok := tx.Request(env.Request); ok {
		r, err := command.UnmarshalResponse(prev)
		return r, err
	}
	cmd, err := env.Decode()
	if errors.Is(err, command.ErrUnknownType) && env.Skippable {
		f.log.Warn("skipping a command type this build does not know", "index", index, "type", env.Type)
		return command.Response{Code: command.CodeSkipped, Message: "skipped by " + BuildVersion}, nil
	}
	if errors.Is(err, command.ErrUnknownType) {
		return command.Response{}, fmt.Errorf("%w; this build (%s, command version %d) is older than the node that wrote it: upgrade this node", err, BuildVersion, command.Version())
	}
	if err != nil {
		return command.Response{}, err
	}
	resp := f.applyCommand(tx, index, cmd)
	if err := tx.PutRequest(env.Request, resp.Marshal()); err != nil {
		return command.Response{}, err
	}
	return resp, nil
}

func (f *fsm) applyCommand(tx *storage.Tx, index uint64, cmd command.Command) command.Response {
	var err error
	var ids []uint64
	switch c := cmd.(type) {
	case *command.Init:
		err = tx.SetClusterID(c.ClusterID)
		if err == nil && len(c.DecoyKey) > 0 {
			err = tx.SetSetting(storage.SecretSASLDecoy, c.DecoyKey)
		}
	case *command.AddDomain:
		_, err = tx.AddDomain(c.Name)
	case *command.RemoveDomain:
		err = tx.RemoveDomain(c.Name)
	case *command.AddUser:
		var u storage.User
		u, err = tx.AddUser(storage.User{Address: c.Address, Name: c.Name, Secrets: c.Secrets, QuotaBytes: c.QuotaBytes})
		ids = []uint64{u.ID}
	case *command.SetSecrets:
		err = tx.SetSecrets(c.Address, c.Secrets)
	case *command.RemoveUser:
		err = tx.RemoveUser(c.Address)
	case *command.SetQuota:
		err = tx.SetQuota(c.Address, c.QuotaBytes)
	case *command.AddAlias:
		_, err = tx.AddAlias(c.Address, c.Targets)
	case *command.RemoveAlias:
		err = tx.RemoveAlias(c.Address)
	case *command.SetSetting:
		err = tx.SetSetting(c.Key, c.Value)
	case *command.Deliver:
		ids, err = applyDeliver(tx, c)
	case *command.Digest:
		sum := tx.Digest()
		f.mu.Lock()
		f.digests[index] = sum[:]
		if len(f.digests) > 64 {
			oldest := index
			for i := range f.digests {
				oldest = min(oldest, i)
			}
			delete(f.digests, oldest)
		}
		f.mu.Unlock()
		return command.Response{Digest: sum[:]}
	default:
		resp, ok, err := applyMailbox(tx, cmd)
		if !ok {
			resp, ok, err = applyQueue(tx, cmd)
		}
		if !ok {
			err = applyExtra(tx, cmd)
		}
		if err != nil {
			return command.Fail(err)
		}
		return resp
	}
	if err != nil {
		return command.Fail(err)
	}
	return command.Response{IDs: ids}
}

// applyDeliver stores the body once and a message in each target mailbox.
// A target refused (user gone, over quota) gets UID 0; the rest go ahead.
func applyDeliver(tx *storage.Tx, c *command.Deliver) ([]uint64, error) {
	if err := tx.PutBlob(c.Blob, c.Body); err != nil {
		return nil, err
	}
	ids := make([]uint64, 0, len(c.Targets)+1)
	for _, t := range c.Targets {
		name := t.Mailbox
		if name == "" {
			name = "INBOX"
		}
		mb, err := tx.Mailbox(t.UserID, name)
		if errors.Is(err, storage.ErrNotFound) && name != "INBOX" && !t.Exact {
			mb, err = tx.Mailbox(t.UserID, "INBOX")
		}
		if err != nil {
			ids = append(ids, 0)
			continue
		}
		m, err := tx.AppendMessage(mb.ID, storage.Message{
			Blob: c.Blob, Prefix: t.Prefix, Size: int64(len(t.Prefix)) + c.BodySize,
			InternalDate: c.InternalDate, Flags: t.Flags,
		}, t.EnforceQuota)
		if errors.Is(err, storage.ErrQuota) {
			ids = append(ids, 0)
			continue
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, uint64(m.UID))
	}
	if len(c.Queue) == 0 {
		// If every target was refused, the body is no one's: mark it as
		// garbage rather than keep it forever.
		return ids, tx.ForgetIfUnreferenced(c.Blob)
	}
	q, err := tx.Enqueue(storage.QueueEntry{
		From: c.From, Recipients: c.Queue, Blob: c.Blob, Prefix: c.QueuePrefix,
		Size: int64(len(c.QueuePrefix)) + c.BodySize, EnvID: c.EnvID, Ret: c.Ret,
	})
	if err != nil {
		return nil, err
	}
	return append(ids, q.ID), nil
}

// Applied is the last index this node has applied.
func (f *fsm) Applied() uint64 { return f.applied.Load() }

// wait blocks until index is applied or ctx ends. Entries the FSM never
// sees (no-ops, barriers) count as applied when onlySkipped says that
// nothing between the FSM's last index and index is for the FSM.
func (f *fsm) wait(ctx context.Context, index uint64, onlySkipped func(applied, index uint64) bool) error {
	if f.applied.Load() >= index {
		return nil
	}
	f.qmu.Lock()
	f.waiters++
	f.qcond.Broadcast()
	f.qmu.Unlock()
	defer func() {
		f.qmu.Lock()
		f.waiters--
		f.qmu.Unlock()
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		applied := f.applied.Load()
		if applied >= index || onlySkipped(applied, index) {
			return nil
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("waiting for index %d to be applied (at %d): %w", index, f.applied.Load(), ctx.Err())
		}
	}
}

// digest returns the digest this node recorded at a Digest entry.
func (f *fsm) digest(index uint64) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	d, ok := f.digests[index]
	return d, ok
}

// Snapshot captures a read view; the work happens in Persist, concurrently
// with further applies.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.hold(); err != nil {
		return nil, fmt.Errorf("snapshot: the state machine stopped: %w", err)
	}
	defer f.release()
	sn, err := f.store.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{sn: sn, metrics: f.metrics}, nil
}

// Restore installs a snapshot sent by the leader, fetching the bodies this
// node lacks from its peers before swapping the state in.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.hold(); err != nil {
		return fmt.Errorf("restore: the state machine stopped: %w", err)
	}
	defer f.release()
	start := time.Now()
	index, err := f.store.Restore(context.Background(), rc, f.fetch)
	if err != nil {
		f.log.Error("snapshot install failed; state left as it was", "err", err)
		return err
	}
	f.applied.Store(index)
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	f.log.Info("installed snapshot", "index", index, "took", time.Since(start))
	return nil
}

type fsmSnapshot struct {
	sn      *storage.Snapshot
	metrics *metrics
	once    sync.Once
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	// The read view is ended as soon as it is written: not every caller of
	// Persist calls Release (raft.RecoverCluster does not), and an open read
	// transaction would block closing the store.
	defer s.Release()
	start := time.Now()
	n, err := s.sn.WriteTo(sink)
	if err != nil {
		_ = sink.Cancel()
		return err
	}
	if err := sink.Close(); err != nil {
		return err
	}
	if s.metrics != nil {
		s.metrics.snapshotSeconds.Set(time.Since(start).Seconds())
		s.metrics.snapshotBytes.Set(float64(n))
	}
	return nil
}

func (s *fsmSnapshot) Release() { s.once.Do(s.sn.Release) }
