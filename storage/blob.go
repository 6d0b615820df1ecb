package storage

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Message bodies are stored once per content, compressed, in a bucket that is
// local to each node: snapshots and digests carry only the reference counts
// (bucket refs), so their cost follows the metadata, not the mail. A body
// whose count drops to zero is recorded in blobgc with the sequence at which
// that happened and removed later by CollectGarbage, once no retained
// snapshot can still refer to it.
//
// Bodies are kept in bucket bodies under a number this node gives each in
// turn, and bucket blobs maps a hash to that number. Keyed by their hashes,
// bodies would land on random pages: every commit would rewrite a page and
// its branch path for each new body, where appending by number fills pages
// in order (measured: a quarter fewer bytes written per delivered message).
// Builds before this layout kept the body itself under its hash; such
// entries (never 8 bytes long: the shortest zstd frame is 9) are still read.

// Compress hashes and compresses a message body, for the proposer of a write:
// the replicated command carries the compressed bytes.
func (s *Store) Compress(body []byte) (Hash, []byte) {
	return sha256.Sum256(body), s.enc.EncodeAll(body, make([]byte, 0, len(body)/2+64))
}

// Decompress inflates a compressed body and checks it against its hash.
func (s *Store) Decompress(h Hash, compressed []byte) ([]byte, error) {
	body, err := s.dec.DecodeAll(compressed, nil)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", h, err)
	}
	if sha256.Sum256(body) != h {
		return nil, fmt.Errorf("blob %s: content does not match its hash", h)
	}
	return body, nil
}

// PutBlob stores a compressed body unless one with that hash is present. It
// does not take a reference.
func (tx *Tx) PutBlob(h Hash, compressed []byte) error {
	b := tx.tx.Bucket(bBlobs)
	if b.Get(h[:]) != nil {
		return nil
	}
	if err := tx.addBlobStats(1, int64(len(compressed))); err != nil {
		return err
	}
	bodies := tx.tx.Bucket(bBodies)
	bodies.FillPercent = 1 // only ever appended to
	n, err := bodies.NextSequence()
	if err != nil {
		return err
	}
	if err := bodies.Put(u64(n), compressed); err != nil {
		return err
	}
	return b.Put(h[:], u64(n))
}

// blob returns the stored compressed body of a hash, or nil.
func (tx *Tx) blob(h []byte) []byte {
	v := tx.tx.Bucket(bBlobs).Get(h)
	if len(v) != 8 {
		return v // absent, or a body stored by an older build
	}
	return tx.tx.Bucket(bBodies).Get(v)
}

// deleteBlob removes a stored body and returns its compressed size.
func (tx *Tx) deleteBlob(h []byte) (int, error) {
	blobs := tx.tx.Bucket(bBlobs)
	v := blobs.Get(h)
	if v == nil {
		return 0, nil
	}
	size := len(v)
	if len(v) == 8 {
		bodies := tx.tx.Bucket(bBodies)
		size = len(bodies.Get(v))
		if err := bodies.Delete(v); err != nil {
			return 0, err
		}
	}
	return size, blobs.Delete(h)
}

var kBlobCount, kBlobBytes = []byte("blobcount"), []byte("blobbytes")

func (tx *Tx) addBlobStats(count, bytes int64) error {
	l := tx.tx.Bucket(bLocal)
	for _, kv := range []struct {
		k []byte
		d int64
	}{{kBlobCount, count}, {kBlobBytes, bytes}} {
		var n int64
		if v := l.Get(kv.k); v != nil {
			n = int64(binary.BigEndian.Uint64(v))
		}
		if err := l.Put(kv.k, u64(uint64(n+kv.d))); err != nil {
			return err
		}
	}
	return nil
}

// HasBlob reports whether a body is stored on this node.
func (tx *Tx) HasBlob(h Hash) bool { return tx.tx.Bucket(bBlobs).Get(h[:]) != nil }

// Body returns a message body, decompressed and verified.
func (tx *Tx) Body(h Hash) ([]byte, error) {
	v := tx.blob(h[:])
	if v == nil {
		return nil, fmt.Errorf("blob %s: %w", h, ErrNotFound)
	}
	return tx.s.Decompress(h, v)
}

// CompressedBlob returns a copy of a stored body as compressed, for peers.
func (tx *Tx) CompressedBlob(h Hash) ([]byte, bool) {
	v := tx.blob(h[:])
	if v == nil {
		return nil, false
	}
	return append([]byte(nil), v...), true
}

// ref changes the reference count of a body.
func (tx *Tx) ref(h Hash, delta int64) error {
	refs := tx.tx.Bucket(bRefs)
	var n int64
	if v := refs.Get(h[:]); v != nil {
		n = int64(binary.BigEndian.Uint64(v))
	}
	n += delta
	switch {
	case n < 0:
		return fmt.Errorf("blob %s: reference count below zero", h)
	case n == 0:
		if err := refs.Delete(h[:]); err != nil {
			return err
		}
		return tx.tx.Bucket(bBlobGC).Put(h[:], u64(tx.seq))
	default:
		if n == delta { // it was unreferenced
			if err := tx.tx.Bucket(bBlobGC).Delete(h[:]); err != nil {
				return err
			}
		}
		return refs.Put(h[:], u64(uint64(n)))
	}
}

// ForgetIfUnreferenced marks a body stored but referenced by nothing as
// garbage, so that it does not stay forever.
func (tx *Tx) ForgetIfUnreferenced(h Hash) error {
	if tx.Refs(h) > 0 || tx.tx.Bucket(bBlobGC).Get(h[:]) != nil {
		return nil
	}
	return tx.tx.Bucket(bBlobGC).Put(h[:], u64(tx.seq))
}

// Refs returns the reference count of a body.
func (tx *Tx) Refs(h Hash) uint64 {
	if v := tx.tx.Bucket(bRefs).Get(h[:]); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// CollectGarbage deletes unreferenced bodies that became so at or before
// sequence upTo (the oldest snapshot still retained), and returns how many.
func (tx *Tx) CollectGarbage(upTo uint64) (int, error) {
	gc := tx.tx.Bucket(bBlobGC)
	var doomed [][]byte
	err := gc.ForEach(func(k, v []byte) error {
		if binary.BigEndian.Uint64(v) <= upTo {
			doomed = append(doomed, append([]byte(nil), k...))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range doomed {
		if tx.tx.Bucket(bBlobs).Get(k) != nil {
			size, err := tx.deleteBlob(k)
			if err != nil {
				return 0, err
			}
			if err := tx.addBlobStats(-1, -int64(size)); err != nil {
				return 0, err
			}
		}
		if err := gc.Delete(k); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}

// MissingBlobs returns up to limit referenced bodies not stored on this node.
func (tx *Tx) MissingBlobs(limit int) []Hash {
	var out []Hash
	blobs := tx.tx.Bucket(bBlobs)
	c := tx.tx.Bucket(bRefs).Cursor()
	for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
		if blobs.Get(k) == nil {
			var h Hash
			copy(h[:], k)
			out = append(out, h)
		}
	}
	return out
}

// BlobStats returns the number of bodies stored on this node and their
// compressed size.
func (tx *Tx) BlobStats() (count, bytes int64) {
	l := tx.tx.Bucket(bLocal)
	if v := l.Get(kBlobCount); v != nil {
		count = int64(binary.BigEndian.Uint64(v))
	}
	if v := l.Get(kBlobBytes); v != nil {
		bytes = int64(binary.BigEndian.Uint64(v))
	}
	return count, bytes
}
