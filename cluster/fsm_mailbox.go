package cluster

import (
	"fmt"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// userMailbox returns a mailbox by ID if it belongs to the user: a session
// can only ever touch its own user's mail, whatever a command says.
func userMailbox(tx *storage.Tx, userID, mailboxID uint64) (storage.Mailbox, error) {
	mb, err := tx.MailboxByID(mailboxID)
	if err != nil {
		return mb, err
	}
	if mb.UserID != userID {
		return mb, fmt.Errorf("mailbox #%d: %w", mailboxID, storage.ErrNotFound)
	}
	return mb, nil
}

func uids64(u []uint32) []uint64 {
	out := make([]uint64, len(u))
	for i, v := range u {
		out[i] = uint64(v)
	}
	return out
}

// applyExpunge removes messages of one of the user's mailboxes with remove.
func applyExpunge(tx *storage.Tx, c *command.Expunge, remove func(mailboxID uint64, uids []uint32) ([]uint32, error)) (command.Response, error) {
	if _, err := userMailbox(tx, c.UserID, c.MailboxID); err != nil {
		return command.Response{}, err
	}
	done, err := remove(c.MailboxID, c.UIDs)
	return command.Response{IDs: uids64(done)}, err
}

// applyMailbox applies the mailbox commands; ok is false for other types.
func applyMailbox(tx *storage.Tx, cmd command.Command) (resp command.Response, ok bool, err error) {
	ok = true
	switch c := cmd.(type) {
	case *command.SetFlags:
		if _, err = userMailbox(tx, c.UserID, c.MailboxID); err != nil {
			return
		}
		var r storage.FlagResult
		r, err = tx.SetFlags(c.MailboxID, c.UIDs, c.Op, c.Flags, c.UnchangedSince)
		resp = command.Response{IDs: uids64(r.Changed), Failed: uids64(r.Failed)}
	case *command.Expunge:
		resp, err = applyExpunge(tx, c, tx.Expunge)
	case *command.ExpungeDeleted:
		resp, err = applyExpunge(tx, (*command.Expunge)(c), tx.ExpungeDeleted)
	case *command.Copy:
		if _, err = userMailbox(tx, c.UserID, c.From); err != nil {
			return
		}
		if _, err = userMailbox(tx, c.UserID, c.To); err != nil {
			return
		}
		if c.From == c.To && c.Move {
			err = fmt.Errorf("%w: move into the same mailbox", storage.ErrInvalid)
			return
		}
		var out []uint32
		if out, err = tx.CopyMessages(c.From, c.To, c.UIDs, true); err != nil {
			return
		}
		if c.Move {
			if _, err = tx.Expunge(c.From, c.UIDs); err != nil {
				return
			}
		}
		resp = command.Response{IDs: uids64(out)}
	case *command.CreateMailbox:
		var mb storage.Mailbox
		if _, err = tx.UserByID(c.UserID); err != nil {
			return
		}
		mb, err = tx.CreateMailbox(c.UserID, c.Name, c.SpecialUse)
		resp = command.Response{IDs: []uint64{mb.ID}}
	case *command.DeleteMailbox:
		err = tx.DeleteMailbox(c.UserID, c.Name)
	case *command.RenameMailbox:
		err = tx.RenameMailbox(c.UserID, c.From, c.To)
	case *command.Subscribe:
		err = tx.SetSubscribed(c.UserID, c.Name, c.On)
	case *command.PopLock:
		err = tx.AcquirePopLock(c.UserID, storage.PopLock{Node: c.Node, Token: c.Token, Until: c.Until})
	case *command.PopUnlock:
		err = tx.ReleasePopLock(c.UserID, c.Token)
	default:
		ok = false
	}
	return
}
