package cluster

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"
)

// countingStore counts the reads that reach the store under the cache.
type countingStore struct {
	*raft.InmemStore
	reads int
}

func (s *countingStore) GetLog(i uint64, l *raft.Log) error {
	s.reads++
	return s.InmemStore.GetLog(i, l)
}

func TestLogCacheServesNewSmallEntriesAndNeverAStaleOne(t *testing.T) {
	under := &countingStore{InmemStore: raft.NewInmemStore()}
	c := newLogCache(under)
	entry := func(i, term uint64, size int) *raft.Log {
		return &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, size)}
	}
	var logs []*raft.Log
	for i := uint64(1); i <= logCacheEntries+10; i++ {
		size := 100
		if i == 20 {
			size = logCacheMaxEntry + 1
		}
		logs = append(logs, entry(i, 1, size))
	}
	if err := c.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	get := func(i uint64) raft.Log {
		t.Helper()
		var l raft.Log
		if err := c.GetLog(i, &l); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		return l
	}
	// The newest entries come from memory, equal to what was stored.
	for i := uint64(11); i <= logCacheEntries+10; i++ {
		if i == 20 {
			continue
		}
		if l := get(i); l.Index != i || l.Term != 1 || len(l.Data) != 100 || l.Data[0] != byte(i) {
			t.Fatalf("entry %d read back as index %d term %d, %d bytes", i, l.Index, l.Term, len(l.Data))
		}
	}
	if under.reads != 0 {
		t.Errorf("%d reads reached the store for cached entries", under.reads)
	}
	// Older entries (their slots reused) and the large one come from disk.
	if l := get(5); l.Index != 5 || l.Data[0] != 5 || under.reads != 1 {
		t.Errorf("entry 5: index %d, %d store reads", l.Index, under.reads)
	}
	under.reads = 0
	if l := get(20); len(l.Data) != logCacheMaxEntry+1 || under.reads != 1 {
		t.Errorf("large entry: %d bytes, %d store reads", len(l.Data), under.reads)
	}
	// A follower drops entries a new leader overwrote: the replacement is
	// what is read back, never the old entry from memory.
	last := uint64(logCacheEntries + 10)
	if err := c.DeleteRange(last-5, last); err != nil {
		t.Fatal(err)
	}
	if err := c.StoreLogs([]*raft.Log{entry(last-5, 2, 7)}); err != nil {
		t.Fatal(err)
	}
	if l := get(last - 5); l.Term != 2 || len(l.Data) != 7 {
		t.Errorf("replaced entry read back with term %d, %d bytes", l.Term, len(l.Data))
	}
	var l raft.Log
	if err := c.GetLog(last, &l); err == nil {
		t.Errorf("deleted entry %d still readable", last)
	}
}
