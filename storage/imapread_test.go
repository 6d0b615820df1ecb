package storage

import (
	"path/filepath"
	"testing"
	"time"
)

func TestIMAPReadHelpers(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "state.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	body := []byte("Subject: x\r\n\r\nhello\r\n")
	h, z := st.Compress(body)
	var mbID uint64
	seq := uint64(1)
	update := func(fn func(tx *Tx) error) {
		t.Helper()
		seq++
		if err := st.Update(func(tx *Tx) error { tx.SetClock(seq, time.Unix(1700000000, 0)); return fn(tx) }); err != nil {
			t.Fatal(err)
		}
	}
	update(func(tx *Tx) error {
		if _, err := tx.AddDomain("example.org"); err != nil {
			return err
		}
		u, err := tx.AddUser(User{Address: "a@example.org"})
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		mbID = mb.ID
		if err != nil {
			return err
		}
		if err := tx.PutBlob(h, z); err != nil {
			return err
		}
		for i := 0; i < 10; i++ {
			flags := []string{`\Seen`}
			if i == 6 {
				flags = []string{`\deleted`}
			}
			if i == 7 {
				flags = nil
			}
			if _, err := tx.AppendMessage(mb.ID, Message{Blob: h, Prefix: []byte("X-P: 1\r\n"), Size: int64(len(body) + 8), Flags: flags}, false); err != nil {
				return err
			}
		}
		return nil
	})
	update(func(tx *Tx) error { _, err := tx.Expunge(mbID, []uint32{3, 4, 9}); return err })
	err = st.View(func(tx *Tx) error {
		runs, err := tx.UIDRuns(mbID)
		if err != nil {
			return err
		}
		want := []UIDRun{{1, 2}, {5, 4}, {10, 1}}
		if len(runs) != len(want) {
			t.Fatalf("runs %v", runs)
		}
		for i := range want {
			if runs[i] != want[i] {
				t.Fatalf("runs %v, want %v", runs, want)
			}
		}
		var from []uint32
		if err := tx.UIDsFrom(mbID, 6, func(u uint32) bool { from = append(from, u); return len(from) < 3 }); err != nil {
			return err
		}
		if len(from) != 3 || from[0] != 6 || from[2] != 8 {
			t.Fatalf("UIDsFrom: %v", from)
		}
		if uid, ok, err := tx.FirstUnseen(mbID, 0); err != nil || !ok || uid != 7 {
			t.Fatalf("first unseen %d %v %v", uid, ok, err)
		}
		if _, ok, _ := tx.FirstUnseen(mbID, 3); ok {
			t.Fatal("first unseen found past the limit")
		}
		del, err := tx.UIDsWithFlag(mbID, `\Deleted`)
		if err != nil || len(del) != 1 || del[0] != 7 {
			t.Fatalf("deleted: %v %v", del, err)
		}
		var got []uint32
		err = tx.MessagesByUID(mbID, []uint32{2, 3, 10}, func(m Message) error {
			got = append(got, m.UID)
			b, err := tx.MessageBytes(m, nil)
			if err != nil || string(b) != "X-P: 1\r\n"+string(body) {
				t.Fatalf("bytes %q %v", b, err)
			}
			return nil
		})
		if err != nil || len(got) != 2 || got[1] != 10 {
			t.Fatalf("by UID: %v %v", got, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
