package storage

import (
	"bytes"
	"context"
	"testing"
	"time"
)

func TestQueueLeasesAndDeliveryState(t *testing.T) {
	s := openTest(t)
	h, z := s.Compress([]byte("Subject: x\r\n\r\nbody\r\n"))
	var id uint64
	write(t, s, 1, func(tx *Tx) error {
		if err := tx.PutBlob(h, z); err != nil {
			return err
		}
		q, err := tx.Enqueue(QueueEntry{From: "a@b.test", Recipients: []QueueRecipient{{Address: "x@y.test"}}, Blob: h})
		id = q.ID
		return err
	})
	at := func(seq uint64) int64 { return time.Unix(1700000000, int64(seq)).UnixNano() }
	claim := func(seq uint64, node string, until int64) (ok bool) {
		write(t, s, seq, func(tx *Tx) error {
			var err error
			ok, err = tx.ClaimQueueEntry(id, node, until)
			return err
		})
		return ok
	}
	if !claim(2, "n1", at(10)) {
		t.Fatal("first claim refused")
	}
	if claim(3, "n2", at(20)) {
		t.Fatal("claim over a running lease granted")
	}
	if !claim(4, "n1", at(20)) {
		t.Fatal("renewal refused")
	}
	if !claim(21, "n2", at(40)) {
		t.Fatal("claim of a lapsed lease refused")
	}
	// Delivery state and collection memory live in nested buckets: the
	// entry list skips them, snapshots and digests carry them.
	write(t, s, 22, func(tx *Tx) error {
		if err := tx.PutQueueMeta(id, QueueMeta{DelayNotified: true, LastAttempt: 5}); err != nil {
			return err
		}
		if err := tx.AcquireCollectLease("isp", "n3", at(30)); err != nil {
			return err
		}
		return tx.MarkCollected("isp", "uid-1")
	})
	var n int
	_ = s.View(func(tx *Tx) error {
		return tx.QueueEntries(func(QueueEntry) bool { n++; return true })
	})
	if n != 1 {
		t.Fatalf("%d entries listed", n)
	}
	var snap bytes.Buffer
	sn, _ := s.Snapshot()
	if _, err := sn.WriteTo(&snap); err != nil {
		t.Fatal(err)
	}
	sn.Release()
	dst := openTest(t)
	if _, err := dst.Restore(context.Background(), &snap, func(ctx context.Context, missing []Hash, put func(Hash, []byte) error) error {
		return put(h, z)
	}); err != nil {
		t.Fatal(err)
	}
	var d1, d2 [32]byte
	_ = s.View(func(tx *Tx) error { d1 = tx.Digest(); return nil })
	_ = dst.View(func(tx *Tx) error {
		d2 = tx.Digest()
		m, _ := tx.QueueMeta(id)
		seen, _ := tx.Collected("isp", "uid-1")
		node, _, _ := tx.CollectLeaseOf("isp")
		if !m.DelayNotified || !seen || node != "n3" {
			t.Errorf("restored: meta %+v seen %v lease %q", m, seen, node)
		}
		return nil
	})
	if d1 != d2 {
		t.Fatal("digest differs after restore")
	}
	write(t, s, 23, func(tx *Tx) error { return tx.DeleteQueueEntry(id) })
	_ = s.View(func(tx *Tx) error {
		if m, _ := tx.QueueMeta(id); m.DelayNotified {
			t.Error("meta outlived its entry")
		}
		return nil
	})
}
