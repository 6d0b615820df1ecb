package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// commitTracker tells proposers that their entry is committed (stored on a
// majority) as soon as it is, without waiting for it to be applied: that is
// what an SMTP 250 promises, and it saves the apply's fsync from the
// reply's latency.
//
// hashicorp/raft reports an entry only after applying it, so the tracker
// watches from two sides. The log store wrapper learns the index and term an
// entry got when this node wrote it; once Raft's commit index reaches that
// index and the log still holds the same term there, the entry is committed
// (Raft's log matching property). And the FSM learns of every batch before
// applying it; arrival there is commit too. Whichever comes first answers.
type commitTracker struct {
	raft  func() *raft.Raft
	logs  raft.LogStore
	mu    sync.Mutex
	wait  map[storage.RequestID]*commitWaiter
	count atomic.Int32
	wake  chan struct{}
}

type commitWaiter struct {
	ch    chan position
	index uint64 // 0 until this node stored the entry
	term  uint64
}

func newCommitTracker(logs raft.LogStore, r func() *raft.Raft) *commitTracker {
	return &commitTracker{raft: r, logs: logs, wait: map[storage.RequestID]*commitWaiter{}, wake: make(chan struct{}, 1)}
}

// position is where an entry sits in the log: its index and the term it was
// written in.
type position struct{ index, term uint64 }

// await registers a proposer; the channel receives the entry's position.
func (t *commitTracker) await(req storage.RequestID) (<-chan position, func()) {
	w := &commitWaiter{ch: make(chan position, 1)}
	t.mu.Lock()
	t.wait[req] = w
	t.count.Add(1)
	t.mu.Unlock()
	return w.ch, func() {
		t.mu.Lock()
		if t.wait[req] == w {
			delete(t.wait, req)
			t.count.Add(-1)
		}
		t.mu.Unlock()
	}
}

// eachWaited calls fn for the entries of logs that someone waits for.
func (t *commitTracker) eachWaited(logs []*raft.Log, fn func(*raft.Log, *commitWaiter, storage.RequestID)) {
	if t.count.Load() == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		env, err := command.Open(l.Data)
		if err != nil {
			continue
		}
		if w, ok := t.wait[env.Request]; ok {
			fn(l, w, env.Request)
		}
	}
}

// stored is called after this node's log store has written logs durably.
// Entries of term proven (0: none) are known committed by that (see
// provenTerm) and answered at once; it returns how many were.
func (t *commitTracker) stored(logs []*raft.Log, proven uint64) int {
	found, answered := false, 0
	t.eachWaited(logs, func(l *raft.Log, w *commitWaiter, req storage.RequestID) {
		if proven != 0 && l.Term == proven {
			t.answer(req, w, position{l.Index, l.Term})
			answered++
			return
		}
		w.index, w.term = l.Index, l.Term
		found = true
	})
	if found {
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
	return answered
}

// applying is called by the FSM with a batch of committed entries.
func (t *commitTracker) applying(logs []*raft.Log) {
	t.eachWaited(logs, func(l *raft.Log, w *commitWaiter, req storage.RequestID) {
		t.answer(req, w, position{l.Index, l.Term})
	})
}

// answer must be called with t.mu held.
func (t *commitTracker) answer(req storage.RequestID, w *commitWaiter, at position) {
	w.ch <- at
	delete(t.wait, req)
	t.count.Add(-1)
}

// run watches the commit index while entries this node stored are waited
// for. Raft offers no commit notification, so it polls, briefly.
func (t *commitTracker) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.wake:
		}
		for t.check() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}
}

// check answers the waiters whose entries are committed and reports
// whether any stored entry is still waited for.
func (t *commitTracker) check() bool {
	r := t.raft()
	if r == nil {
		return false
	}
	commit, term := r.CommitIndex(), r.CurrentTerm()
	t.mu.Lock()
	defer t.mu.Unlock()
	pending := false
	for req, w := range t.wait {
		if w.index == 0 {
			continue
		}
		if w.index > commit {
			pending = true
			continue
		}
		// In the term the entry was stored in, no other entry can have
		// taken its index (one leader a term); only after a change of
		// term must the log be read to see that it still holds it.
		var l raft.Log
		if w.term == term {
			t.answer(req, w, position{w.index, w.term})
			continue
		}
		if err := t.logs.GetLog(w.index, &l); err != nil || l.Term != w.term {
			// Overwritten by another leader: the entry was not committed
			// here; the proposer learns it from its apply future.
			w.index = 0
			continue
		}
		t.answer(req, w, position{w.index, w.term})
	}
	return pending
}

// trackingLogStore tells the tracker what this node has stored, and times
// the log's writes.
type trackingLogStore struct {
	raft.LogStore
	t    *commitTracker
	self raft.ServerID
	// readsLast reports whether a leader reads at its last index (see
	// provenTerm).
	readsLast func(raft.ServerID) bool
	fsm       *fsm
	metrics   *metrics
}

func (s trackingLogStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

func (s trackingLogStore) StoreLogs(logs []*raft.Log) error {
	var proven uint64
	if s.t.count.Load() > 0 {
		proven = provenTerm(s.t.raft(), s.self, s.readsLast, logs)
	}
	start := time.Now()
	if err := s.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	if s.metrics != nil {
		s.metrics.logStore.Observe(time.Since(start).Seconds())
		s.metrics.logBatch.Observe(float64(len(logs)))
	}
	if n := s.t.stored(logs, proven); n > 0 && s.metrics != nil {
		s.metrics.provenHere.Add(float64(n))
	}
	if s.fsm != nil && len(logs) > 0 {
		s.fsm.logged(logs[len(logs)-1].Index)
	}
	return nil
}
