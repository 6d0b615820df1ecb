// Package storage holds Flotilla's durable state as typed records in bbolt:
// the directory (domains, users, aliases), mailboxes and messages, message
// bodies (content-addressed, zstd-compressed, reference-counted), the
// outbound queue and cluster settings. It knows nothing of Raft or of mail
// protocols: callers hand it a change sequence number and a clock with every
// write, so that the same writes give the same state on every node.
package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"
)

// Errors callers test with errors.Is. They describe the request, not the
// store, so they travel back to clients.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid")
	ErrQuota    = errors.New("quota exceeded")
	ErrLocked   = errors.New("locked")
)

// Bucket names. Part of the on-disk format.
var (
	bMeta      = []byte("meta")
	bDomains   = []byte("domains")
	bUsers     = []byte("users")
	bUserIDs   = []byte("userids")
	bAliases   = []byte("aliases")
	bMailboxes = []byte("mailboxes")
	bMbNames   = []byte("mbnames")
	bMessages  = []byte("messages") // nested: mailbox id -> uid -> Message
	bModSeqs   = []byte("modseqs")  // nested: mailbox id -> modseq|uid -> nil
	bUIDs      = []byte("uids")     // nested: mailbox id -> uid -> nil (compact, for sequence maps)
	bBlobs     = []byte("blobs")    // hash -> body number (local, not in digest or snapshot)
	bBodies    = []byte("bodies")   // body number -> zstd body (local)
	bRefs      = []byte("refs")     // hash -> reference count
	bBlobGC    = []byte("blobgc")   // hash -> sequence at which it became unreferenced (local)
	bLocal     = []byte("local")    // counters of this node's copy (local)
	bQueue     = []byte("queue")
	bRequests  = []byte("requests") // request id (time-ordered) -> response
	bSettings  = []byte("settings")

	// replicated lists the buckets that are the replicated state: equal on
	// every node at the same index, carried by snapshots, hashed by Digest.
	replicated = [][]byte{bMeta, bDomains, bUsers, bUserIDs, bAliases, bMailboxes, bMbNames,
		bMessages, bModSeqs, bUIDs, bRefs, bQueue, bRequests, bSettings, bPopLocks}
	local = [][]byte{bBlobs, bBodies, bBlobGC, bLocal}

	kApplied   = []byte("applied")   // last applied sequence; meta, not hashed
	kClusterID = []byte("clusterid") // set once by the first command
	kSchema    = []byte("schema")
)

// schemaVersion is the layout of the buckets above. A store written by a
// newer layout is refused rather than misread.
const schemaVersion = 1

// Options tune a store. The zero value is fine.
type Options struct {
	// MmapSize reserves address space so that the file can grow that far
	// without a remap (a remap waits for every open read transaction).
	MmapSize int
	// NoSync skips fsync; only for tests and benchmarks that say so.
	NoSync bool
}

// Store is one node's copy of the state.
type Store struct {
	db   *bolt.DB
	path string
	enc  *zstd.Encoder
	dec  *zstd.Decoder

	mu        sync.Mutex // guards observers
	observers []func([]Event)
}

// Open opens or creates the store at path.
func Open(path string, opt Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if opt.MmapSize == 0 {
		opt.MmapSize = 4 << 30
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout:         5 * time.Second, // another process holds the file lock
		InitialMmapSize: opt.MmapSize,
		NoFreelistSync:  true,
		FreelistType:    bolt.FreelistMapType,
		NoSync:          opt.NoSync,
	})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("open store %s: locked by another process (is another node running on this data dir?)", path)
		}
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{db: db, path: path}
	s.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(2))
	s.dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(1<<31))
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) init() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range append(append([][]byte{}, replicated...), local...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		meta := tx.Bucket(bMeta)
		if v := meta.Get(kSchema); v != nil {
			if got := binary.BigEndian.Uint64(v); got > schemaVersion {
				return fmt.Errorf("store %s has schema %d; this build reads up to %d: run a newer build", s.path, got, schemaVersion)
			}
		}
		return meta.Put(kSchema, u64(schemaVersion))
	})
}

// Close closes the store.
func (s *Store) Close() error {
	s.enc.Close()
	s.dec.Close()
	return s.db.Close()
}

// Path is the file the store lives in.
func (s *Store) Path() string { return s.path }

// Observe registers fn to receive the events of every committed write, in
// commit order, after the commit. fn must not block.
func (s *Store) Observe(fn func([]Event)) {
	s.mu.Lock()
	s.observers = append(s.observers, fn)
	s.mu.Unlock()
}

// Update runs fn in one write transaction and commits it (with fsync) if fn
// returns nil. Events recorded by fn are published after the commit.
func (s *Store) Update(fn func(*Tx) error) error {
	var events []Event
	err := s.db.Update(func(btx *bolt.Tx) error {
		tx := &Tx{tx: btx, s: s}
		if err := fn(tx); err != nil {
			return err
		}
		events = tx.events
		return nil
	})
	if err != nil {
		return err
	}
	if len(events) > 0 {
		s.mu.Lock()
		obs := s.observers
		s.mu.Unlock()
		for _, fn := range obs {
			fn(events)
		}
	}
	return nil
}

// View runs fn in a read-only transaction: a consistent view of one index.
func (s *Store) View(fn func(*Tx) error) error {
	return s.db.View(func(btx *bolt.Tx) error {
		return fn(&Tx{tx: btx, s: s})
	})
}

// Applied returns the last applied sequence number recorded in the store.
func (s *Store) Applied() (uint64, error) {
	var n uint64
	err := s.View(func(tx *Tx) error {
		n = tx.Applied()
		return nil
	})
	return n, err
}

// Tx is a transaction on the store. Write methods need a write transaction
// and a clock set with SetClock.
type Tx struct {
	tx     *bolt.Tx
	s      *Store
	seq    uint64
	now    int64
	events []Event
}

// SetClock sets the change sequence (used as MODSEQ and to order garbage
// collection) and the time of the writes that follow. Both come from the
// replicated command, never from this node's clock.
func (tx *Tx) SetClock(seq uint64, now time.Time) {
	tx.seq = seq
	tx.now = now.UnixNano()
}

// Now is the time set by SetClock.
func (tx *Tx) Now() time.Time { return time.Unix(0, tx.now) }

// Applied is the last sequence recorded by SetApplied.
func (tx *Tx) Applied() uint64 {
	if v := tx.tx.Bucket(bMeta).Get(kApplied); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// SetApplied records the last applied sequence in the same transaction as the
// writes it covers, so that a restart never applies an entry twice.
func (tx *Tx) SetApplied(seq uint64) error {
	return tx.tx.Bucket(bMeta).Put(kApplied, u64(seq))
}

// ClusterID returns the identity of the cluster this state belongs to, or "".
func (tx *Tx) ClusterID() string { return string(tx.tx.Bucket(bMeta).Get(kClusterID)) }

// SetClusterID records the cluster identity; it never changes once set.
func (tx *Tx) SetClusterID(id string) error {
	if cur := tx.ClusterID(); cur != "" && cur != id {
		return fmt.Errorf("%w: state belongs to cluster %s, not %s", ErrInvalid, cur, id)
	}
	return tx.tx.Bucket(bMeta).Put(kClusterID, []byte(id))
}

// nextID returns the next value of a named counter (1, 2, ...).
func (tx *Tx) nextID(name string) (uint64, error) {
	key := []byte("seq:" + name)
	meta := tx.tx.Bucket(bMeta)
	var n uint64
	if v := meta.Get(key); v != nil {
		n = binary.BigEndian.Uint64(v)
	}
	n++
	return n, meta.Put(key, u64(n))
}

func (tx *Tx) emit(e Event) {
	e.Seq = tx.seq
	tx.events = append(tx.events, e)
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func u32(v uint32) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return b[:]
}

func beU32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
func beU64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }
