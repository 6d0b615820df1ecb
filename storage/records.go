package storage

import (
	"fmt"

	"github.com/flotilla-mail/flotilla/storage/codec"
)

// The records below are stored in bbolt in the codec encoding. Field numbers
// are part of the on-disk format: never reuse or renumber one, only add.

// Domain is a mail domain the cluster accepts mail for.
type Domain struct {
	Name    string
	Created int64 // unix nanoseconds
}

func (d *Domain) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.String(1, d.Name)
	e.Int(2, d.Created)
	return e.Bytes()
}

func (d *Domain) unmarshal(b []byte) error {
	return decodeRecord("domain", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			d.Name = f.String()
		case 2:
			d.Created = f.Int()
		}
	})
}

// Secrets are what the authentication mechanisms need; never a password.
type Secrets struct {
	Argon2id       string
	ScramSalt      []byte
	ScramIter      int
	ScramStoredKey []byte
	ScramServerKey []byte
	CRAMMD5        []byte // precomputed HMAC-MD5 key state; only when enabled
	APOP           []byte // APOP's shared secret (the password); only when enabled
}

// User is a mail account. Its ID never changes; its address may not change
// either (a rename is a new user), which keeps mailbox ownership simple.
type User struct {
	ID         uint64
	Address    string // local@domain, lower case
	Name       string // display name
	Secrets    Secrets
	QuotaBytes int64 // 0: unlimited
	Created    int64
	Disabled   bool
}

func (u *User) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.Uint(1, u.ID)
	e.String(2, u.Address)
	e.String(3, u.Name)
	e.Message(4, func(s *codec.Encoder) {
		s.String(1, u.Secrets.Argon2id)
		s.Blob(2, u.Secrets.ScramSalt)
		s.Uint(3, uint64(u.Secrets.ScramIter))
		s.Blob(4, u.Secrets.ScramStoredKey)
		s.Blob(5, u.Secrets.ScramServerKey)
		s.Blob(6, u.Secrets.CRAMMD5)
		s.Blob(7, u.Secrets.APOP)
	})
	e.Int(5, u.QuotaBytes)
	e.Int(6, u.Created)
	e.Bool(7, u.Disabled)
	return e.Bytes()
}

func (u *User) unmarshal(b []byte) error {
	return decodeRecord("user", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			u.ID = f.Uint()
		case 2:
			u.Address = f.String()
		case 3:
			u.Name = f.String()
		case 4:
			f.Message(func(g codec.Field) {
				s := &u.Secrets
				switch g.Num {
				case 1:
					s.Argon2id = g.String()
				case 2:
					s.ScramSalt = g.Copy()
				case 3:
					s.ScramIter = int(g.Uint())
				case 4:
					s.ScramStoredKey = g.Copy()
				case 5:
					s.ScramServerKey = g.Copy()
				case 6:
					s.CRAMMD5 = g.Copy()
				case 7:
					s.APOP = g.Copy()
				}
			})
		case 5:
			u.QuotaBytes = f.Int()
		case 6:
			u.Created = f.Int()
		case 7:
			u.Disabled = f.Bool()
		}
	})
}

// Alias maps an address to one or more targets (local users or remote
// addresses). A catch-all is the alias "@domain".
type Alias struct {
	Address string
	Targets []string
	Created int64
}

func (a *Alias) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.String(1, a.Address)
	e.Strings(2, a.Targets)
	e.Int(3, a.Created)
	return e.Bytes()
}

func (a *Alias) unmarshal(b []byte) error {
	return decodeRecord("alias", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			a.Address = f.String()
		case 2:
			a.Targets = append(a.Targets, f.String())
		case 3:
			a.Created = f.Int()
		}
	})
}

// Mailbox is one IMAP folder of one user.
type Mailbox struct {
	ID            uint64
	UserID        uint64
	Name          string // hierarchy separator "/", UTF-8
	UIDValidity   uint32
	UIDNext       uint32
	HighestModSeq uint64
	Messages      uint32
	Unseen        uint32
	Size          int64 // octets of all messages
	SpecialUse    string
	Subscribed    bool
	Created       int64
}

func (m *Mailbox) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.Uint(1, m.ID)
	e.Uint(2, m.UserID)
	e.String(3, m.Name)
	e.Uint(4, uint64(m.UIDValidity))
	e.Uint(5, uint64(m.UIDNext))
	e.Uint(6, m.HighestModSeq)
	e.Uint(7, uint64(m.Messages))
	e.Uint(8, uint64(m.Unseen))
	e.Int(9, m.Size)
	e.String(10, m.SpecialUse)
	e.Bool(11, m.Subscribed)
	e.Int(12, m.Created)
	return e.Bytes()
}

func (m *Mailbox) unmarshal(b []byte) error {
	return decodeRecord("mailbox", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			m.ID = f.Uint()
		case 2:
			m.UserID = f.Uint()
		case 3:
			m.Name = f.String()
		case 4:
			m.UIDValidity = f.Uint32()
		case 5:
			m.UIDNext = f.Uint32()
		case 6:
			m.HighestModSeq = f.Uint()
		case 7:
			m.Messages = f.Uint32()
		case 8:
			m.Unseen = f.Uint32()
		case 9:
			m.Size = f.Int()
		case 10:
			m.SpecialUse = f.String()
		case 11:
			m.Subscribed = f.Bool()
		case 12:
			m.Created = f.Int()
		}
	})
}

// Hash names a message body: the SHA-256 of its uncompressed bytes.
type Hash [32]byte

func (h Hash) String() string { return fmt.Sprintf("%x", h[:]) }

// Message is one message in a mailbox. Its bytes are Prefix followed by the
// body blob: the prefix holds the per-recipient trace headers (Return-Path,
// Received) so that one body serves every recipient of a delivery.
type Message struct {
	UID          uint32
	Blob         Hash
	Prefix       []byte
	Size         int64 // len(Prefix) + body size
	InternalDate int64 // unix nanoseconds
	Flags        []string
	ModSeq       uint64
}

func (m *Message) marshal() []byte {
	e := codec.NewEncoder(make([]byte, 0, 64+len(m.Prefix)))
	e.Uint(1, uint64(m.UID))
	e.Blob(2, m.Blob[:])
	e.Blob(3, m.Prefix)
	e.Int(4, m.Size)
	e.Int(5, m.InternalDate)
	e.Strings(6, m.Flags)
	e.Uint(7, m.ModSeq)
	return e.Bytes()
}

func (m *Message) unmarshal(b []byte) error {
	return decodeRecord("message", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			m.UID = f.Uint32()
		case 2:
			copy(m.Blob[:], f.Blob())
		case 3:
			m.Prefix = f.Copy()
		case 4:
			m.Size = f.Int()
		case 5:
			m.InternalDate = f.Int()
		case 6:
			m.Flags = append(m.Flags, f.String())
		case 7:
			m.ModSeq = f.Uint()
		}
	})
}

// HasFlag reports whether the message carries flag (case-insensitive, as
// IMAP compares flags).
func (m *Message) HasFlag(flag string) bool {
	for _, f := range m.Flags {
		if equalFold(f, flag) {
			return true
		}
	}
	return false
}

// RecipientState is where one recipient of a queued message stands.
type RecipientState uint8

const (
	RcptPending RecipientState = iota
	RcptDelivered
	RcptBounced
)

// QueueRecipient is one envelope recipient of a queued message.
type QueueRecipient struct {
	Address   string
	State     RecipientState
	LastError string
	Attempts  uint32
	Notify    string // DSN NOTIFY parameter, as given
	ORcpt     string // DSN ORCPT parameter, as given
}

// QueueEntry is an outbound message waiting for delivery.
type QueueEntry struct {
	ID          uint64
	From        string // envelope sender; "" is the null sender
	Recipients  []QueueRecipient
	Blob        Hash
	Prefix      []byte
	Size        int64
	Created     int64
	NextAttempt int64
	Held        bool
	EnvID       string // DSN ENVID
	Ret         string // DSN RET (FULL or HDRS)
	// Lease: which node works on the entry, until when.
	LeaseNode  string
	LeaseUntil int64
}

func (q *QueueEntry) marshal() []byte {
	e := codec.NewEncoder(nil)
	e.Uint(1, q.ID)
	e.String(2, q.From)
	for _, r := range q.Recipients {
		e.Message(3, func(m *codec.Encoder) {
			m.String(1, r.Address)
			m.Uint(2, uint64(r.State))
			m.String(3, r.LastError)
			m.Uint(4, uint64(r.Attempts))
			m.String(5, r.Notify)
			m.String(6, r.ORcpt)
		})
	}
	e.Blob(4, q.Blob[:])
	e.Blob(5, q.Prefix)
	e.Int(6, q.Size)
	e.Int(7, q.Created)
	e.Int(8, q.NextAttempt)
	e.Bool(9, q.Held)
	e.String(10, q.EnvID)
	e.String(11, q.Ret)
	e.String(12, q.LeaseNode)
	e.Int(13, q.LeaseUntil)
	return e.Bytes()
}

func (q *QueueEntry) unmarshal(b []byte) error {
	return decodeRecord("queue entry", b, func(f codec.Field) {
		switch f.Num {
		case 1:
			q.ID = f.Uint()
		case 2:
			q.From = f.String()
		case 3:
			var r QueueRecipient
			f.Message(func(g codec.Field) {
				switch g.Num {
				case 1:
					r.Address = g.String()
				case 2:
					r.State = RecipientState(g.Uint())
				case 3:
					r.LastError = g.String()
				case 4:
					r.Attempts = g.Uint32()
				case 5:
					r.Notify = g.String()
				case 6:
					r.ORcpt = g.String()
				}
			})
			q.Recipients = append(q.Recipients, r)
		case 4:
			copy(q.Blob[:], f.Blob())
		case 5:
			q.Prefix = f.Copy()
		case 6:
			q.Size = f.Int()
		case 7:
			q.Created = f.Int()
		case 8:
			q.NextAttempt = f.Int()
		case 9:
			q.Held = f.Bool()
		case 10:
			q.EnvID = f.String()
		case 11:
			q.Ret = f.String()
		case 12:
			q.LeaseNode = f.String()
		case 13:
			q.LeaseUntil = f.Int()
		}
	})
}

func decodeRecord(kind string, b []byte, fn func(codec.Field)) error {
	if err := codec.Decode(b, fn); err != nil {
		return fmt.Errorf("decode %s: %w", kind, err)
	}
	return nil
}

// equalFold is ASCII case folding, which is what IMAP flag and mailbox
// comparisons need (strings.EqualFold would also fold Unicode).
func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}
