package command

import (
	"github.com/flotilla-mail/flotilla/storage"
	"github.com/flotilla-mail/flotilla/storage/codec"
)

// Mailbox commands name the user (and the mailbox by ID where one is open):
// Apply checks that the mailbox belongs to that user.

func encodeUIDs(e *codec.Encoder, num int, uids []uint32) {
	for _, u := range uids {
		e.Message(num, func(m *codec.Encoder) { m.Uint(1, uint64(u)) })
	}
}

func decodeUID(f codec.Field) uint32 {
	var u uint32
	f.Message(func(g codec.Field) {
		if g.Num == 1 {
			u = g.Uint32()
		}
	})
	return u
}

// SetFlags changes message flags (IMAP STORE). The response lists the UIDs
// changed in IDs and those refused by UnchangedSince in Failed.
type SetFlags struct {
	UserID         uint64
	MailboxID      uint64
	UIDs           []uint32
	Op             storage.FlagOp
	Flags          []string
	UnchangedSince uint64
}

func (*SetFlags) Type() Type { return TypeSetFlags }
func (c *SetFlags) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.Uint(2, c.MailboxID)
	encodeUIDs(e, 3, c.UIDs)
	e.Uint(4, uint64(c.Op))
	e.Strings(5, c.Flags)
	e.Uint(6, c.UnchangedSince)
}
func (c *SetFlags) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.MailboxID = f.Uint()
	case 3:
		c.UIDs = append(c.UIDs, decodeUID(f))
	case 4:
		c.Op = storage.FlagOp(f.Uint())
	case 5:
		c.Flags = append(c.Flags, f.String())
	case 6:
		c.UnchangedSince = f.Uint()
	}
}

// Expunge removes messages; the response lists the UIDs removed.
type Expunge struct {
	UserID    uint64
	MailboxID uint64
	UIDs      []uint32
}

func (*Expunge) Type() Type { return TypeExpunge }
func (c *Expunge) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.Uint(2, c.MailboxID)
	encodeUIDs(e, 3, c.UIDs)
}
func (c *Expunge) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.MailboxID = f.Uint()
	case 3:
		c.UIDs = append(c.UIDs, decodeUID(f))
	}
}

// ExpungeDeleted removes those of UIDs that are \Deleted when it is applied
// (IMAP's EXPUNGE, UID EXPUNGE and CLOSE): a session that cleared the flag
// just before keeps its message. The response lists the UIDs removed.
// Expunge, which removes UIDs whatever their flags, serves POP3 and clusters
// with a voter of command version 1.
type ExpungeDeleted Expunge

func (*ExpungeDeleted) Type() Type { return TypeExpungeDel }
func (c *ExpungeDeleted) encode(e *codec.Encoder) {
	(*Expunge)(c).encode(e)
}
func (c *ExpungeDeleted) decode(f codec.Field) {
	(*Expunge)(c).decode(f)
}

// Copy copies (or, with Move, moves) messages to another mailbox of the
// user. The response's IDs are the new UIDs in the order of UIDs (0 where a
// source message was gone).
type Copy struct {
	UserID   uint64
	From, To uint64
	UIDs     []uint32
	Move     bool
}

func (*Copy) Type() Type { return TypeCopy }
func (c *Copy) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.Uint(2, c.From)
	e.Uint(3, c.To)
	encodeUIDs(e, 4, c.UIDs)
	e.Bool(5, c.Move)
}
func (c *Copy) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.From = f.Uint()
	case 3:
		c.To = f.Uint()
	case 4:
		c.UIDs = append(c.UIDs, decodeUID(f))
	case 5:
		c.Move = f.Bool()
	}
}

// CreateMailbox creates a mailbox; the response's IDs hold its ID.
type CreateMailbox struct {
	UserID     uint64
	Name       string
	SpecialUse string
}

func (*CreateMailbox) Type() Type { return TypeCreateMbox }
func (c *CreateMailbox) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.String(2, c.Name)
	e.String(3, c.SpecialUse)
}
func (c *CreateMailbox) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.Name = f.String()
	case 3:
		c.SpecialUse = f.String()
	}
}

// DeleteMailbox deletes a mailbox and its messages.
type DeleteMailbox struct {
	UserID uint64
	Name   string
}

func (*DeleteMailbox) Type() Type { return TypeDeleteMbox }
func (c *DeleteMailbox) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.String(2, c.Name)
}
func (c *DeleteMailbox) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.Name = f.String()
	}
}

// RenameMailbox renames a mailbox with its children.
type RenameMailbox struct {
	UserID   uint64
	From, To string
}

func (*RenameMailbox) Type() Type { return TypeRenameMbox }
func (c *RenameMailbox) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.String(2, c.From)
	e.String(3, c.To)
}
func (c *RenameMailbox) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.From = f.String()
	case 3:
		c.To = f.String()
	}
}

// Subscribe subscribes or unsubscribes a mailbox.
type Subscribe struct {
	UserID uint64
	Name   string
	On     bool
}

func (*Subscribe) Type() Type { return TypeSubscribe }
func (c *Subscribe) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.String(2, c.Name)
	e.Bool(3, c.On)
}
func (c *Subscribe) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.Name = f.String()
	case 3:
		c.On = f.Bool()
	}
}

// PopLock takes or renews a user's POP3 maildrop lease.
type PopLock struct {
	UserID uint64
	Node   string
	Token  uint64
	Until  int64
}

func (*PopLock) Type() Type { return TypePopLock }
func (c *PopLock) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.String(2, c.Node)
	e.Uint(3, c.Token)
	e.Int(4, c.Until)
}
func (c *PopLock) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.Node = f.String()
	case 3:
		c.Token = f.Uint()
	case 4:
		c.Until = f.Int()
	}
}

// PopUnlock releases a user's POP3 maildrop lease.
type PopUnlock struct {
	UserID uint64
	Token  uint64
}

func (*PopUnlock) Type() Type { return TypePopUnlock }
func (c *PopUnlock) encode(e *codec.Encoder) {
	e.Uint(1, c.UserID)
	e.Uint(2, c.Token)
}
func (c *PopUnlock) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.UserID = f.Uint()
	case 2:
		c.Token = f.Uint()
	}
}
