package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "state.db"), Options{NoSync: true, MmapSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// write applies fn as the change with sequence seq.
func write(t testing.TB, s *Store, seq uint64, fn func(*Tx) error) {
	t.Helper()
	err := s.Update(func(tx *Tx) error {
		tx.SetClock(seq, time.Unix(1700000000, int64(seq)))
		if err := fn(tx); err != nil {
			return err
		}
		return tx.SetApplied(seq)
	})
	if err != nil {
		t.Fatalf("write %d: %v", seq, err)
	}
}

func deliver(t testing.TB, s *Store, seq uint64, user, body string) Message {
	t.Helper()
	var m Message
	h, z := s.Compress([]byte(body))
	write(t, s, seq, func(tx *Tx) error {
		u, err := tx.User(user)
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		if err != nil {
			return err
		}
		if err := tx.PutBlob(h, z); err != nil {
			return err
		}
		m, err = tx.AppendMessage(mb.ID, Message{Blob: h, Size: int64(len(body))}, false)
		return err
	})
	return m
}

func seed(t testing.TB, s *Store) {
	write(t, s, 1, func(tx *Tx) error {
		if _, err := tx.AddDomain("Example.ORG"); err != nil {
			return err
		}
		if _, err := tx.AddUser(User{Address: "Alice@example.org"}); err != nil {
			return err
		}
		_, err := tx.AddUser(User{Address: "bob@example.org"})
		return err
	})
}

func TestDirectory(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	err := s.Update(func(tx *Tx) error {
		tx.SetClock(2, time.Unix(1, 0))
		if _, err := tx.AddDomain("example.org"); !errors.Is(err, ErrExists) {
			t.Errorf("duplicate domain: %v", err)
		}
		if _, err := tx.AddUser(User{Address: "carol@nowhere.test"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("user in unknown domain: %v", err)
		}
		if _, err := tx.AddAlias("team@example.org", []string{"alice@example.org", "ghost@example.org"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("alias to unknown local user: %v", err)
		}
		a, err := tx.AddAlias("team@example.org", []string{"alice@example.org", "BOB@example.org", "x@remote.test"})
		if err != nil || len(a.Targets) != 3 || a.Targets[1] != "bob@example.org" {
			t.Errorf("alias: %+v %v", a, err)
		}
		if _, err := tx.AddAlias("@example.org", []string{"alice@example.org"}); err != nil {
			t.Errorf("catch-all: %v", err)
		}
		if _, err := tx.AddUser(User{Address: "team@example.org"}); !errors.Is(err, ErrExists) {
			t.Errorf("user over alias: %v", err)
		}
		if err := tx.RemoveDomain("example.org"); !errors.Is(err, ErrInvalid) {
			t.Errorf("remove non-empty domain: %v", err)
		}
		u, err := tx.User("ALICE@Example.org")
		if err != nil || u.Address != "alice@example.org" {
			t.Fatalf("user lookup: %+v %v", u, err)
		}
		mbs, err := tx.Mailboxes(u.ID)
		if err != nil || len(mbs) != len(DefaultMailboxes) {
			t.Errorf("mailboxes: %d %v", len(mbs), err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "a@", "@b.c", "no-at", "a b@c.d", "a@-x.org", "a@x..org"} {
		if _, _, err := NormalizeAddress(bad, false); err == nil {
			t.Errorf("NormalizeAddress(%q) accepted", bad)
		}
	}
}

func TestMessagesBodiesAndGarbage(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	m1 := deliver(t, s, 2, "alice@example.org", "same body")
	m2 := deliver(t, s, 3, "bob@example.org", "same body")
	m3 := deliver(t, s, 4, "alice@example.org", "other body")
	if m1.UID != 1 || m2.UID != 1 || m3.UID != 2 || m3.ModSeq != 4 {
		t.Fatalf("uids %d %d %d modseq %d", m1.UID, m2.UID, m3.UID, m3.ModSeq)
	}
	_ = s.View(func(tx *Tx) error {
		if n := tx.Refs(m1.Blob); n != 2 {
			t.Errorf("refs of shared body = %d, want 2", n)
		}
		if c, _ := tx.BlobStats(); c != 2 {
			t.Errorf("stored bodies = %d, want 2", c)
		}
		body, err := tx.Body(m1.Blob)
		if err != nil || string(body) != "same body" {
			t.Errorf("body %q %v", body, err)
		}
		return nil
	})
	write(t, s, 5, func(tx *Tx) error { return tx.RemoveUser("alice@example.org") })
	_ = s.View(func(tx *Tx) error {
		if n := tx.Refs(m1.Blob); n != 1 {
			t.Errorf("refs after removal = %d, want 1", n)
		}
		if !tx.HasBlob(m3.Blob) {
			t.Error("unreferenced body removed before garbage collection")
		}
		return nil
	})
	write(t, s, 6, func(tx *Tx) error {
		n, err := tx.CollectGarbage(4) // a snapshot at 4 may still need it
		if n != 0 {
			t.Errorf("collected %d at 4", n)
		}
		if n, err = tx.CollectGarbage(5); n != 1 {
			t.Errorf("collected %d at 5, want 1", n)
		}
		return err
	})
	_ = s.View(func(tx *Tx) error {
		if tx.HasBlob(m3.Blob) || !tx.HasBlob(m1.Blob) {
			t.Error("wrong body collected")
		}
		return nil
	})
}

func TestSnapshotRestore(t *testing.T) {
	src := openTest(t)
	seed(t, src)
	for i := 0; i < 50; i++ {
		deliver(t, src, uint64(2+i), "alice@example.org", fmt.Sprintf("message %d", i%10))
	}
	var snap bytes.Buffer
	sn, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.WriteTo(&snap); err != nil {
		t.Fatal(err)
	}
	sn.Release()
	var srcDigest [32]byte
	_ = src.View(func(tx *Tx) error { srcDigest = tx.Digest(); return nil })

	// A fresh node restores and fetches every body from the source.
	dst := openTest(t)
	fetched := 0
	fetch := func(ctx context.Context, missing []Hash, put func(Hash, []byte) error) error {
		return src.View(func(tx *Tx) error {
			for _, h := range missing {
				b, ok := tx.CompressedBlob(h)
				if !ok {
					continue
				}
				fetched++
				if err := put(h, b); err != nil {
					return err
				}
			}
			return nil
		})
	}
	idx, err := dst.Restore(context.Background(), bytes.NewReader(snap.Bytes()), fetch)
	if err != nil || idx != 51 {
		t.Fatalf("restore: %d %v", idx, err)
	}
	if fetched != 10 {
		t.Errorf("fetched %d bodies, want 10", fetched)
	}
	_ = dst.View(func(tx *Tx) error {
		if tx.Digest() != srcDigest {
			t.Error("restored digest differs")
		}
		if tx.Applied() != 51 {
			t.Errorf("applied = %d", tx.Applied())
		}
		return nil
	})
	// Restoring again fetches nothing: bodies already present are kept.
	fetched = 0
	if _, err := dst.Restore(context.Background(), bytes.NewReader(snap.Bytes()), fetch); err != nil || fetched != 0 {
		t.Fatalf("second restore fetched %d: %v", fetched, err)
	}
	if len(snap.Bytes()) > 20000 {
		t.Errorf("snapshot of 50 small messages is %d bytes", snap.Len())
	}
}

func TestCorruptSnapshotLeavesStateAlone(t *testing.T) {
	src := openTest(t)
	seed(t, src)
	deliver(t, src, 2, "alice@example.org", "hello")
	var snap bytes.Buffer
	sn, _ := src.Snapshot()
	sn.WriteTo(&snap)
	sn.Release()

	dst := openTest(t)
	seed(t, dst)
	var before [32]byte
	_ = dst.View(func(tx *Tx) error { before = tx.Digest(); return nil })
	cases := map[string][]byte{
		"truncated":   snap.Bytes()[:snap.Len()/2],
		"bad magic":   append([]byte("NOTASNAP"), snap.Bytes()[8:]...),
		"empty":       nil,
		"flipped bit": flip(snap.Bytes(), snap.Len()-5),
	}
	for name, b := range cases {
		_, err := dst.Restore(context.Background(), bytes.NewReader(b), nil)
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("%s: err = %v, want ErrCorruptSnapshot", name, err)
		}
	}
	_ = dst.View(func(tx *Tx) error {
		if tx.Digest() != before {
			t.Error("a failed restore changed the state")
		}
		return nil
	})
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x40
	return c
}

func TestRequests(t *testing.T) {
	s := openTest(t)
	id := NewRequestID(time.Unix(1700000000, 5), []byte{1, 2, 3, 4, 5, 6, 7, 8})
	write(t, s, 1, func(tx *Tx) error { return tx.PutRequest(id, []byte("resp")) })
	_ = s.View(func(tx *Tx) error {
		if r, ok := tx.Request(id); !ok || string(r) != "resp" {
			t.Errorf("request = %q %v", r, ok)
		}
		return nil
	})
	write(t, s, 2, func(tx *Tx) error { return tx.PruneRequests(time.Unix(1700000001, 0).UnixNano()) })
	_ = s.View(func(tx *Tx) error {
		if _, ok := tx.Request(id); ok {
			t.Error("request not pruned")
		}
		return nil
	})
}

func FuzzRestore(f *testing.F) {
	src, err := Open(filepath.Join(f.TempDir(), "src.db"), Options{NoSync: true, MmapSize: 16 << 20})
	if err != nil {
		f.Fatal(err)
	}
	_ = src.Update(func(tx *Tx) error {
		tx.SetClock(1, time.Unix(1, 0))
		if _, err := tx.AddDomain("example.org"); err != nil {
			return err
		}
		_, err := tx.AddUser(User{Address: "a@example.org"})
		return err
	})
	var snap bytes.Buffer
	sn, _ := src.Snapshot()
	sn.WriteTo(&snap)
	sn.Release()
	src.Close()
	f.Add(snap.Bytes())
	f.Add([]byte("FLOTSNAP\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x05"))
	dst, err := Open(filepath.Join(f.TempDir(), "dst.db"), Options{NoSync: true, MmapSize: 16 << 20})
	if err != nil {
		f.Fatal(err)
	}
	defer dst.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		var before [32]byte
		_ = dst.View(func(tx *Tx) error { before = tx.Digest(); return nil })
		if _, err := dst.Restore(context.Background(), bytes.NewReader(b), nil); err != nil {
			// A refused snapshot leaves the state exactly as it was.
			_ = dst.View(func(tx *Tx) error {
				if tx.Digest() != before {
					t.Fatal("failed restore changed the state")
				}
				return nil
			})
		}
	})
}

func TestBackupCarriesBodies(t *testing.T) {
	src := openTest(t)
	seed(t, src)
	m := deliver(t, src, 2, "alice@example.org", "a body worth keeping")
	var backup bytes.Buffer
	sn, _ := src.Snapshot()
	if _, err := sn.WriteBackup(&backup); err != nil {
		t.Fatal(err)
	}
	sn.Release()
	idx, bodies, err := VerifyBackup(bytes.NewReader(backup.Bytes()), t.TempDir())
	if err != nil || idx != 2 || bodies != 1 {
		t.Fatalf("verify: index %d, %d bodies, %v", idx, bodies, err)
	}
	// Restored with no peer to fetch from: the bodies come with it. The
	// restoring store keeps its own cluster identity.
	dst := openTest(t)
	write(t, dst, 1, func(tx *Tx) error { return tx.SetClusterID("other-cluster") })
	if _, err := dst.Restore(context.Background(), bytes.NewReader(backup.Bytes()), nil); err != nil {
		t.Fatal(err)
	}
	_ = dst.View(func(tx *Tx) error {
		body, err := tx.Body(m.Blob)
		if err != nil || string(body) != "a body worth keeping" {
			t.Errorf("body %q %v", body, err)
		}
		if tx.ClusterID() != "other-cluster" {
			t.Errorf("cluster id %q", tx.ClusterID())
		}
		return nil
	})
	// A truncated backup is refused by VerifyBackup.
	if _, _, err := VerifyBackup(bytes.NewReader(backup.Bytes()[:backup.Len()-10]), t.TempDir()); !errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("truncated backup: %v", err)
	}
}

// Bodies are appended in the order they arrive, under numbers, whatever
// their hashes; a body stored by an older build under its hash is still
// read, counted, backed up and collected.
func TestBodiesAppendInOrderAndOldLayoutIsRead(t *testing.T) {
	s := openTest(t)
	seed(t, s)
	var msgs []Message
	for i := 0; i < 20; i++ {
		msgs = append(msgs, deliver(t, s, uint64(2+i), "alice@example.org", fmt.Sprintf("body %d", i)))
	}
	// An entry as builds before the numbered layout wrote it.
	old := "a body from an older build"
	oh, oz := s.Compress([]byte(old))
	write(t, s, 30, func(tx *Tx) error {
		u, err := tx.User("bob@example.org")
		if err != nil {
			return err
		}
		mb, err := tx.Mailbox(u.ID, "INBOX")
		if err != nil {
			return err
		}
		if err := tx.addBlobStats(1, int64(len(oz))); err != nil {
			return err
		}
		if err := tx.tx.Bucket(bBlobs).Put(oh[:], oz); err != nil {
			return err
		}
		_, err = tx.AppendMessage(mb.ID, Message{Blob: oh, Size: int64(len(old))}, false)
		return err
	})
	_ = s.View(func(tx *Tx) error {
		var last uint64
		n := 0
		err := tx.tx.Bucket(bBodies).ForEach(func(k, _ []byte) error {
			if got := binary.BigEndian.Uint64(k); got <= last {
				t.Errorf("body number %d after %d", got, last)
			} else {
				last = got
			}
			n++
			return nil
		})
		if err != nil || n != 20 {
			t.Errorf("%d numbered bodies (%v), want 20", n, err)
		}
		for i, m := range msgs {
			if b, err := tx.Body(m.Blob); err != nil || string(b) != fmt.Sprintf("body %d", i) {
				t.Errorf("body %d = %q, %v", i, b, err)
			}
		}
		if b, err := tx.Body(oh); err != nil || string(b) != old {
			t.Errorf("old-layout body = %q, %v", b, err)
		}
		if c, _ := tx.BlobStats(); c != 21 {
			t.Errorf("stored bodies = %d, want 21", c)
		}
		return nil
	})
	var backup bytes.Buffer
	sn, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sn.WriteBackup(&backup); err != nil {
		t.Fatalf("backup with an old-layout body: %v", err)
	}
	sn.Release()
	write(t, s, 31, func(tx *Tx) error {
		if err := tx.RemoveUser("bob@example.org"); err != nil {
			return err
		}
		return tx.RemoveUser("alice@example.org")
	})
	write(t, s, 32, func(tx *Tx) error {
		n, err := tx.CollectGarbage(31)
		if n != 21 {
			t.Errorf("collected %d, want 21", n)
		}
		return err
	})
	_ = s.View(func(tx *Tx) error {
		if c, b := tx.BlobStats(); c != 0 || b != 0 {
			t.Errorf("after collection: %d bodies, %d bytes", c, b)
		}
		if k, _ := tx.tx.Bucket(bBodies).Cursor().First(); k != nil {
			t.Error("a numbered body outlived its collection")
		}
		if k, _ := tx.tx.Bucket(bBlobs).Cursor().First(); k != nil {
			t.Error("a blob entry outlived its collection")
		}
		return nil
	})
}

// BenchmarkRestoreBackup restores a backup carrying 2,000 bodies into a
// store that fsyncs its commits, as a node's does.
func BenchmarkRestoreBackup(b *testing.B) {
	src, err := Open(filepath.Join(b.TempDir(), "src.db"), Options{NoSync: true, MmapSize: 256 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	seed(b, src)
	for i := 0; i < 2000; i++ {
		deliver(b, src, uint64(2+i), "alice@example.org", fmt.Sprintf("body %d %s", i, bytes.Repeat([]byte("mail "), 1000)))
	}
	var backup bytes.Buffer
	sn, _ := src.Snapshot()
	if _, err := sn.WriteBackup(&backup); err != nil {
		b.Fatal(err)
	}
	sn.Release()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst, err := Open(filepath.Join(b.TempDir(), "dst.db"), Options{MmapSize: 256 << 20})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := dst.Restore(context.Background(), bytes.NewReader(backup.Bytes()), nil); err != nil {
			b.Fatal(err)
		}
		dst.Close()
	}
}

// Bodies from a peer are stored in batches; a corrupt one is refused and
// the others still land, and a failed write is reported by every later call.
func TestBlobWriterBatchesAndReportsFailure(t *testing.T) {
	s := openTest(t)
	w := s.NewBlobWriter()
	var hashes []Hash
	for i := 0; i < blobBatchCount+3; i++ {
		h, z := s.Compress([]byte(fmt.Sprintf("fetched body %d", i)))
		hashes = append(hashes, h)
		if err := w.Put(h, z); err != nil {
			t.Fatal(err)
		}
	}
	bad, _ := s.Compress([]byte("the body the hash names"))
	_, other := s.Compress([]byte("another body"))
	if err := w.Put(bad, other); err == nil {
		t.Error("a body that does not match its hash was accepted")
	}
	_ = s.View(func(tx *Tx) error {
		if c, _ := tx.BlobStats(); c != blobBatchCount {
			t.Errorf("%d bodies stored before Flush, want one batch of %d", c, blobBatchCount)
		}
		return nil
	})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = s.View(func(tx *Tx) error {
		for i, h := range hashes {
			if b, err := tx.Body(h); err != nil || string(b) != fmt.Sprintf("fetched body %d", i) {
				t.Errorf("body %d = %q, %v", i, b, err)
			}
		}
		if tx.HasBlob(bad) {
			t.Error("the corrupt body was stored")
		}
		return nil
	})
	// A database that can no longer be written: the failure sticks.
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	h, z := s.Compress([]byte("too late"))
	if err := w.Put(h, z); err != nil {
		t.Fatalf("put before the flush that fails: %v", err)
	}
	if err := w.Flush(); err == nil {
		t.Fatal("a flush into a closed store reported success")
	}
	if err := w.Put(h, z); err == nil || w.Flush() == nil {
		t.Error("a later Put or Flush forgot the failure")
	}
}
