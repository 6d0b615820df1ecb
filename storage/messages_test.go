package storage

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func inbox(t *testing.T, s *Store, user string) (User, Mailbox) {
	t.Helper()
	var u User
	var mb Mailbox
	_ = s.View(func(tx *Tx) error {
		var err error
		if u, err = tx.User(user); err != nil {
			t.Fatal(err)
		}
		if mb, err = tx.Mailbox(u.ID, "INBOX"); err != nil {
			t.Fatal(err)
		}
		return nil
	})
	return u, mb
}

func TestFlagsModSeqAndUnseen(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	for i := 0; i < 3; i++ {
		deliver(t, s, uint64(10+i), "alice@example.org", "body")
	}
	_, mb := inbox(t, s, "alice@example.org")
	var res FlagResult
	write(t, s, 20, func(tx *Tx) error {
		var err error
		res, err = tx.SetFlags(mb.ID, []uint32{1, 2, 99}, FlagsAdd, []string{`\Seen`, `\seen`, `\Recent`}, 0)
		return err
	})
	if !reflect.DeepEqual(res.Changed, []uint32{1, 2}) {
		t.Fatalf("changed %v", res.Changed)
	}
	// A second, identical store changes nothing and keeps MODSEQs.
	write(t, s, 21, func(tx *Tx) error {
		var err error
		res, err = tx.SetFlags(mb.ID, []uint32{1}, FlagsAdd, []string{`\Seen`}, 0)
		return err
	})
	if len(res.Changed) != 0 {
		t.Fatalf("no-op store changed %v", res.Changed)
	}
	// UNCHANGEDSINCE below a message's MODSEQ refuses it.
	write(t, s, 22, func(tx *Tx) error {
		var err error
		res, err = tx.SetFlags(mb.ID, []uint32{1, 3}, FlagsReplace, []string{`\Flagged`}, 15)
		return err
	})
	if !reflect.DeepEqual(res.Failed, []uint32{1}) || !reflect.DeepEqual(res.Changed, []uint32{3}) {
		t.Fatalf("unchangedsince: %+v", res)
	}
	_ = s.View(func(tx *Tx) error {
		m, _ := tx.MailboxByID(mb.ID)
		if m.Unseen != 1 || m.HighestModSeq != 22 {
			t.Errorf("mailbox %+v", m)
		}
		var changed []uint32
		_ = tx.ChangedSince(mb.ID, 20, func(uid uint32, _ uint64) bool { changed = append(changed, uid); return true })
		if !reflect.DeepEqual(changed, []uint32{3}) {
			t.Errorf("changed since 20: %v", changed)
		}
		return nil
	})
}

func TestExpungeCopyMove(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	m := deliver(t, s, 10, "alice@example.org", "shared")
	deliver(t, s, 11, "alice@example.org", "other")
	u, mb := inbox(t, s, "alice@example.org")
	var arch Mailbox
	write(t, s, 12, func(tx *Tx) error {
		var err error
		arch, err = tx.Mailbox(u.ID, "Archive")
		if err != nil {
			return err
		}
		out, err := tx.CopyMessages(mb.ID, arch.ID, []uint32{1, 77, 2}, false)
		if !reflect.DeepEqual(out, []uint32{1, 0, 2}) {
			t.Errorf("copy uids %v", out)
		}
		return err
	})
	write(t, s, 13, func(tx *Tx) error {
		done, err := tx.Expunge(mb.ID, []uint32{1, 1, 5})
		if !reflect.DeepEqual(done, []uint32{1}) {
			t.Errorf("expunged %v", done)
		}
		return err
	})
	_ = s.View(func(tx *Tx) error {
		if n := tx.Refs(m.Blob); n != 1 {
			t.Errorf("refs %d", n)
		}
		uids, _ := tx.UIDs(mb.ID)
		if !reflect.DeepEqual(uids, []uint32{2}) {
			t.Errorf("inbox uids %v", uids)
		}
		a, _ := tx.MailboxByID(arch.ID)
		if a.Messages != 2 || a.UIDNext != 3 {
			t.Errorf("archive %+v", a)
		}
		return nil
	})
}

// ExpungeDeleted removes only what is \Deleted when it runs, in any letter
// case, and skips UIDs that are gone.
func TestExpungeDeletedKeepsWhatIsNotDeleted(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	for i := uint64(0); i < 3; i++ {
		deliver(t, s, 10+i, "alice@example.org", fmt.Sprint("body ", i))
	}
	_, mb := inbox(t, s, "alice@example.org")
	write(t, s, 20, func(tx *Tx) error {
		_, err := tx.SetFlags(mb.ID, []uint32{1}, FlagsAdd, []string{`\Deleted`}, 0)
		if err == nil {
			_, err = tx.SetFlags(mb.ID, []uint32{3}, FlagsAdd, []string{`\deleted`}, 0)
		}
		return err
	})
	write(t, s, 21, func(tx *Tx) error {
		done, err := tx.ExpungeDeleted(mb.ID, []uint32{1, 2, 3, 99})
		if !reflect.DeepEqual(done, []uint32{1, 3}) {
			t.Errorf("expunged %v, want [1 3]", done)
		}
		return err
	})
	_ = s.View(func(tx *Tx) error {
		if uids, _ := tx.UIDs(mb.ID); !reflect.DeepEqual(uids, []uint32{2}) {
			t.Errorf("inbox uids %v, want [2]", uids)
		}
		return nil
	})
}

func TestRenameDeleteSubscribe(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	deliver(t, s, 10, "alice@example.org", "in inbox")
	u, mb := inbox(t, s, "alice@example.org")
	write(t, s, 11, func(tx *Tx) error {
		for _, n := range []string{"Work", "Work/2026", "Workshop"} {
			if _, err := tx.CreateMailbox(u.ID, n, ""); err != nil {
				return err
			}
		}
		if err := tx.RenameMailbox(u.ID, "Work", "Jobs"); err != nil {
			return err
		}
		if err := tx.RenameMailbox(u.ID, "Jobs", "Jobs/Inside"); !errors.Is(err, ErrInvalid) {
			t.Errorf("rename into own child: %v", err)
		}
		if err := tx.RenameMailbox(u.ID, "INBOX", "Old Inbox"); err != nil {
			return err
		}
		if err := tx.DeleteMailbox(u.ID, "INBOX"); !errors.Is(err, ErrInvalid) {
			t.Errorf("delete INBOX: %v", err)
		}
		if err := tx.SetSubscribed(u.ID, "Jobs/2026", false); err != nil {
			return err
		}
		return tx.DeleteMailbox(u.ID, "Workshop")
	})
	_ = s.View(func(tx *Tx) error {
		mbs, _ := tx.Mailboxes(u.ID)
		var names []string
		for _, m := range mbs {
			names = append(names, m.Name)
		}
		want := []string{"Archive", "Drafts", "INBOX", "Jobs", "Jobs/2026", "Junk", "Old Inbox", "Sent", "Trash"}
		if !reflect.DeepEqual(names, want) {
			t.Errorf("mailboxes %v", names)
		}
		in, _ := tx.MailboxByID(mb.ID)
		old, _ := tx.Mailbox(u.ID, "Old Inbox")
		if in.Messages != 0 || old.Messages != 1 {
			t.Errorf("inbox %d, old inbox %d messages", in.Messages, old.Messages)
		}
		j, _ := tx.Mailbox(u.ID, "Jobs/2026")
		if j.Subscribed {
			t.Error("still subscribed")
		}
		return nil
	})
}

func TestPopLockLease(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	u, _ := inbox(t, s, "alice@example.org")
	at := func(seq uint64, sec int64, fn func(tx *Tx) error) error {
		return s.Update(func(tx *Tx) error {
			tx.SetClock(seq, time.Unix(sec, 0))
			return fn(tx)
		})
	}
	if err := at(2, 100, func(tx *Tx) error {
		return tx.AcquirePopLock(u.ID, PopLock{Node: "n1", Token: 1, Until: time.Unix(160, 0).UnixNano()})
	}); err != nil {
		t.Fatal(err)
	}
	if err := at(3, 120, func(tx *Tx) error {
		return tx.AcquirePopLock(u.ID, PopLock{Node: "n2", Token: 2, Until: time.Unix(180, 0).UnixNano()})
	}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second session: %v", err)
	}
	// The holder renews; after the lease lapses another session takes it.
	if err := at(4, 150, func(tx *Tx) error {
		return tx.AcquirePopLock(u.ID, PopLock{Node: "n1", Token: 1, Until: time.Unix(200, 0).UnixNano()})
	}); err != nil {
		t.Fatal(err)
	}
	if err := at(5, 201, func(tx *Tx) error {
		return tx.AcquirePopLock(u.ID, PopLock{Node: "n2", Token: 2, Until: time.Unix(260, 0).UnixNano()})
	}); err != nil {
		t.Fatalf("after lapse: %v", err)
	}
	if err := at(6, 210, func(tx *Tx) error { return tx.ReleasePopLock(u.ID, 2) }); err != nil {
		t.Fatal(err)
	}
	if err := at(7, 211, func(tx *Tx) error {
		return tx.AcquirePopLock(u.ID, PopLock{Node: "n3", Token: 3, Until: time.Unix(260, 0).UnixNano()})
	}); err != nil {
		t.Fatalf("after release: %v", err)
	}
}
