package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

// Separator is the mailbox hierarchy delimiter.
const Separator = "/"

// NormalizeMailboxName checks a mailbox name and returns its canonical form:
// INBOX in any case is INBOX; other names are kept as given.
func NormalizeMailboxName(name string) (string, error) {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX", nil
	}
	if name == "" || len(name) > 512 || !utf8.ValidString(name) {
		return "", fmt.Errorf("%w mailbox name %q", ErrInvalid, name)
	}
	for _, part := range strings.Split(name, Separator) {
		if part == "" {
			return "", fmt.Errorf("%w mailbox name %q: empty level", ErrInvalid, name)
		}
	}
	for _, r := range name {
		if unicode.IsControl(r) || r == '*' || r == '%' {
			return "", fmt.Errorf("%w mailbox name %q: character %q", ErrInvalid, name, r)
		}
	}
	if up := strings.ToUpper(name); strings.HasPrefix(up, "INBOX/") {
		name = "INBOX" + name[len("INBOX"):]
	}
	return name, nil
}

func mbNameKey(userID uint64, name string) []byte {
	return append(u64(userID), name...)
}

// CreateMailbox creates a mailbox. UIDVALIDITY is the mailbox's ID, unique
// for the life of the cluster, so a folder deleted and created again never
// reuses UIDs under the same UIDVALIDITY.
func (tx *Tx) CreateMailbox(userID uint64, name, specialUse string) (Mailbox, error) {
	name, err := NormalizeMailboxName(name)
	if err != nil {
		return Mailbox{}, err
	}
	names := tx.tx.Bucket(bMbNames)
	if names.Get(mbNameKey(userID, name)) != nil {
		return Mailbox{}, fmt.Errorf("mailbox %s: %w", name, ErrExists)
	}
	id, err := tx.nextID("mailbox")
	if err != nil {
		return Mailbox{}, err
	}
	mb := Mailbox{
		ID: id, UserID: userID, Name: name,
		UIDValidity: uint32(id), UIDNext: 1, HighestModSeq: tx.seq,
		SpecialUse: specialUse, Subscribed: true, Created: tx.now,
	}
	if err := tx.putMailbox(mb); err != nil {
		return Mailbox{}, err
	}
	if err := names.Put(mbNameKey(userID, name), u64(id)); err != nil {
		return Mailbox{}, err
	}
	if _, err := tx.tx.Bucket(bMessages).CreateBucket(u64(id)); err != nil {
		return Mailbox{}, fmt.Errorf("mailbox %s: %w", name, err)
	}
	for _, b := range [][]byte{bModSeqs, bUIDs} {
		if _, err := tx.tx.Bucket(b).CreateBucket(u64(id)); err != nil {
			return Mailbox{}, fmt.Errorf("mailbox %s: %w", name, err)
		}
	}
	tx.emit(Event{Kind: MailboxCreated, UserID: userID, MailboxID: id})
	return mb, nil
}

func (tx *Tx) putMailbox(mb Mailbox) error {
	return tx.tx.Bucket(bMailboxes).Put(u64(mb.ID), mb.marshal())
}

// MailboxByID returns a mailbox.
func (tx *Tx) MailboxByID(id uint64) (Mailbox, error) {
	var mb Mailbox
	v := tx.tx.Bucket(bMailboxes).Get(u64(id))
	if v == nil {
		return mb, fmt.Errorf("mailbox #%d: %w", id, ErrNotFound)
	}
	return mb, mb.unmarshal(v)
}

// Mailbox returns a user's mailbox by name.
func (tx *Tx) Mailbox(userID uint64, name string) (Mailbox, error) {
	n, err := NormalizeMailboxName(name)
	if err != nil {
		return Mailbox{}, err
	}
	id := tx.tx.Bucket(bMbNames).Get(mbNameKey(userID, n))
	if id == nil {
		return Mailbox{}, fmt.Errorf("mailbox %s: %w", n, ErrNotFound)
	}
	return tx.MailboxByID(binary.BigEndian.Uint64(id))
}

// Mailboxes lists a user's mailboxes in name order.
func (tx *Tx) Mailboxes(userID uint64) ([]Mailbox, error) {
	var out []Mailbox
	prefix := u64(userID)
	c := tx.tx.Bucket(bMbNames).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		mb, err := tx.MailboxByID(binary.BigEndian.Uint64(v))
		if err != nil {
			return nil, err
		}
		out = append(out, mb)
	}
	return out, nil
}

// dropMailbox removes a mailbox with its messages, releasing their bodies.
func (tx *Tx) dropMailbox(mb Mailbox) error {
	msgs := tx.tx.Bucket(bMessages).Bucket(u64(mb.ID))
	if msgs != nil {
		err := msgs.ForEach(func(_, v []byte) error {
			var m Message
			if err := m.unmarshal(v); err != nil {
				return err
			}
			return tx.ref(m.Blob, -1)
		})
		if err != nil {
			return err
		}
		if err := tx.tx.Bucket(bMessages).DeleteBucket(u64(mb.ID)); err != nil {
			return err
		}
	}
	for _, b := range [][]byte{bModSeqs, bUIDs} {
		if tx.tx.Bucket(b).Bucket(u64(mb.ID)) != nil {
			if err := tx.tx.Bucket(b).DeleteBucket(u64(mb.ID)); err != nil {
				return err
			}
		}
	}
	if err := tx.tx.Bucket(bMbNames).Delete(mbNameKey(mb.UserID, mb.Name)); err != nil {
		return err
	}
	tx.emit(Event{Kind: MailboxDeleted, UserID: mb.UserID, MailboxID: mb.ID})
	return tx.tx.Bucket(bMailboxes).Delete(u64(mb.ID))
}

func (tx *Tx) messages(mailboxID uint64) (*bolt.Bucket, error) {
	b := tx.tx.Bucket(bMessages).Bucket(u64(mailboxID))
	if b == nil {
		return nil, fmt.Errorf("mailbox #%d: %w", mailboxID, ErrNotFound)
	}
	return b, nil
}

// AppendMessage adds m to a mailbox, assigning its UID and MODSEQ, and takes a
// reference on its body. With enforceQuota, a user over quota is refused.
func (tx *Tx) AppendMessage(mailboxID uint64, m Message, enforceQuota bool) (Message, error) {
	mb, err := tx.MailboxByID(mailboxID)
	if err != nil {
		return Message{}, err
	}
	if enforceQuota {
		if err := tx.checkQuota(mb.UserID, m.Size); err != nil {
			return Message{}, err
		}
	}
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return Message{}, err
	}
	m.UID = mb.UIDNext
	m.ModSeq = tx.seq
	if m.InternalDate == 0 {
		m.InternalDate = tx.now
	}
	if err := msgs.Put(u32(m.UID), m.marshal()); err != nil {
		return Message{}, err
	}
	if err := tx.tx.Bucket(bModSeqs).Bucket(u64(mailboxID)).Put(append(u64(m.ModSeq), u32(m.UID)...), nil); err != nil {
		return Message{}, err
	}
	if err := tx.tx.Bucket(bUIDs).Bucket(u64(mailboxID)).Put(u32(m.UID), nil); err != nil {
		return Message{}, err
	}
	if err := tx.ref(m.Blob, 1); err != nil {
		return Message{}, err
	}
	mb.UIDNext++
	mb.Messages++
	if !m.HasFlag(`\Seen`) {
		mb.Unseen++
	}
	mb.Size += m.Size
	mb.HighestModSeq = tx.seq
	if err := tx.putMailbox(mb); err != nil {
		return Message{}, err
	}
	tx.emit(Event{Kind: MessageAdded, UserID: mb.UserID, MailboxID: mb.ID, UID: m.UID})
	return m, nil
}

func (tx *Tx) checkQuota(userID uint64, add int64) error {
	u, err := tx.UserByID(userID)
	if err != nil {
		return err
	}
	if u.QuotaBytes == 0 {
		return nil
	}
	used, err := tx.UsedBytes(userID)
	if err != nil {
		return err
	}
	if used+add > u.QuotaBytes {
		return fmt.Errorf("%w: %s uses %d of %d octets", ErrQuota, u.Address, used, u.QuotaBytes)
	}
	return nil
}

// Message returns one message.
func (tx *Tx) Message(mailboxID uint64, uid uint32) (Message, error) {
	var m Message
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return m, err
	}
	v := msgs.Get(u32(uid))
	if v == nil {
		return m, fmt.Errorf("message %d in mailbox #%d: %w", uid, mailboxID, ErrNotFound)
	}
	return m, m.unmarshal(v)
}

// Messages calls fn for the messages of a mailbox with UID >= from, in UID
// order, until fn returns false.
func (tx *Tx) Messages(mailboxID uint64, from uint32, fn func(Message) bool) error {
	msgs, err := tx.messages(mailboxID)
	if err != nil {
		return err
	}
	c := msgs.Cursor()
	for k, v := c.Seek(u32(from)); k != nil; k, v = c.Next() {
		var m Message
		if err := m.unmarshal(v); err != nil {
			return err
		}
		if !fn(m) {
			return nil
		}
	}
	return nil
}

// DeleteMailbox removes a user's mailbox and its messages. INBOX cannot be
// deleted. Child mailboxes are kept: the hierarchy is only names.
func (tx *Tx) DeleteMailbox(userID uint64, name string) error {
	mb, err := tx.Mailbox(userID, name)
	if err != nil {
		return err
	}
	if mb.Name == "INBOX" {
		return fmt.Errorf("%w: INBOX cannot be deleted", ErrInvalid)
	}
	return tx.dropMailbox(mb)
}

// RenameMailbox renames a mailbox and its children, keeping their IDs and
// UIDVALIDITY. Renaming INBOX moves its messages into a new mailbox and
// leaves INBOX empty, as RFC 3501 says.
func (tx *Tx) RenameMailbox(userID uint64, from, to string) error {
	src, err := tx.Mailbox(userID, from)
	if err != nil {
		return err
	}
	to, err = NormalizeMailboxName(to)
	if err != nil {
		return err
	}
	if to == "INBOX" || strings.HasPrefix(to, src.Name+Separator) {
		return fmt.Errorf("%w: cannot rename %s to %s", ErrInvalid, src.Name, to)
	}
	if _, err := tx.Mailbox(userID, to); err == nil {
		return fmt.Errorf("mailbox %s: %w", to, ErrExists)
	}
	if src.Name == "INBOX" {
		dst, err := tx.CreateMailbox(userID, to, "")
		if err != nil {
			return err
		}
		uids, err := tx.UIDs(src.ID)
		if err != nil {
			return err
		}
		if _, err := tx.CopyMessages(src.ID, dst.ID, uids, false); err != nil {
			return err
		}
		_, err = tx.Expunge(src.ID, uids)
		return err
	}
	all, err := tx.Mailboxes(userID)
	if err != nil {
		return err
	}
	for _, mb := range all {
		var newName string
		switch {
		case mb.ID == src.ID:
			newName = to
		case strings.HasPrefix(mb.Name, src.Name+Separator):
			newName = to + mb.Name[len(src.Name):]
		default:
			continue
		}
		if _, err := tx.Mailbox(userID, newName); err == nil {
			return fmt.Errorf("mailbox %s: %w", newName, ErrExists)
		}
		names := tx.tx.Bucket(bMbNames)
		if err := names.Delete(mbNameKey(userID, mb.Name)); err != nil {
			return err
		}
		if err := names.Put(mbNameKey(userID, newName), u64(mb.ID)); err != nil {
			return err
		}
		mb.Name = newName
		if err := tx.putMailbox(mb); err != nil {
			return err
		}
		tx.emit(Event{Kind: MailboxRenamed, UserID: userID, MailboxID: mb.ID})
	}
	return nil
}

// SetSubscribed subscribes or unsubscribes a mailbox.
func (tx *Tx) SetSubscribed(userID uint64, name string, on bool) error {
	mb, err := tx.Mailbox(userID, name)
	if err != nil {
		return err
	}
	if mb.Subscribed == on {
		return nil
	}
	mb.Subscribed = on
	tx.emit(Event{Kind: MailboxRenamed, UserID: userID, MailboxID: mb.ID})
	return tx.putMailbox(mb)
}
