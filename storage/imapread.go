package storage

import (
	"bytes"
	"crypto/sha256"
	"fmt"
)

// Read helpers for IMAP sessions on large mailboxes: each reads an index or
// stops early, so that opening a mailbox does not decode every message.

// UIDRun is a run of consecutive UIDs: First, First+1, ... First+Count-1.
type UIDRun struct {
	First, Count uint32
}

// UIDRuns returns the UIDs of a mailbox as runs of consecutive values, in
// order, read from the keys-only UID index. UIDs are handed out in order and
// only expunges make holes, so a mailbox of any size is usually a few runs.
func (tx *Tx) UIDRuns(mailboxID uint64) ([]UIDRun, error) {
	idx := tx.tx.Bucket(bUIDs).Bucket(u64(mailboxID))
	if idx == nil {
		return nil, fmt.Errorf("mailbox #%d: %w", mailboxID, ErrNotFound)
	}
	var out []UIDRun
	c := idx.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		uid := beU32(k)
		if n := len(out); n > 0 && out[n-1].First+out[n-1].Count == uid {
			out[n-1].Count++
			continue
		}
		out = append(out, UIDRun{First: uid, Count: 1})
	}
	return out, nil
}

// UIDsFrom calls fn for the UIDs of a mailbox from uid on, in order, from
// the keys-only index, until fn returns false.
func (tx *Tx) UIDsFrom(mailboxID uint64, uid uint32, fn func(uint32) bool) error {
	idx := tx.tx.Bucket(bUIDs).Bucket(u64(mailboxID))
	if idx == nil {
		return fmt.Errorf("mailbox #%d: %w", mailboxID, ErrNotFound)
	}
	c := idx.Cursor()
	for k, _ := c.Seek(u32(uid)); k != nil; k, _ = c.Next() {
		if !fn(beU32(k)) {
			break
		}
	}
	return nil
}

// FirstUnseen returns the lowest UID of a message without \Seen, looking at
// no more than limit messages (0: no limit). found is false when there is
// none or the limit was reached first.
func (tx *Tx) FirstUnseen(mailboxID uint64, limit int) (uid uint32, found bool, err error) {
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return 0, false, err
	}
	c := msgs.Cursor()
	n := 0
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if limit > 0 && n >= limit {
			return 0, false, nil
		}
		n++
		if !mayHaveFlag(v, `\Seen`) {
			return beU32(k), true, nil
		}
		var m Message
		if err := m.unmarshal(v); err != nil {
			return 0, false, err
		}
		if !m.HasFlag(`\Seen`) {
			return m.UID, true, nil
		}
	}
	return 0, false, nil
}

// UIDsWithFlag returns, in order, the UIDs of the messages of a mailbox that
// carry flag (compared as IMAP does, ASCII case-insensitively). Records that
// cannot hold the flag are skipped without being decoded.
func (tx *Tx) UIDsWithFlag(mailboxID uint64, flag string) ([]uint32, error) {
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return nil, err
	}
	var out []uint32
	c := msgs.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if !mayHaveFlag(v, flag) {
			continue
		}
		var m Message
		if err := m.unmarshal(v); err != nil {
			return nil, err
		}
		if m.HasFlag(flag) {
			out = append(out, m.UID)
		}
	}
	return out, nil
}

// mayHaveFlag is a quick test on an encoded record: false means the record
// certainly does not contain flag in any letter case.
func mayHaveFlag(rec []byte, flag string) bool {
	if len(flag) == 0 || 'a' <= flag[0]|0x20 && flag[0]|0x20 <= 'z' {
		return true // no quick test for a first byte with two cases
	}
	n := len(flag)
	for i := 0; i+n <= len(rec); i++ {
		j := bytes.IndexByte(rec[i:], flag[0])
		if j < 0 {
			return false
		}
		i += j
		if i+n > len(rec) {
			return false
		}
		if equalFold(string(rec[i:i+n]), flag) {
			return true
		}
	}
	return false
}

// MessagesByUID calls fn, in the order given, for each of the UIDs that is
// in the mailbox (missing ones are skipped), opening the mailbox once.
func (tx *Tx) MessagesByUID(mailboxID uint64, uids []uint32, fn func(Message) error) error {
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return err
	}
	// A cursor walks ascending UIDs page by page; Seek only on a jump.
	c := msgs.Cursor()
	var k, v []byte
	for i, uid := range uids {
		switch {
		case i == 0 || uid <= uids[i-1] || k == nil:
			k, v = c.Seek(u32(uid))
		default:
			for n := 0; k != nil && beU32(k) < uid; n++ {
				if n == 8 {
					k, v = c.Seek(u32(uid))
					break
				}
				k, v = c.Next()
			}
		}
		if k == nil || beU32(k) != uid {
			continue
		}
		var m Message
		if err := m.unmarshal(v); err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}

// MessageBytes appends a message's bytes (its prefix, then its body,
// decompressed and checked against its hash) to dst[:0] and returns them,
// so that a caller reading many messages can reuse one buffer.
func (tx *Tx) MessageBytes(m Message, dst []byte) ([]byte, error) {
	v := tx.blob(m.Blob[:])
	if v == nil {
		return nil, fmt.Errorf("blob %s: %w", m.Blob, ErrNotFound)
	}
	dst = append(dst[:0], m.Prefix...)
	out, err := tx.s.dec.DecodeAll(v, dst)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", m.Blob, err)
	}
	if sha256.Sum256(out[len(m.Prefix):]) != m.Blob {
		return nil, fmt.Errorf("blob %s: content does not match its hash", m.Blob)
	}
	return out, nil
}
