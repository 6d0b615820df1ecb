package storage

import (
	"encoding/binary"
	"time"
)

// Every replicated write carries a request ID. The response to each is kept
// for a while, so that a write retried after a lost reply (a forwarded write
// whose answer never came back) is answered again instead of applied twice.
// IDs begin with the proposer's clock, so the bucket grows at its end (one
// page written per batch, not one per write) and is pruned from its start.

// RequestID identifies one write: 8 bytes of unix nanoseconds, 8 random.
type RequestID [16]byte

// NewRequestID makes an ID stamped with now; random must be 8 random bytes.
func NewRequestID(now time.Time, random []byte) RequestID {
	var id RequestID
	binary.BigEndian.PutUint64(id[:8], uint64(now.UnixNano()))
	copy(id[8:], random)
	return id
}

// Request returns the stored response of a write already applied.
func (tx *Tx) Request(id RequestID) ([]byte, bool) {
	v := tx.tx.Bucket(bRequests).Get(id[:])
	if v == nil {
		return nil, false
	}
	return append([]byte(nil), v...), true
}

// PutRequest records the response of a write.
func (tx *Tx) PutRequest(id RequestID, response []byte) error {
	return tx.tx.Bucket(bRequests).Put(id[:], response)
}

// PruneRequests forgets responses of writes stamped before the given time
// (unix nanoseconds, from the log, so every node forgets the same).
func (tx *Tx) PruneRequests(before int64) error {
	reqs := tx.tx.Bucket(bRequests)
	c := reqs.Cursor()
	for k, _ := c.First(); k != nil && int64(binary.BigEndian.Uint64(k[:8])) < before; k, _ = c.First() {
		if err := reqs.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Secret settings are shared by every node and never shown by the API.
const (
	// SecretSASLDecoy keys the made-up SCRAM salts of unknown users, the
	// same on every node so that asking two nodes tells nothing.
	SecretSASLDecoy = "secret.sasl-decoy"
)

// Secret reads a secret setting on this node, nil until the cluster has it.
func (s *Store) Secret(name string) []byte {
	var v []byte
	_ = s.View(func(tx *Tx) error {
		v = tx.Setting(name)
		return nil
	})
	return v
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
