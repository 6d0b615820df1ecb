package storage

import (
	"encoding/binary"
)

// Every replicated write carries a request ID. The response to each is kept
// for a while, so that a write retried after a lost reply (a forwarded write
// whose answer never came back) is answered again instead of applied twice.

// RequestID identifies one write.
type RequestID [16]byte

// Request returns the stored response of a write already applied.
func (tx *Tx) Request(id RequestID) ([]byte, bool) {
	v := tx.tx.Bucket(bRequests).Get(id[:])
	if v == nil {
		return nil, false
	}
	return append([]byte(nil), v[8:]...), true
}

// PutRequest records the response of a write, stamped with the clock.
func (tx *Tx) PutRequest(id RequestID, response []byte) error {
	v := append(u64(uint64(tx.now)), response...)
	if err := tx.tx.Bucket(bRequests).Put(id[:], v); err != nil {
		return err
	}
	return tx.tx.Bucket(bReqTimes).Put(append(u64(uint64(tx.now)), id[:]...), nil)
}

// PruneRequests forgets responses recorded before the given time (unix
// nanoseconds, from the replicated clock, so every node forgets the same).
func (tx *Tx) PruneRequests(before int64) error {
	times, reqs := tx.tx.Bucket(bReqTimes), tx.tx.Bucket(bRequests)
	c := times.Cursor()
	for k, _ := c.First(); k != nil && int64(binary.BigEndian.Uint64(k[:8])) < before; k, _ = c.First() {
		if err := reqs.Delete(k[8:]); err != nil {
			return err
		}
		if err := times.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Setting returns a cluster-wide setting, or nil.
func (tx *Tx) Setting(key string) []byte {
	if v := tx.tx.Bucket(bSettings).Get([]byte(key)); v != nil {
		return append([]byte(nil), v...)
	}
	return nil
}

// SetSetting stores a cluster-wide setting; a nil value deletes it.
func (tx *Tx) SetSetting(key string, value []byte) error {
	tx.emit(Event{Kind: DirectoryChanged})
	if value == nil {
		return tx.tx.Bucket(bSettings).Delete([]byte(key))
	}
	return tx.tx.Bucket(bSettings).Put([]byte(key), value)
}
