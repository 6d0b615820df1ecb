package storage

import (
	"bytes"
	"fmt"
	"sort"
)

// FlagOp says how SetFlags combines flags with a message's own.
type FlagOp uint8

const (
	FlagsAdd FlagOp = iota + 1
	FlagsRemove
	FlagsReplace
)

// FlagResult is what SetFlags did.
type FlagResult struct {
	Changed []uint32 // messages whose flags changed (their MODSEQ is the change's)
	Failed  []uint32 // messages modified since UnchangedSince (RFC 7162 MODIFIED)
}

// recentFlag is session state in IMAP, never stored.
const recentFlag = `\Recent`

// normalizeFlags drops duplicates (ASCII case-insensitively, as IMAP
// compares them) and \Recent, and sorts, so that equal sets encode equally.
func normalizeFlags(flags []string) []string {
	out := make([]string, 0, len(flags))
	for _, f := range flags {
		if f == "" || equalFold(f, recentFlag) {
			continue
		}
		dup := false
		for _, g := range out {
			if equalFold(f, g) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, f)
		}
	}
	sort.Strings(out)
	return out
}

func sameFlags(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// SetFlags changes the flags of the given messages of a mailbox. Messages
// that no longer exist are skipped. With unchangedSince > 0, a message whose
// MODSEQ is above it is left alone and reported as failed (CONDSTORE).
func (tx *Tx) SetFlags(mailboxID uint64, uids []uint32, op FlagOp, flags []string, unchangedSince uint64) (FlagResult, error) {
	var res FlagResult
	mb, err := tx.MailboxByID(mailboxID)
	if err != nil {
		return res, err
	}
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return res, err
	}
	flags = normalizeFlags(flags)
	for _, uid := range uids {
		v := msgs.Get(u32(uid))
		if v == nil {
			continue
		}
		var m Message
		if err := m.unmarshal(v); err != nil {
			return res, err
		}
		if unchangedSince > 0 && m.ModSeq > unchangedSince {
			res.Failed = append(res.Failed, uid)
			continue
		}
		var next []string
		switch op {
		case FlagsAdd:
			next = normalizeFlags(append(append([]string{}, m.Flags...), flags...))
		case FlagsRemove:
			for _, f := range m.Flags {
				keep := true
				for _, r := range flags {
					if equalFold(f, r) {
						keep = false
					}
				}
				if keep {
					next = append(next, f)
				}
			}
			next = normalizeFlags(next)
		case FlagsReplace:
			next = flags
		default:
			return res, fmt.Errorf("%w flag operation %d", ErrInvalid, op)
		}
		if sameFlags(next, normalizeFlags(m.Flags)) {
			continue
		}
		wasSeen := m.HasFlag(`\Seen`)
		if err := tx.moveModSeq(mailboxID, m.ModSeq, uid); err != nil {
			return res, err
		}
		m.Flags, m.ModSeq = next, tx.seq
		if err := msgs.Put(u32(uid), m.marshal()); err != nil {
			return res, err
		}
		switch seen := m.HasFlag(`\Seen`); {
		case seen && !wasSeen:
			mb.Unseen--
		case !seen && wasSeen:
			mb.Unseen++
		}
		res.Changed = append(res.Changed, uid)
		tx.emit(Event{Kind: MessageFlags, UserID: mb.UserID, MailboxID: mb.ID, UID: uid})
	}
	if len(res.Changed) > 0 {
		mb.HighestModSeq = tx.seq
		return res, tx.putMailbox(mb)
	}
	return res, nil
}

// moveModSeq re-indexes a message under the current sequence.
func (tx *Tx) moveModSeq(mailboxID, old uint64, uid uint32) error {
	idx := tx.tx.Bucket(bModSeqs).Bucket(u64(mailboxID))
	if err := idx.Delete(append(u64(old), u32(uid)...)); err != nil {
		return err
	}
	return idx.Put(append(u64(tx.seq), u32(uid)...), nil)
}

// ExpungeDeleted is Expunge of those of uids that are flagged \Deleted.
func (tx *Tx) ExpungeDeleted(mailboxID uint64, uids []uint32) ([]uint32, error) {
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return nil, err
	}
	var deleted []uint32
	for _, uid := range uids {
		v := msgs.Get(u32(uid))
		if v == nil || !mayHaveFlag(v, `\Deleted`) {
			continue
		}
		var m Message
		if err := m.unmarshal(v); err != nil {
			return nil, err
		}
		if m.HasFlag(`\Deleted`) {
			deleted = append(deleted, uid)
		}
	}
	return tx.Expunge(mailboxID, deleted)
}

// Expunge removes messages from a mailbox and releases their bodies; it
// returns the UIDs actually removed, in order.
func (tx *Tx) Expunge(mailboxID uint64, uids []uint32) ([]uint32, error) {
	mb, err := tx.MailboxByID(mailboxID)
	if err != nil {
		return nil, err
	}
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return nil, err
	}
	idx := tx.tx.Bucket(bModSeqs).Bucket(u64(mailboxID))
	sorted := append([]uint32(nil), uids...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	var done []uint32
	for i, uid := range sorted {
		if i > 0 && sorted[i-1] == uid {
			continue
		}
		v := msgs.Get(u32(uid))
		if v == nil {
			continue
		}
		var m Message
		if err := m.unmarshal(v); err != nil {
			return nil, err
		}
		if err := msgs.Delete(u32(uid)); err != nil {
			return nil, err
		}
		if err := idx.Delete(append(u64(m.ModSeq), u32(uid)...)); err != nil {
			return nil, err
		}
		if err := tx.tx.Bucket(bUIDs).Bucket(u64(mailboxID)).Delete(u32(uid)); err != nil {
			return nil, err
		}
		if err := tx.ref(m.Blob, -1); err != nil {
			return nil, err
		}
		mb.Messages--
		mb.Size -= m.Size
		if !m.HasFlag(`\Seen`) {
			mb.Unseen--
		}
		done = append(done, uid)
		tx.emit(Event{Kind: MessageExpunged, UserID: mb.UserID, MailboxID: mb.ID, UID: uid})
	}
	if len(done) > 0 {
		mb.HighestModSeq = tx.seq
		return done, tx.putMailbox(mb)
	}
	return done, nil
}

// CopyMessages copies messages into another mailbox of the same user, with
// their flags and dates, and returns the new UID of each (0 where the source
// is gone), in the order given. The bodies are shared, not copied.
func (tx *Tx) CopyMessages(from, to uint64, uids []uint32, enforceQuota bool) ([]uint32, error) {
	src, err := tx.MailboxByID(from)
	if err != nil {
		return nil, err
	}
	dst, err := tx.MailboxByID(to)
	if err != nil {
		return nil, err
	}
	if src.UserID != dst.UserID {
		return nil, fmt.Errorf("%w: mailboxes of different users", ErrInvalid)
	}
	msgs, err := tx.messages(from)
	if err != nil {
		return nil, err
	}
	var batch []Message
	var size int64
	for _, uid := range uids {
		var m Message
		if v := msgs.Get(u32(uid)); v != nil {
			if err := m.unmarshal(v); err != nil {
				return nil, err
			}
			size += m.Size
		}
		batch = append(batch, m)
	}
	if enforceQuota {
		if err := tx.checkQuota(dst.UserID, size); err != nil {
			return nil, err
		}
	}
	out := make([]uint32, len(batch))
	for i, m := range batch {
		if m.UID == 0 {
			continue
		}
		m.Prefix = bytes.Clone(m.Prefix)
		c, err := tx.AppendMessage(to, Message{Blob: m.Blob, Prefix: m.Prefix, Size: m.Size, InternalDate: m.InternalDate, Flags: m.Flags}, false)
		if err != nil {
			return nil, err
		}
		out[i] = c.UID
	}
	return out, nil
}

// UIDs returns the UIDs of a mailbox in order: the IMAP session's map from
// sequence numbers to UIDs. It reads a keys-only index (about 20 bytes a
// message), not the message records.
func (tx *Tx) UIDs(mailboxID uint64) ([]uint32, error) {
	mb, err := tx.MailboxByID(mailboxID)
	if err != nil {
		return nil, err
	}
	idx := tx.tx.Bucket(bUIDs).Bucket(u64(mailboxID))
	out := make([]uint32, 0, mb.Messages)
	c := idx.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		out = append(out, beU32(k))
	}
	return out, nil
}

// ChangedSince calls fn for the UIDs of a mailbox whose MODSEQ is above
// modseq, in MODSEQ order (CONDSTORE CHANGEDSINCE), using the MODSEQ index.
func (tx *Tx) ChangedSince(mailboxID, modseq uint64, fn func(uid uint32, modseq uint64) bool) error {
	idx := tx.tx.Bucket(bModSeqs).Bucket(u64(mailboxID))
	if idx == nil {
		return fmt.Errorf("mailbox #%d: %w", mailboxID, ErrNotFound)
	}
	c := idx.Cursor()
	for k, _ := c.Seek(u64(modseq + 1)); k != nil; k, _ = c.Next() {
		if !fn(beU32(k[8:]), beU64(k[:8])) {
			return nil
		}
	}
	return nil
}
