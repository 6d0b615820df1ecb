package storage

import (
	"fmt"

	"github.com/flotilla-mail/flotilla/storage/codec"
)

var bPopLocks = []byte("poplocks")

// PopLock is the cluster-wide POP3 maildrop lock of one user (RFC 1939
// wants one session per maildrop). It is a lease: a holder renews it, and a
// lock left by a dead node lapses at Until, judged by the replicated clock.
type PopLock struct {
	Node  string
	Token uint64
	Until int64 // unix nanoseconds
}

func (l *PopLock) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.String(1, l.Node)
	e.Uint(2, l.Token)
	e.Int(3, l.Until)
	return e.Bytes()
}

func (l *PopLock) unmarshal(b []byte) error {
	return decodeRecord("pop lock", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			l.Node = f.String()
		case 2:
			l.Token = f.Uint()
		case 3:
			l.Until = f.Int()
		}
	})
}

// AcquirePopLock takes or renews a user's maildrop lock for token until the
// given time. It fails with ErrLocked while another live lease holds it.
func (tx *Tx) AcquirePopLock(userID uint64, l PopLock) error {
	b := tx.tx.Bucket(bPopLocks)
	if v := b.Get(u64(userID)); v != nil {
		var cur PopLock
		if err := cur.unmarshal(v); err != nil {
			return err
		}
		if cur.Token != l.Token && cur.Until > tx.now {
			return fmt.Errorf("%w: maildrop in use by a session on node %s", ErrLocked, cur.Node)
		}
	}
	return b.Put(u64(userID), l.marshal())
}

// ReleasePopLock drops a user's lock if token holds it.
func (tx *Tx) ReleasePopLock(userID uint64, token uint64) error {
	b := tx.tx.Bucket(bPopLocks)
	v := b.Get(u64(userID))
	if v == nil {
		return nil
	}
	var cur PopLock
	if err := cur.unmarshal(v); err != nil {
		return err
	}
	if cur.Token != token {
		return nil
	}
	return b.Delete(u64(userID))
}
