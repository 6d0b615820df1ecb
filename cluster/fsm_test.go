package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// testFSM is an FSM on a fresh store with a log holding AddDomain entries
// d1..dN at indexes 1..N in the given terms.
func testFSM(t *testing.T, terms ...uint64) (*fsm, *storage.Store, []*raft.Log) {
	t.Helper()
	store, err := storage.Open(filepath.Join(t.TempDir(), "state.db"), storage.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := newFSM(store, slog.New(slog.DiscardHandler), nil, func(err error) { t.Errorf("fsm failed: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.close(); store.Close() })
	logs := raft.NewInmemStore()
	var entries []*raft.Log
	for i, term := range terms {
		id := storage.NewRequestID(time.Unix(1700000000, 0), []byte{byte(i), 0, 0, 0, 0, 0, 0, 1})
		data := command.Encode(&command.AddDomain{Name: fmt.Sprintf("d%d.example", i+1)}, id, time.Unix(1700000000, 0))
		entries = append(entries, &raft.Log{Index: uint64(i + 1), Term: term, Type: raft.LogCommand, Data: data})
	}
	if err := logs.StoreLogs(entries); err != nil {
		t.Fatal(err)
	}
	f.useLog(logs)
	return f, store, entries
}

func domainNames(t *testing.T, store *storage.Store) []string {
	t.Helper()
	var names []string
	err := store.View(func(tx *storage.Tx) error {
		ds, err := tx.Domains()
		for _, d := range ds {
			names = append(names, d.Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func waitApplied(t *testing.T, f *fsm, index uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.wait(ctx, index, func(uint64, uint64) bool { return false }); err != nil {
		t.Fatal(err)
	}
}

// A hint applies the committed prefix from the log at once; Raft's later
// hand-over of the same entries changes nothing; entries past the hint
// wait for Raft.
func TestHintAppliesCommittedPrefixOnce(t *testing.T) {
	f, store, entries := testFSM(t, 1, 1, 1, 1)
	f.hint(2, 1)
	waitApplied(t, f, 2)
	if got := domainNames(t, store); fmt.Sprint(got) != "[d1.example d2.example]" {
		t.Fatalf("after a hint at 2: domains %v", got)
	}
	// Raft now hands over everything, the hinted entries included.
	f.ApplyBatch(entries[:3])
	f.ApplyBatch(entries[3:])
	waitApplied(t, f, 4)
	if err := f.hold(); err != nil {
		t.Fatal(err)
	}
	f.release()
	if got := domainNames(t, store); fmt.Sprint(got) != "[d1.example d2.example d3.example d4.example]" {
		t.Fatalf("after Raft's batches: domains %v", got)
	}
	if got, _ := store.Applied(); got != 4 || f.Applied() != 4 {
		t.Fatalf("applied index: store %d, fsm %d; want 4", got, f.Applied())
	}
}

// A hint that nobody on this node waits for (a forwarded write acknowledged
// at commit) waits out the lazy window like queued entries do, instead of
// costing a transaction per write; a waiter ends the window at once.
func TestHintWithoutWaitersGathersInTheLazyWindow(t *testing.T) {
	f, store, _ := testFSM(t, 1, 1, 1)
	f.qmu.Lock()
	f.window = time.Hour
	f.qmu.Unlock()
	f.hint(3, 1)
	deadline := time.Now().Add(10 * time.Second)
	for { // until the applier has seen the hint and chose to wait
		f.qmu.Lock()
		waiting := f.lazy != nil
		f.qmu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) || f.Applied() > 0 {
			t.Fatalf("a hint nobody waits for: applied %d at once, want it held for the lazy window", f.Applied())
		}
		time.Sleep(time.Millisecond)
	}
	if got := f.Applied(); got != 0 {
		t.Fatalf("applied %d inside the lazy window", got)
	}
	waitApplied(t, f, 3)
	if got := domainNames(t, store); fmt.Sprint(got) != "[d1.example d2.example d3.example]" {
		t.Fatalf("after a waiter: domains %v", got)
	}
}

// A hint whose term is not the one in this node's log (the log diverged
// from the leader's there), or that reaches past it, yields nothing.
func TestHintIgnoresEntriesThatAreNotTheLeaders(t *testing.T) {
	f, _, _ := testFSM(t, 1, 1, 2)
	for _, c := range []struct{ from, to, term uint64 }{
		{1, 3, 3},              // another term at 3
		{1, 2, 2},              // entry 2 is term 1 here
		{1, 9, 2},              // past the end of the log
		{1, 1 + maxHintGap, 2}, // too far ahead of Raft
		{3, 2, 1},              // empty range
	} {
		if got := f.fromLog(c.from, c.to, c.term); got != nil {
			t.Errorf("fromLog(%d, %d, term %d) = %d entries, want none", c.from, c.to, c.term, len(got))
		}
	}
	got := f.fromLog(2, 3, 2)
	if len(got) != 2 || got[0].Index != 2 || got[1].Index != 3 {
		t.Errorf("fromLog(2, 3, term 2) = %v, want entries 2 and 3", got)
	}
}

// Entries nobody waits for are applied too, once the lazy window ends; a
// snapshot taken meanwhile first applies everything queued.
func TestLazyApplyWithoutWaiters(t *testing.T) {
	f, store, entries := testFSM(t, 1, 1, 1)
	f.ApplyBatch(entries[:2])
	deadline := time.Now().Add(10 * time.Second)
	for f.Applied() < 2 { // polling: a waiter would end the window itself
		if time.Now().After(deadline) {
			t.Fatalf("entries nobody waits for were never applied (applied %d)", f.Applied())
		}
		time.Sleep(time.Millisecond)
	}
	f.ApplyBatch(entries[2:])
	sn, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sn.Release()
	if got, _ := store.Applied(); got != 3 {
		t.Fatalf("snapshot taken with entry 3 queued: store at %d, want 3", got)
	}
}
