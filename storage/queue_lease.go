package storage

import (
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/flotilla-mail/flotilla/storage/codec"
)

// Outbound delivery state beside the queue entries. It lives in buckets
// nested in the queue bucket (keys that are not entry IDs), so that it is
// replicated, hashed and carried by snapshots with the queue itself.
var (
	kQueueMeta = []byte("meta")    // entry id -> QueueMeta
	kCollect   = []byte("collect") // account -> nested: uid -> nil
	kCollectLk = []byte("collect-lease")
)

// nested returns a bucket nested in the queue bucket, creating it when
// create is set (only in a write transaction: Apply creates it at the same
// index on every node).
func (tx *Tx) nested(create bool, path ...[]byte) (*bolt.Bucket, error) {
	b := tx.tx.Bucket(bQueue)
	for _, p := range path {
		nb := b.Bucket(p)
		if nb == nil {
			if !create {
				return nil, nil
			}
			var err error
			if nb, err = b.CreateBucket(p); err != nil {
				return nil, fmt.Errorf("queue bucket %s: %w", p, err)
			}
		}
		b = nb
	}
	return b, nil
}

// QueueMeta is what delivery remembers of an entry beyond its record.
type QueueMeta struct {
	DelayNotified bool  // the sender was told of a delay
	LastAttempt   int64 // unix nanoseconds of the last recorded attempt
}

func (m *QueueMeta) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.Bool(1, m.DelayNotified)
	e.Int(2, m.LastAttempt)
	return e.Bytes()
}

func (m *QueueMeta) unmarshal(b []byte) error {
	return decodeRecord("queue meta", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			m.DelayNotified = f.Bool()
		case 2:
			m.LastAttempt = f.Int()
		}
	})
}

// QueueMeta returns an entry's delivery state (zero if none recorded).
func (tx *Tx) QueueMeta(id uint64) (QueueMeta, error) {
	var m QueueMeta
	b, err := tx.nested(false, kQueueMeta)
	if err != nil || b == nil {
		return m, err
	}
	if v := b.Get(u64(id)); v != nil {
		return m, m.unmarshal(v)
	}
	return m, nil
}

// PutQueueMeta records an entry's delivery state.
func (tx *Tx) PutQueueMeta(id uint64, m QueueMeta) error {
	b, err := tx.nested(true, kQueueMeta)
	if err != nil {
		return err
	}
	return b.Put(u64(id), m.marshal())
}

func (tx *Tx) deleteQueueMeta(id uint64) error {
	b, err := tx.nested(false, kQueueMeta)
	if err != nil || b == nil {
		return err
	}
	return b.Delete(u64(id))
}

// LeaseFree reports whether an entry's lease is free for node at time now
// (unix nanoseconds): unleased, leased by node, or lapsed.
func (q *QueueEntry) LeaseFree(node string, now int64) bool {
	return q.LeaseNode == "" || q.LeaseNode == node || q.LeaseUntil <= now
}

// ClaimQueueEntry gives node the delivery lease of an entry until the given
// time, if the entry is not held, has a recipient pending, is due (or is
// node's already), and its lease is free at the transaction's time. It
// reports whether the lease was granted.
func (tx *Tx) ClaimQueueEntry(id uint64, node string, until int64) (bool, error) {
	q, err := tx.QueueEntry(id)
	if err != nil {
		return false, err
	}
	if q.Held || !q.Pending() || !q.LeaseFree(node, tx.now) {
		return false, nil
	}
	// Not due yet: only the holder may renew (a renewal that comes after
	// the node's own result finds the lease gone and is refused).
	if q.NextAttempt > tx.now && q.LeaseNode != node {
		return false, nil
	}
	q.LeaseNode, q.LeaseUntil = node, until
	return true, tx.PutQueueEntry(q)
}

// Pending reports whether some recipient of the entry is still pending.
func (q *QueueEntry) Pending() bool {
	for _, r := range q.Recipients {
		if r.State == RcptPending {
			return true
		}
	}
	return false
}
