package cluster

import (
	"context"
	"sync/atomic"
	"testing"
)

func TestLeaderWatch(t *testing.T) {
	var now atomic.Value
	now.Store("a:7000")
	w := newLeaderWatch(func() string { return now.Load().(string) })

	a := w.of("a:7000") // before any refresh: Raft is asked
	if a.Err() != nil {
		t.Fatal("the context for the current leader has ended")
	}
	if w.of("b:7000").Err() == nil {
		t.Fatal("a context for a node that is not the leader is live")
	}
	if a.Err() != nil {
		t.Fatal("asking about another node ended the current leader's context")
	}

	now.Store("b:7000")
	if a.Err() != nil {
		t.Fatal("ended before the change was seen")
	}
	w.refresh()
	if a.Err() != context.Canceled {
		t.Fatalf("after the leader changed: %v, want canceled", a.Err())
	}
	if w.of("a:7000").Err() == nil {
		t.Fatal("a context for the old leader is live")
	}
	b := w.of("b:7000")
	if b.Err() != nil {
		t.Fatal("the new leader's context has ended")
	}

	// No leader, then the same one again: what was handed out for it ended.
	now.Store("")
	w.refresh()
	now.Store("b:7000")
	w.refresh()
	if b.Err() == nil {
		t.Fatal("a leaderless moment did not end the leader's context")
	}
	if w.of("b:7000").Err() != nil {
		t.Fatal("the re-elected leader's context has ended")
	}

	// A change Raft knows but the watch has not observed yet is found by of.
	c := w.of("b:7000")
	now.Store("c:7000")
	if w.of("c:7000").Err() != nil {
		t.Fatal("of did not take the leader from Raft")
	}
	if c.Err() == nil {
		t.Fatal("the old leader's context lived on after of saw the change")
	}
}
