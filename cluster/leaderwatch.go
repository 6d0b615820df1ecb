package cluster

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// leaderWatch hands writes forwarded to a leader a context that ends as
// soon as this node learns of another leader, or of none: a request to a
// leader that was cut off would otherwise hang until its timeouts. One
// goroutine follows Raft's leader observations for every write in flight,
// rather than a goroutine and a ticker per write.
type leaderWatch struct {
	current func() string // the leader's address as Raft knows it now

	mu     sync.Mutex
	leader string
	ctx    context.Context // ends when leader stops being the leader
	cancel context.CancelFunc
}

func newLeaderWatch(current func() string) *leaderWatch {
	w := &leaderWatch{current: current}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	return w
}

// of returns a context that ends when leader is no longer the leader this
// node knows; it has ended already if leader is not the leader now.
func (w *leaderWatch) of(leader string) context.Context {
	w.mu.Lock()
	defer w.mu.Unlock()
	if leader != w.leader {
		// The observation may not have arrived yet: ask Raft itself.
		w.updateLocked(w.current())
		if leader != w.leader {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}
	}
	return w.ctx
}

// refresh takes the leader from Raft, ending the contexts of the old one
// if it changed.
func (w *leaderWatch) refresh() {
	w.mu.Lock()
	w.updateLocked(w.current())
	w.mu.Unlock()
}

func (w *leaderWatch) updateLocked(leader string) {
	if leader == w.leader {
		return
	}
	w.cancel()
	w.leader = leader
	w.ctx, w.cancel = context.WithCancel(context.Background())
}

// run refreshes on every leader observation until ctx ends. Observations
// are dropped when the channel is full, so a slow poll backs them up.
func (w *leaderWatch) run(ctx context.Context, r *raft.Raft) {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(obs)
	defer r.DeregisterObserver(obs)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		w.refresh()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-tick.C:
		}
	}
}
