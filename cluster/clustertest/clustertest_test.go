package clustertest

import (
	"testing"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

func TestOneNodeCluster(t *testing.T) {
	n := New(t)
	u := AddUser(t, n, "alice@example.org", storage.Secrets{})
	body := []byte("Subject: hi\r\n\r\nhello\r\n")
	h, z := n.Store().Compress(body)
	resp := Propose(t, n, &command.Deliver{Blob: h, Body: z, BodySize: int64(len(body)),
		Targets: []command.Target{{UserID: u.ID}, {UserID: u.ID, Mailbox: "Archive"}}})
	if len(resp.IDs) != 2 || resp.IDs[0] != 1 || resp.IDs[1] != 1 {
		t.Fatalf("deliver response %+v", resp)
	}
	err := n.Store().View(func(tx *storage.Tx) error {
		mb, err := tx.Mailbox(u.ID, "INBOX")
		if err != nil {
			return err
		}
		if mb.Messages != 1 || mb.UIDNext != 2 {
			t.Errorf("INBOX %+v", mb)
		}
		if tx.Refs(h) != 2 {
			t.Errorf("refs %d", tx.Refs(h))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
