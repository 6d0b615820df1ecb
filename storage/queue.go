package storage

import "fmt"

// Enqueue adds an outbound message and takes a reference on its body.
func (tx *Tx) Enqueue(q QueueEntry) (QueueEntry, error) {
	if len(q.Recipients) == 0 {
		return QueueEntry{}, fmt.Errorf("%w queue entry: no recipients", ErrInvalid)
	}
	id, err := tx.nextID("queue")
	if err != nil {
		return QueueEntry{}, err
	}
	q.ID = id
	q.Created = tx.now
	if q.NextAttempt == 0 {
		q.NextAttempt = tx.now
	}
	if err := tx.ref(q.Blob, 1); err != nil {
		return QueueEntry{}, err
	}
	tx.emit(Event{Kind: QueueChanged, ID: id})
	return q, tx.PutQueueEntry(q)
}

// PutQueueEntry stores an updated queue entry.
func (tx *Tx) PutQueueEntry(q QueueEntry) error {
	tx.emit(Event{Kind: QueueChanged, ID: q.ID})
	return tx.tx.Bucket(bQueue).Put(u64(q.ID), q.marshal())
}

// QueueEntry returns one queue entry.
func (tx *Tx) QueueEntry(id uint64) (QueueEntry, error) {
	var q QueueEntry
	v := tx.tx.Bucket(bQueue).Get(u64(id))
	if v == nil {
		return q, fmt.Errorf("queue entry %d: %w", id, ErrNotFound)
	}
	return q, q.unmarshal(v)
}

// QueueEntries calls fn for every queue entry in ID order until it returns false.
func (tx *Tx) QueueEntries(fn func(QueueEntry) bool) error {
	c := tx.tx.Bucket(bQueue).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil || len(k) != 8 {
			continue // a nested bucket of delivery state (queue_lease.go)
		}
		var q QueueEntry
		if err := q.unmarshal(v); err != nil {
			return err
		}
		if !fn(q) {
			return nil
		}
	}
	return nil
}

// DeleteQueueEntry removes a queue entry and releases its body.
func (tx *Tx) DeleteQueueEntry(id uint64) error {
	q, err := tx.QueueEntry(id)
	if err != nil {
		return err
	}
	if err := tx.ref(q.Blob, -1); err != nil {
		return err
	}
	if err := tx.deleteQueueMeta(id); err != nil {
		return err
	}
	tx.emit(Event{Kind: QueueChanged, ID: id})
	return tx.tx.Bucket(bQueue).Delete(u64(id))
}
