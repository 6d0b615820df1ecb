package storage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"
)

// Snapshot format: a header ("FLOTSNAP", format version, index), then a zstd
// stream of records walking the replicated buckets, then an end record and the
// SHA-256 of all records. Bodies are not in it: only their reference counts.
//
//	'B' name      enter a (nested) bucket
//	'K' key value a key and its value in the current bucket
//	'E'           leave the current bucket
//	'L' hash body a message body, compressed (backups only)
//	'Z' sha256    end
//
// Names, keys, values and bodies are uvarint-length-prefixed. A backup is a
// snapshot that also carries every referenced body, so that it restores
// with no peer to fetch bodies from.

const (
	snapMagic   = "FLOTSNAP"
	snapVersion = 1
)

// ErrCorruptSnapshot is wrapped by every error about a snapshot's content.
var ErrCorruptSnapshot = errors.New("corrupt snapshot")

// Snapshot is a consistent view of the replicated state, being written out
// while writes go on.
type Snapshot struct {
	tx    *bolt.Tx
	index uint64
}

// Snapshot opens a read view of the state at its last applied sequence. It is
// cheap; the work happens in WriteTo. Release it when done.
func (s *Store) Snapshot() (*Snapshot, error) {
	tx, err := s.db.Begin(false)
	if err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	t := &Tx{tx: tx, s: s}
	return &Snapshot{tx: tx, index: t.Applied()}, nil
}

// Index is the sequence the snapshot was taken at.
func (sn *Snapshot) Index() uint64 { return sn.index }

// Release ends the read view.
func (sn *Snapshot) Release() { _ = sn.tx.Rollback() }

// WriteTo writes the snapshot and returns the number of bytes written.
func (sn *Snapshot) WriteTo(w io.Writer) (int64, error) { return sn.write(w, false) }

// WriteBackup writes the snapshot with every referenced message body.
func (sn *Snapshot) WriteBackup(w io.Writer) (int64, error) { return sn.write(w, true) }

func (sn *Snapshot) write(w io.Writer, bodies bool) (int64, error) {
	cw := &countingWriter{w: w}
	hdr := make([]byte, 0, 20)
	hdr = append(hdr, snapMagic...)
	hdr = binary.BigEndian.AppendUint32(hdr, snapVersion)
	hdr = binary.BigEndian.AppendUint64(hdr, sn.index)
	if _, err := cw.Write(hdr); err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", err)
	}
	zw, err := zstd.NewWriter(cw, zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return cw.n, err
	}
	rw := &recordWriter{w: bufio.NewWriterSize(zw, 256<<10), h: sha256.New()}
	for _, name := range replicated {
		rw.bucket(name, sn.tx.Bucket(name))
	}
	if bodies {
		btx := &Tx{tx: sn.tx}
		c := sn.tx.Bucket(bRefs).Cursor()
		for k, _ := c.First(); k != nil && rw.err == nil; k, _ = c.Next() {
			v := btx.blob(k)
			if v == nil {
				var h Hash
				copy(h[:], k)
				return cw.n, fmt.Errorf("backup: body %s is missing on this node; back up another node", h)
			}
			rw.buf = append(append(rw.buf[:0], 'L'), k...)
			rw.buf = binary.AppendUvarint(rw.buf, uint64(len(v)))
			rw.raw(rw.buf)
			rw.raw(v)
		}
	}
	rw.raw([]byte{'Z'})
	sum := rw.h.Sum(nil)
	if rw.err == nil {
		_, rw.err = rw.w.Write(sum)
	}
	if rw.err == nil {
		rw.err = rw.w.Flush()
	}
	if rw.err == nil {
		rw.err = zw.Close()
	}
	if rw.err != nil {
		return cw.n, fmt.Errorf("write snapshot: %w", rw.err)
	}
	return cw.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type recordWriter struct {
	w   *bufio.Writer
	h   hash.Hash
	err error
	buf []byte
}

func (rw *recordWriter) raw(b []byte) {
	if rw.err != nil {
		return
	}
	rw.h.Write(b)
	_, rw.err = rw.w.Write(b)
}

func (rw *recordWriter) bucket(name []byte, b *bolt.Bucket) {
	rw.buf = append(rw.buf[:0], 'B')
	rw.buf = binary.AppendUvarint(rw.buf, uint64(len(name)))
	rw.buf = append(rw.buf, name...)
	rw.raw(rw.buf)
	c := b.Cursor()
	for k, v := c.First(); k != nil && rw.err == nil; k, v = c.Next() {
		if v == nil && b.Bucket(k) != nil {
			rw.bucket(k, b.Bucket(k))
			continue
		}
		rw.buf = append(rw.buf[:0], 'K')
		rw.buf = binary.AppendUvarint(rw.buf, uint64(len(k)))
		rw.buf = append(rw.buf, k...)
		rw.buf = binary.AppendUvarint(rw.buf, uint64(len(v)))
		rw.raw(rw.buf)
		rw.raw(v)
	}
	rw.raw([]byte{'E'})
}

// FetchFunc obtains bodies this node lacks from its peers, calling put for
// each one (put verifies the hash).
type FetchFunc func(ctx context.Context, missing []Hash, put func(Hash, []byte) error) error

// Restore replaces the replicated state with a snapshot. The snapshot is read
// and verified into a scratch file first, missing bodies are fetched, and only
// then is the live state swapped in one transaction: a corrupt or truncated
// snapshot, or a failed fetch, leaves the store as it was.
func (s *Store) Restore(ctx context.Context, r io.Reader, fetch FetchFunc) (uint64, error) {
	scratchPath := s.path + ".restore"
	_ = os.Remove(scratchPath)
	scratch, err := bolt.Open(scratchPath, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	defer func() {
		scratch.Close()
		os.Remove(scratchPath)
	}()
	bw := s.NewBlobWriter()
	index, err := readSnapshot(r, scratch, bw.Put)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	if err := s.fetchMissing(ctx, scratch, fetch); err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	err = s.db.Update(func(live *bolt.Tx) error {
		return scratch.View(func(src *bolt.Tx) error { return swapIn(live, src, index) })
	})
	if err != nil {
		return 0, fmt.Errorf("restore: %w", err)
	}
	return index, nil
}

// SnapshotIndex reads the index from a snapshot's header.
func SnapshotIndex(r io.Reader) (uint64, error) {
	hdr := make([]byte, len(snapMagic)+12)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, fmt.Errorf("%w: header: %v", ErrCorruptSnapshot, err)
	}
	if string(hdr[:len(snapMagic)]) != snapMagic {
		return 0, fmt.Errorf("%w: not a Flotilla snapshot", ErrCorruptSnapshot)
	}
	return binary.BigEndian.Uint64(hdr[len(snapMagic)+4:]), nil
}

// BlobWriter stores bodies received whole (from a backup or a peer), each
// checked against its hash, a few hundred to a transaction: one commit (two
// fsyncs) per body made restoring 2,000 bodies take 0.59 s. The bodies stay
// unreferenced until a swap or until the references they were fetched for
// arrive. Flush stores what is pending. A failed write fails every later
// Put and Flush too, so that a caller checking only the last one still
// learns of it. A writer is not safe for concurrent use.
type BlobWriter struct {
	s       *Store
	pending []pendingBlob
	bytes   int
	err     error
}

type pendingBlob struct {
	h Hash
	z []byte
}

const (
	blobBatchCount = 512
	blobBatchBytes = 16 << 20
)

// NewBlobWriter returns a writer of bodies into s.
func (s *Store) NewBlobWriter() *BlobWriter { return &BlobWriter{s: s} }

// Put verifies a compressed body and queues it; the caller must not change
// compressed afterwards.
func (w *BlobWriter) Put(h Hash, compressed []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.s.Decompress(h, compressed); err != nil {
		return err
	}
	w.pending = append(w.pending, pendingBlob{h, compressed})
	w.bytes += len(compressed)
	if len(w.pending) >= blobBatchCount || w.bytes >= blobBatchBytes {
		return w.Flush()
	}
	return nil
}

// Flush stores the queued bodies in one transaction.
func (w *BlobWriter) Flush() error {
	if w.err != nil || len(w.pending) == 0 {
		return w.err
	}
	err := w.s.db.Update(func(btx *bolt.Tx) error {
		tx := &Tx{tx: btx, s: w.s}
		for _, p := range w.pending {
			if err := tx.PutBlob(p.h, p.z); err != nil {
				return err
			}
		}
		return nil
	})
	clear(w.pending)
	w.pending, w.bytes = w.pending[:0], 0
	if err != nil {
		w.err = fmt.Errorf("store bodies: %w", err)
	}
	return w.err
}

// VerifyBackup reads a snapshot or backup through to its checksum without
// storing anything, and returns its index and whether it carries bodies.
func VerifyBackup(r io.Reader, dir string) (index uint64, bodies int, err error) {
	scratchPath := filepath.Join(dir, "verify.scratch")
	_ = os.Remove(scratchPath)
	scratch, err := bolt.Open(scratchPath, 0o600, &bolt.Options{NoSync: true, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		scratch.Close()
		os.Remove(scratchPath)
	}()
	index, err = readSnapshot(r, scratch, func(Hash, []byte) error { bodies++; return nil })
	return index, bodies, err
}

// readSnapshot parses and verifies a snapshot into an empty scratch store;
// bodies it carries go to putBlob.
func readSnapshot(r io.Reader, scratch *bolt.DB, putBlob func(Hash, []byte) error) (uint64, error) {
	br := bufio.NewReader(r)
	hdr := make([]byte, len(snapMagic)+12)
	if _, err := io.ReadFull(br, hdr); err != nil {
		return 0, fmt.Errorf("%w: header: %v", ErrCorruptSnapshot, err)
	}
	if string(hdr[:len(snapMagic)]) != snapMagic {
		return 0, fmt.Errorf("%w: not a Flotilla snapshot", ErrCorruptSnapshot)
	}
	if v := binary.BigEndian.Uint32(hdr[len(snapMagic):]); v != snapVersion {
		return 0, fmt.Errorf("%w: format version %d, this build reads %d", ErrCorruptSnapshot, v, snapVersion)
	}
	index := binary.BigEndian.Uint64(hdr[len(snapMagic)+4:])
	zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	rr := &recordReader{r: bufio.NewReaderSize(zr, 256<<10), h: sha256.New()}

	// Records go into the scratch store in transactions of bounded size;
	// path is the stack of open buckets, reopened in each transaction.
	var path [][]byte
	tx, err := scratch.Begin(true)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback() }()
	var cur *bolt.Bucket
	pending := 0
	for {
		kind, err := rr.byte()
		if err != nil {
			return 0, err
		}
		switch kind {
		case 'B':
			name, err := rr.field()
			if err != nil {
				return 0, err
			}
			if cur == nil {
				cur, err = tx.CreateBucketIfNotExists(name)
			} else {
				cur, err = cur.CreateBucketIfNotExists(name)
			}
			if err != nil {
				return 0, fmt.Errorf("%w: bucket %q: %v", ErrCorruptSnapshot, name, err)
			}
			path = append(path, name)
		case 'K':
			if cur == nil {
				return 0, fmt.Errorf("%w: key outside any bucket", ErrCorruptSnapshot)
			}
			k, err := rr.field()
			if err != nil {
				return 0, err
			}
			v, err := rr.field()
			if err != nil {
				return 0, err
			}
			if err := cur.Put(k, v); err != nil {
				return 0, fmt.Errorf("%w: key: %v", ErrCorruptSnapshot, err)
			}
			if pending++; pending >= 50000 {
				if err := tx.Commit(); err != nil {
					return 0, err
				}
				if tx, err = scratch.Begin(true); err != nil {
					return 0, err
				}
				cur = openPath(tx, path)
				pending = 0
			}
		case 'L':
			var h Hash
			for i := range h {
				c, err := rr.byte()
				if err != nil {
					return 0, err
				}
				h[i] = c
			}
			body, err := rr.field()
			if err != nil {
				return 0, err
			}
			if err := putBlob(h, body); err != nil {
				return 0, fmt.Errorf("%w: body %s: %v", ErrCorruptSnapshot, h, err)
			}
		case 'E':
			if len(path) == 0 {
				return 0, fmt.Errorf("%w: unbalanced bucket end", ErrCorruptSnapshot)
			}
			path = path[:len(path)-1]
			cur = openPath(tx, path)
		case 'Z':
			want := rr.h.Sum(nil)
			got := make([]byte, sha256.Size)
			if _, err := io.ReadFull(rr.r, got); err != nil {
				return 0, fmt.Errorf("%w: truncated checksum", ErrCorruptSnapshot)
			}
			if !bytes.Equal(got, want) {
				return 0, fmt.Errorf("%w: checksum mismatch", ErrCorruptSnapshot)
			}
			if len(path) != 0 {
				return 0, fmt.Errorf("%w: ends inside a bucket", ErrCorruptSnapshot)
			}
			return index, tx.Commit()
		default:
			return 0, fmt.Errorf("%w: unknown record %q", ErrCorruptSnapshot, kind)
		}
	}
}

func openPath(tx *bolt.Tx, path [][]byte) *bolt.Bucket {
	if len(path) == 0 {
		return nil
	}
	b := tx.Bucket(path[0])
	for _, p := range path[1:] {
		b = b.Bucket(p)
	}
	return b
}

type recordReader struct {
	r *bufio.Reader
	h hash.Hash
}

func (rr *recordReader) byte() (byte, error) {
	c, err := rr.r.ReadByte()
	if err != nil {
		return 0, fmt.Errorf("%w: truncated: %v", ErrCorruptSnapshot, err)
	}
	rr.h.Write([]byte{c})
	return c, nil
}

func (rr *recordReader) field() ([]byte, error) {
	n, err := binary.ReadUvarint(rr.r)
	if err != nil || n > 1<<31 {
		return nil, fmt.Errorf("%w: bad length", ErrCorruptSnapshot)
	}
	var lenbuf [binary.MaxVarintLen64]byte
	rr.h.Write(lenbuf[:binary.PutUvarint(lenbuf[:], n)])
	b := make([]byte, n)
	if _, err := io.ReadFull(rr.r, b); err != nil {
		return nil, fmt.Errorf("%w: truncated: %v", ErrCorruptSnapshot, err)
	}
	rr.h.Write(b)
	return b, nil
}

// fetchMissing stores, in the live store, the bodies the snapshot refers to
// that this node lacks. They stay unreferenced until the swap.
func (s *Store) fetchMissing(ctx context.Context, scratch *bolt.DB, fetch FetchFunc) error {
	var missing []Hash
	err := scratch.View(func(src *bolt.Tx) error {
		refs := src.Bucket(bRefs)
		if refs == nil {
			return fmt.Errorf("%w: no body references", ErrCorruptSnapshot)
		}
		return s.db.View(func(live *bolt.Tx) error {
			blobs := live.Bucket(bBlobs)
			return refs.ForEach(func(k, _ []byte) error {
				if blobs.Get(k) == nil {
					var h Hash
					copy(h[:], k)
					missing = append(missing, h)
				}
				return nil
			})
		})
	})
	if err != nil || len(missing) == 0 {
		return err
	}
	if fetch == nil {
		return fmt.Errorf("%d message bodies missing and no peer to fetch them from", len(missing))
	}
	got := make(map[Hash]bool, len(missing))
	bw := s.NewBlobWriter()
	err = fetch(ctx, missing, func(h Hash, compressed []byte) error {
		got[h] = true
		return bw.Put(h, compressed)
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return fmt.Errorf("fetch bodies: %w", err)
	}
	for _, h := range missing {
		if !got[h] {
			return fmt.Errorf("fetch bodies: body %s not found on any peer", h)
		}
	}
	return nil
}

// swapIn replaces the replicated buckets of live with those of src and
// brings the local garbage list in line with the new references.
func swapIn(live, src *bolt.Tx, index uint64) error {
	// A node keeps the identity of the cluster it belongs to: restoring
	// another cluster's backup brings its data, not its name.
	clusterID := append([]byte(nil), live.Bucket(bMeta).Get(kClusterID)...)
	for _, name := range replicated {
		if err := live.DeleteBucket(name); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
			return err
		}
		dst, err := live.CreateBucket(name)
		if err != nil {
			return err
		}
		if sb := src.Bucket(name); sb != nil {
			if err := copyBucket(dst, sb); err != nil {
				return err
			}
		}
	}
	if len(clusterID) > 0 {
		if err := live.Bucket(bMeta).Put(kClusterID, clusterID); err != nil {
			return err
		}
	}
	refs, gc := live.Bucket(bRefs), live.Bucket(bBlobGC)
	return live.Bucket(bBlobs).ForEach(func(k, _ []byte) error {
		if refs.Get(k) != nil {
			return gc.Delete(k)
		}
		if gc.Get(k) == nil {
			return gc.Put(k, u64(index))
		}
		return nil
	})
}

func copyBucket(dst, src *bolt.Bucket) error {
	return src.ForEach(func(k, v []byte) error {
		if v == nil && src.Bucket(k) != nil {
			nb, err := dst.CreateBucket(k)
			if err != nil {
				return err
			}
			return copyBucket(nb, src.Bucket(k))
		}
		return dst.Put(k, v)
	})
}
