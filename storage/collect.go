package storage

import (
	"fmt"
)

// Mail collection state: which node polls an account (a lease, judged by
// the replicated clock) and which remote messages of each account were
// stored already, so that none is stored twice across nodes and restarts.
// Both live in buckets nested in the queue bucket (see queue_lease.go).

// A lease is stored as a PopLock record (node, until).

// AcquireCollectLease gives node the lease of account until the given
// time, if the account is free, held by node, or its lease has lapsed.
func (tx *Tx) AcquireCollectLease(account, node string, until int64) error {
	b, err := tx.nested(true, kCollectLk)
	if err != nil {
		return err
	}
	if v := b.Get([]byte(account)); v != nil {
		var cur PopLock
		if err := cur.unmarshal(v); err != nil {
			return err
		}
		if cur.Node != node && cur.Until > tx.now {
			return fmt.Errorf("%w: account %s is being collected by node %s", ErrLocked, account, cur.Node)
		}
	}
	l := PopLock{Node: node, Until: until}
	return b.Put([]byte(account), l.marshal())
}

// ReleaseCollectLease drops node's lease of account, if it holds it.
func (tx *Tx) ReleaseCollectLease(account, node string) error {
	b, err := tx.nested(false, kCollectLk)
	if err != nil || b == nil {
		return err
	}
	v := b.Get([]byte(account))
	if v == nil {
		return nil
	}
	var cur PopLock
	if err := cur.unmarshal(v); err != nil {
		return err
	}
	if cur.Node != node {
		return nil
	}
	return b.Delete([]byte(account))
}

// CollectLeaseOf returns who holds an account's lease, and until when.
func (tx *Tx) CollectLeaseOf(account string) (node string, until int64, err error) {
	b, err := tx.nested(false, kCollectLk)
	if err != nil || b == nil {
		return "", 0, err
	}
	v := b.Get([]byte(account))
	if v == nil {
		return "", 0, nil
	}
	var cur PopLock
	err = cur.unmarshal(v)
	return cur.Node, cur.Until, err
}

// Collected reports whether the remote message uid of account was stored.
func (tx *Tx) Collected(account, uid string) (bool, error) {
	b, err := tx.nested(false, kCollect, []byte(account))
	if err != nil || b == nil {
		return false, err
	}
	return b.Get([]byte(uid)) != nil, nil
}

// MarkCollected remembers that the remote message uid of account was stored.
func (tx *Tx) MarkCollected(account, uid string) error {
	if account == "" || uid == "" {
		return fmt.Errorf("%w: collected message without account or uid", ErrInvalid)
	}
	b, err := tx.nested(true, kCollect, []byte(account))
	if err != nil {
		return err
	}
	return b.Put([]byte(uid), []byte{1})
}

// ForgetCollected forgets remembered uids of account; with all, the account.
func (tx *Tx) ForgetCollected(account string, uids []string, all bool) error {
	if all {
		b, err := tx.nested(false, kCollect)
		if err != nil || b == nil || b.Bucket([]byte(account)) == nil {
			return err
		}
		return b.DeleteBucket([]byte(account))
	}
	b, err := tx.nested(false, kCollect, []byte(account))
	if err != nil || b == nil {
		return err
	}
	for _, u := range uids {
		if err := b.Delete([]byte(u)); err != nil {
			return err
		}
	}
	return nil
}

// CollectedUIDs calls fn with every remembered uid of account.
func (tx *Tx) CollectedUIDs(account string, fn func(uid string)) error {
	b, err := tx.nested(false, kCollect, []byte(account))
	if err != nil || b == nil {
		return err
	}
	return b.ForEach(func(k, _ []byte) error {
		fn(string(k))
		return nil
	})
}
