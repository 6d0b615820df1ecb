package storage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"hash"

	bolt "go.etcd.io/bbolt"
)

// Digest hashes the replicated state: every bucket, key and value that must
// be equal on every node at the same index. The last applied sequence is left
// out, since nodes record it per batch and batches differ between nodes.
func (tx *Tx) Digest() [32]byte {
	h := sha256.New()
	for _, name := range replicated {
		digestBucket(h, name, tx.tx.Bucket(name))
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func digestBucket(h hash.Hash, name []byte, b *bolt.Bucket) {
	var n [binary.MaxVarintLen64]byte
	write := func(p []byte) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(p)))])
		h.Write(p)
	}
	h.Write([]byte{'B'})
	write(name)
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil && b.Bucket(k) != nil {
			digestBucket(h, k, b.Bucket(k))
			continue
		}
		if bytes.Equal(name, bMeta) && bytes.Equal(k, kApplied) {
			continue
		}
		h.Write([]byte{'K'})
		write(k)
		write(v)
	}
	h.Write([]byte{'E'})
}
