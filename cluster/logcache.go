package cluster

import (
	"sync"

	"github.com/hashicorp/raft"
)

// logCache keeps the newest small log entries in memory. Raft reads every
// entry back soon after storing it: the leader to send it to each follower,
// every node to hand it to the state machine, the applier to follow a commit
// hint. From raft-boltdb each read is a bbolt lookup, a msgpack decode and a
// copy of the body (measured: 6-9% of a node's CPU under load). Raft's own
// LogCache bounds only the number of entries, and a few large messages
// would pin hundreds of megabytes; this one leaves large entries out.
type logCache struct {
	raft.LogStore
	mu   sync.RWMutex
	ring []*raft.Log // by index modulo its length
}

const (
	logCacheEntries  = 1024
	logCacheMaxEntry = 64 << 10 // bytes of data; larger entries are read from disk
)

func newLogCache(s raft.LogStore) *logCache {
	return &logCache{LogStore: s, ring: make([]*raft.Log, logCacheEntries)}
}

func (c *logCache) GetLog(index uint64, out *raft.Log) error {
	c.mu.RLock()
	l := c.ring[index%uint64(len(c.ring))]
	c.mu.RUnlock()
	if l != nil && l.Index == index {
		*out = *l
		return nil
	}
	return c.LogStore.GetLog(index, out)
}

func (c *logCache) StoreLog(l *raft.Log) error { return c.StoreLogs([]*raft.Log{l}) }

func (c *logCache) StoreLogs(logs []*raft.Log) error {
	if err := c.LogStore.StoreLogs(logs); err != nil {
		return err
	}
	c.mu.Lock()
	for _, l := range logs {
		slot := &c.ring[l.Index%uint64(len(c.ring))]
		if len(l.Data) <= logCacheMaxEntry {
			*slot = l
		} else {
			*slot = nil // an older entry in this slot must not outlive the store
		}
	}
	c.mu.Unlock()
	return nil
}

// DeleteRange forgets everything cached: deletions are rare (compaction,
// a follower dropping entries a new leader overwrote), and a later entry
// stored under a deleted index must never be answered with the old one.
func (c *logCache) DeleteRange(min, max uint64) error {
	c.mu.Lock()
	clear(c.ring)
	c.mu.Unlock()
	return c.LogStore.DeleteRange(min, max)
}
