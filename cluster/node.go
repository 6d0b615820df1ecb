// Package cluster makes one Flotilla node a member of a Raft cluster: the
// replicated state machine over storage, writes forwarded to the leader,
// membership by gossip, autopilot-style voter management, and the cluster
// port that carries Raft and node-to-node RPC over mutual TLS.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Config is what a node needs to know.
type Config struct {
	NodeID  string
	DataDir string
	// BindAddr is the IP every listener binds to; AdvertiseAddr what peers
	// use to reach this node (default: BindAddr).
	BindAddr, AdvertiseAddr string
	ClusterPort, GossipPort int
	// HTTPAddr is advertised to peers so that status can point at each
	// node's admin API.
	HTTPAddr        string
	Join            []string
	BootstrapExpect int
	Site            string
	TLS             TLSFiles
	GossipKey       []byte
	// DeadServerGrace: a voter gone this long is removed by the leader.
	DeadServerGrace time.Duration
	// WriteTimeout bounds a write whose context has no deadline.
	WriteTimeout time.Duration
	// LeaderWait is how long a write waits for a leader to appear before it
	// is refused: a node that cannot reach a majority says so promptly.
	LeaderWait time.Duration
	// UncertainWait bounds the retries of a write that may have been
	// appended (see submitWith); below the dedup window of the FSM.
	UncertainWait time.Duration
	// Raft timing; zero values take the defaults below.
	HeartbeatTimeout  time.Duration
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// ApplyWindow is how long entries nobody on this node waits for may
	// gather before the store applies them (default lazyWindow); tests
	// lengthen it to show who waits.
	ApplyWindow time.Duration
	// NoSync skips fsync (tests and benchmarks that say so only).
	NoSync bool
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("no data dir")
	}
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1"
	}
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = c.BindAddr
	}
	if ip := net.ParseIP(c.AdvertiseAddr); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("advertise address %q: give the IP peers reach this node at", c.AdvertiseAddr)
	}
	if c.ClusterPort == 0 {
		c.ClusterPort = 7000
	}
	if c.GossipPort == 0 {
		c.GossipPort = 7946
	}
	if c.DeadServerGrace == 0 {
		c.DeadServerGrace = 5 * time.Minute
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.LeaderWait == 0 {
		c.LeaderWait = 5 * time.Second
	}
	if c.UncertainWait == 0 {
		c.UncertainWait = 5 * time.Minute
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = 500 * time.Millisecond
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 2 * time.Minute
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 16384
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 10240
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Errors of writes, for callers to map to protocol replies.
var (
	// ErrUnavailable: no leader can be reached; the write was not accepted.
	ErrUnavailable = errors.New("cluster unavailable")
	// ErrNotSupported: some voter is too old for this kind of write.
	ErrNotSupported = errors.New("not supported by every node yet")
	// ErrUncertain: the write may or may not have been stored (the cluster
	// lost its leader under it and no leader came back in time).
	ErrUncertain = errors.New("outcome unknown")
)

// Node is one member of a cluster.
type Node struct {
	cfg      Config
	log      *slog.Logger
	tls      *clusterTLS
	id       *identity
	store    *storage.Store
	logStore *raftboltdb.BoltStore
	logs     *logCache // logStore with its newest entries in memory
	snaps    *raft.FileSnapshotStore
	fsm      *fsm
	commits  *commitTracker
	leaders  *leaderWatch // ends forwards to a leader that is no longer one
	// readsLast: the nodes known to answer a read index with their last log
	// index (nodeMeta.ReadsLast), kept by membership.
	readsLast atomic.Pointer[map[raft.ServerID]bool]
	metrics   *metrics
	mux       *mux
	trans     *raft.NetworkTransport
	raft      *raft.Raft
	members   *membership
	rpc       *http.Server
	client    *http.Client
	streams   *streams       // forwarding streams to leaders
	fwd       *forwardServer // and theirs to this node

	started time.Time
	// readyTerm is the term in which this node, as leader, has applied a
	// barrier: from then on its commit index covers every earlier entry
	// and can serve reads.
	readyTerm atomic.Uint64
	// snapshotBad: the newest snapshot failed its checksum at start.
	snapshotBad atomic.Bool
	fatal       chan error
	fatalOnce   sync.Once
	stop        context.CancelFunc
	wg          sync.WaitGroup
	closeOnce   sync.Once
}

// New opens a node's data dir and checks that it belongs to this node and
// cluster. Nothing listens until Start.
func New(cfg Config) (*Node, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, fatal: make(chan error, 1)}
	var err error
	if n.tls, err = loadClusterTLS(cfg.TLS); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "raft"), 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if n.id, err = loadIdentity(cfg.DataDir, &n.cfg.NodeID, n.tls.caFingerprint); err != nil {
		return nil, err
	}
	n.log = n.log.With("node", n.cfg.NodeID)
	if n.store, err = storage.Open(filepath.Join(cfg.DataDir, "state.db"), storage.Options{NoSync: cfg.NoSync}); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			n.closeStores()
		}
	}()
	// The log's free list is rebuilt at open rather than written with every
	// commit: one page less per fsync on the hot path.
	if n.logStore, err = raftboltdb.New(raftboltdb.Options{Path: n.raftLogPath(), NoSync: cfg.NoSync,
		BoltOptions: &bolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bolt.FreelistMapType}}); err != nil {
		return nil, fmt.Errorf("raft log: %w", err)
	}
	if n.snaps, err = raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.DataDir, "raft"), 2, newHCLogger("snapshot", n.log)); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	if err := n.checkStateAgainstSnapshots(); err != nil {
		return nil, err
	}
	n.metrics = newMetrics(n)
	if n.fsm, err = newFSM(n.store, n.log, n.metrics, n.fail); err != nil {
		return nil, err
	}
	if cfg.ApplyWindow > 0 {
		n.fsm.qmu.Lock()
		n.fsm.window = cfg.ApplyWindow
		n.fsm.qmu.Unlock()
	}
	n.fsm.fetch = n.fetchBlobs
	n.logs = newLogCache(n.logStore)
	n.fsm.useLog(n.logs)
	n.commits = newCommitTracker(n.logs, func() *raft.Raft { return n.raft })
	n.leaders = newLeaderWatch(func() string { addr, _ := n.raft.LeaderWithID(); return string(addr) })
	n.fsm.committed = n.commits.applying
	ok = true
	return n, nil
}

// checkStateAgainstSnapshots refuses a state file that is behind the newest
// snapshot: the log before the snapshot is gone, so the gap can't be replayed
// (Raft does not restore snapshots at start; the state file is the state).
func (n *Node) checkStateAgainstSnapshots() error {
	list, err := n.snaps.List()
	if err != nil || len(list) == 0 {
		return err
	}
	_, rc, err := n.snaps.Open(list[0].ID)
	if err != nil {
		// The state file is intact (it is the state); only what would be
		// sent to a lagging peer is damaged. Replace it at the next chance.
		n.log.Error("newest snapshot is corrupt; it will be replaced by a fresh one once there is something new to snapshot",
			"snapshot", list[0].ID, "err", err)
		n.snapshotBad.Store(true)
		return nil
	}
	defer rc.Close()
	snapIndex, err := storage.SnapshotIndex(rc)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", list[0].ID, err)
	}
	applied, err := n.store.Applied()
	if err != nil {
		return err
	}
	if applied < snapIndex {
		return fmt.Errorf("data dir %s: the state file is at index %d but the Raft log was compacted up to index %d: "+
			"the state file was lost or replaced; move the data dir away and let the node rejoin empty", n.cfg.DataDir, applied, snapIndex)
	}
	return nil
}

func (n *Node) raftLogPath() string { return filepath.Join(n.cfg.DataDir, "raft", "raft.db") }

// fail stops the node for a reason it cannot recover from by itself.
func (n *Node) fail(err error) {
	n.log.Error("node cannot continue", "err", err)
	n.fatalOnce.Do(func() { n.fatal <- err })
}

// Fatal delivers the reason if the node stops itself.
func (n *Node) Fatal() <-chan error { return n.fatal }

func (n *Node) startedAt() time.Time { return n.started }

// ID is this node's ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// Store is this node's copy of the state, for reads.
func (n *Node) Store() *storage.Store { return n.store }

// Metrics returns the node's Prometheus registry.
func (n *Node) Metrics() http.Handler { return promHandler(n.metrics.reg) }

// Start opens the cluster port, starts Raft and joins the cluster.
func (n *Node) Start(ctx context.Context) error {
	n.started = time.Now()
	bindIP := net.ParseIP(n.cfg.BindAddr)
	ln, err := net.Listen("tcp", net.JoinHostPort(n.cfg.BindAddr, strconv.Itoa(n.cfg.ClusterPort)))
	if err != nil {
		return fmt.Errorf("cluster port: %w", err)
	}
	advertise := &net.TCPAddr{IP: net.ParseIP(n.cfg.AdvertiseAddr), Port: n.cfg.ClusterPort}
	n.mux = newMux(ln, n.tls, bindIP, advertise, n.log)
	n.client = &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return n.mux.dial(ctx, addr, protoRPC)
		},
		MaxIdleConnsPerHost: 32,
		IdleConnTimeout:     time.Minute,
	}}
	n.streams = newStreams(func(ctx context.Context, addr string) (net.Conn, error) {
		return n.mux.dial(ctx, addr, protoForward)
	})
	n.fwd = newForwardServer(n.answerForward)
	n.rpc = &http.Server{Handler: n.rpcHandler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelWarn)}

	n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: streamLayer{chanListener: n.mux.raft, m: n.mux}, MaxPool: 5, Timeout: 10 * time.Second,
		Logger: newHCLogger("raft-net", n.log),
	})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.NodeID)
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.HeartbeatTimeout
	rc.LeaderLeaseTimeout = n.cfg.HeartbeatTimeout / 2
	// Followers learn the commit index from the leader's next append; when
	// writes pause, that is CommitTimeout (Raft's default 50 ms) later, and
	// a write through a follower waits for its own node to apply it. 5 ms
	// costs an empty append every 5-10 ms per follower.
	rc.CommitTimeout = 5 * time.Millisecond
	rc.MaxAppendEntries = 512
	rc.BatchApplyCh = true
	rc.SnapshotInterval = n.cfg.SnapshotInterval
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.NoSnapshotRestoreOnStart = true
	rc.Logger = newHCLogger("raft", n.log)
	logs := trackingLogStore{LogStore: n.logs, t: n.commits, self: raft.ServerID(n.cfg.NodeID), fsm: n.fsm, metrics: n.metrics,
		readsLast: func(id raft.ServerID) bool { m := n.readsLast.Load(); return m != nil && (*m)[id] }}
	if n.raft, err = raft.NewRaft(rc, n.fsm, logs, n.logStore, n.snaps, n.trans); err != nil {
		return fmt.Errorf("raft: %w", err)
	}
	bg, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	if n.members, err = newMembership(n); err != nil {
		return err
	}
	// Peers are served only now that Raft and membership exist: a request
	// arriving earlier would find them missing.
	n.wg.Add(3)
	go func() {
		defer n.wg.Done()
		n.mux.serve()
	}()
	go func() {
		defer n.wg.Done()
		_ = n.rpc.Serve(n.mux.rpc)
	}()
	go func() {
		defer n.wg.Done()
		n.fwd.serve(n.mux.fwd)
	}()
	n.wg.Add(6)
	go func() { defer n.wg.Done(); n.leaders.run(bg, n.raft) }()
	go func() { defer n.wg.Done(); n.commits.run(bg) }()
	go func() { defer n.wg.Done(); n.members.joinLoop(bg) }()
	go func() { defer n.wg.Done(); n.bootstrapLoop(bg) }()
	go func() { defer n.wg.Done(); n.leaderLoop(bg) }()
	go func() { defer n.wg.Done(); n.maintenanceLoop(bg) }()
	return nil
}

// Shutdown leaves the cluster cleanly: leadership is handed over first, so
// that writes continue without waiting for an election.
func (n *Node) Shutdown(ctx context.Context) error {
	var err error
	n.closeOnce.Do(func() {
		if n.raft != nil && n.raft.State() == raft.Leader && n.voterCount() > 1 {
			if f := n.raft.LeadershipTransfer(); f.Error() != nil {
				n.log.Warn("leadership transfer failed", "err", f.Error())
			} else {
				n.log.Info("handed leadership over before stopping")
			}
		}
		if n.stop != nil {
			n.stop()
		}
		if n.members != nil {
			n.members.leave(2 * time.Second)
		}
		if n.raft != nil {
			err = n.raft.Shutdown().Error()
		}
		if n.rpc != nil {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_ = n.rpc.Shutdown(sctx)
			cancel()
		}
		if n.streams != nil {
			n.streams.close()
		}
		if n.fwd != nil {
			n.mux.fwd.Close()
			n.fwd.close()
		}
		if n.trans != nil {
			_ = n.trans.Close()
		}
		if n.mux != nil {
			n.mux.close()
		}
		n.wg.Wait()
		n.closeStores()
	})
	return err
}

func (n *Node) closeStores() {
	if n.fsm != nil {
		n.fsm.close()
	}
	if n.logStore != nil {
		n.logStore.Close()
	}
	if n.store != nil {
		n.store.Close()
	}
}

// Propose replicates a command and waits until this node has applied it, so
// the caller then reads its own write locally. It returns the command's
// response and log index; a failed command's error matches the storage
// sentinels. A command kind is proposed only when every voter knows it.
func (n *Node) Propose(ctx context.Context, c command.Command) (command.Response, uint64, error) {
	if _, err := n.checkVersion(c); err != nil {
		return command.Response{}, 0, err
	}
	// No deadline is added here: submit bounds its own retries, and a
	// committed write is waited for until it is applied here (or the
	// caller gives up), never reported failed.
	//
	// The proposer waits for its own node's apply only, never for the
	// leader's: apply is deterministic, so this node's state machine
	// computes the same response and keeps it under the request ID. The
	// leader answers at commit, and the wait for the leader's store commit
	// (an fsync) leaves the path of every write made through a follower.
	entry, id := newEntry(c)
	start := time.Now()
	idx, _, err := n.submitWith(ctx, entry, true)
	if err != nil {
		return command.Response{}, 0, err
	}
	n.metrics.commitLatency.Observe(time.Since(start).Seconds())
	resp, err := n.appliedResponse(ctx, idx, id)
	if err != nil {
		return resp, idx, err
	}
	return resp, idx, resp.Err()
}

// appliedResponse waits until this node has applied the entry at index and
// returns the response its state machine recorded for the request.
func (n *Node) appliedResponse(ctx context.Context, index uint64, id storage.RequestID) (command.Response, error) {
	if err := n.WaitApplied(ctx, index); err != nil {
		return command.Response{}, fmt.Errorf("committed at index %d but not yet applied here: %w", index, err)
	}
	resp, err := n.localResponse(id)
	if err != nil {
		return resp, fmt.Errorf("committed at index %d: %w", index, err)
	}
	return resp, nil
}

// localResponse is the response this node's state machine recorded for a
// request it has applied.
func (n *Node) localResponse(id storage.RequestID) (command.Response, error) {
	var raw []byte
	var ok bool
	err := n.store.View(func(tx *storage.Tx) error {
		raw, ok = tx.Request(id)
		return nil
	})
	if err != nil {
		return command.Response{}, err
	}
	if !ok {
		return command.Response{}, fmt.Errorf("no response recorded for request %x", id)
	}
	return command.UnmarshalResponse(raw)
}

// ProposeCommitted replicates a command and returns as soon as it is
// committed: stored (fsynced) on a majority, not yet applied anywhere. That
// is the durability an SMTP 250 promises, one fsync sooner than Propose;
// the command's response is not known, so it suits writes whose outcome the
// caller does not read (a delivery). It returns the entry's index.
func (n *Node) ProposeCommitted(ctx context.Context, c command.Command) (uint64, error) {
	if _, err := n.checkVersion(c); err != nil {
		return 0, err
	}
	entry, _ := newEntry(c)
	start := time.Now()
	idx, _, err := n.submitWith(ctx, entry, true)
	if err == nil {
		n.metrics.commitLatency.Observe(time.Since(start).Seconds())
	}
	return idx, err
}

func (n *Node) checkVersion(c command.Command) (command.Spec, error) {
	spec, ok := command.Lookup(c.Type())
	if !ok {
		return spec, fmt.Errorf("propose: unknown command type %d", c.Type())
	}
	if v, who := n.members.minCommandVersion(); spec.Version > v {
		return spec, fmt.Errorf("%w: %s needs command version %d, node %s understands %d: upgrade every node first",
			ErrNotSupported, spec.Name, spec.Version, who, v)
	}
	return spec, nil
}

// newEntry encodes a command as a log entry with a fresh request ID.
func newEntry(c command.Command) ([]byte, storage.RequestID) {
	now := time.Now()
	var r [8]byte
	_, _ = rand.Read(r[:])
	id := storage.NewRequestID(now, r[:])
	return command.Encode(c, id, now), id
}

var errNotLeader = errors.New("not the leader")

// submit gets an entry committed through whichever node leads, retrying as
// leadership moves. Retries resend the same entry (same request ID), which the
// state machine applies at most once.
func (n *Node) submit(ctx context.Context, entry []byte) (uint64, command.Response, error) {
	return n.submitWith(ctx, entry, false)
}

// submitWith is submit; with commitOnly it returns at commit, with no
// response.
//
// A write fails promptly (ErrUnavailable, after WriteTimeout or LeaderWait
// without a leader) only while it certainly reached no log. Once an attempt
// may have appended the entry (a leader lost its leadership under it, a
// forwarded request got no answer), a failure answer could be a lie: the
// entry may still commit, and a client told "try again" would store the
// message twice. So from then on the entry is retried, under the same
// request ID (applied at most once), until its fate is known or
// UncertainWait passes (ErrUncertain).
func (n *Node) submitWith(ctx context.Context, entry []byte, commitOnly bool) (uint64, command.Response, error) {
	start := time.Now()
	backoff := 5 * time.Millisecond
	uncertain := false
	var leaderless time.Time
	var lastErr error
	for {
		limit := n.cfg.WriteTimeout
		if uncertain {
			limit = n.cfg.UncertainWait
		}
		left := limit - time.Since(start)
		if left <= 0 {
			if uncertain {
				return 0, command.Response{}, fmt.Errorf("%w: node %s lost the majority while the write was in flight; it may still be applied once the cluster is whole (%v)",
					ErrUncertain, n.cfg.NodeID, lastErr)
			}
			return 0, command.Response{}, fmt.Errorf("%w: no leader reachable from node %s (it cannot reach a majority of the cluster): %v",
				ErrUnavailable, n.cfg.NodeID, lastErr)
		}
		actx, cancel := context.WithTimeout(ctx, left)
		var (
			idx  uint64
			resp command.Response
			err  error
			sent bool
		)
		if n.raft.State() == raft.Leader {
			leaderless = time.Time{}
			if commitOnly {
				idx, _, err = n.commitAsLeader(actx, entry)
			} else {
				idx, resp, err = n.applyAsLeader(actx, entry)
			}
			sent = err != nil && !notAppended(err)
		} else if addr, _ := n.raft.LeaderWithID(); addr != "" {
			leaderless = time.Time{}
			idx, resp, sent, err = n.forwardWatching(actx, string(addr), entry, commitOnly)
			n.metrics.forwarded.Inc()
		} else {
			err = errNotLeader
			if leaderless.IsZero() {
				leaderless = time.Now()
			} else if !uncertain && time.Since(leaderless) > n.cfg.LeaderWait {
				cancel()
				return 0, resp, fmt.Errorf("%w: no leader reachable from node %s for %s (it cannot reach a majority of the cluster)",
					ErrUnavailable, n.cfg.NodeID, n.cfg.LeaderWait)
			}
		}
		cancel()
		if err == nil {
			return idx, resp, nil
		}
		lastErr = err
		uncertain = uncertain || sent
		if errors.Is(err, raft.ErrRaftShutdown) {
			if uncertain {
				return 0, resp, fmt.Errorf("%w: node is shutting down", ErrUncertain)
			}
			return 0, resp, fmt.Errorf("%w: node is shutting down", ErrUnavailable)
		}
		if ctx.Err() != nil {
			if uncertain {
				return 0, resp, fmt.Errorf("%w: node %s lost the majority while the write was in flight; it may still be applied once the cluster is whole (%v)",
					ErrUncertain, n.cfg.NodeID, ctx.Err())
			}
			return 0, resp, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		}
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// forwardWatching forwards an entry to the leader, abandoning the attempt
// as soon as this node learns of another leader (a request to a leader
// that was cut off would otherwise hang until its timeouts). sent says
// whether the entry may have been appended.
//
// A write forwarded at commit is also waited for here: where the leader and
// this node are a majority, this node knows of the commit as soon as it has
// stored the entry (see provenTerm), before the leader's answer arrives.
func (n *Node) forwardWatching(ctx context.Context, leader string, entry []byte, commitOnly bool) (uint64, command.Response, bool, error) {
	var early <-chan position
	if commitOnly {
		if env, err := command.Open(entry); err == nil {
			ch, stop := n.commits.await(env.Request)
			defer stop()
			early = ch
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(n.leaders.of(leader), cancel)
	defer stop()
	return n.forward(ctx, leader, entry, commitOnly, early)
}

// applyAsLeader appends an entry and waits until it is applied here, for
// its response.
func (n *Node) applyAsLeader(ctx context.Context, entry []byte) (uint64, command.Response, error) {
	env, err := command.Open(entry)
	if err != nil {
		return 0, command.Response{}, err
	}
	idx, _, err := n.commitAsLeader(ctx, entry)
	if err != nil {
		return 0, command.Response{}, err
	}
	resp, err := n.appliedResponse(ctx, idx, env.Request)
	return idx, resp, err
}

// commitAsLeader appends an entry and waits for its commit, not its apply.
// It returns the entry's index and term.
func (n *Node) commitAsLeader(ctx context.Context, entry []byte) (uint64, uint64, error) {
	env, err := command.Open(entry)
	if err != nil {
		return 0, 0, err
	}
	committed, cancel := n.commits.await(env.Request)
	defer cancel()
	f := n.raft.Apply(entry, time.Until(deadline(ctx)))
	failed := make(chan error, 1)
	go func() {
		if err := f.Error(); err != nil {
			failed <- err
		}
	}()
	select {
	case at := <-committed:
		return at.index, at.term, nil
	case err := <-failed:
		// The entry may still commit under the next leader; the caller
		// retries it, and the state machine applies it at most once.
		return 0, 0, err
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(10 * time.Second)
}

// WaitApplied blocks until this node has applied index, so that a local
// read then sees every write up to it.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error {
	return n.fsm.wait(ctx, index, n.onlySkipped)
}

// onlySkipped reports whether every entry after applied up to index has
// been handed to the FSM and none of them is one the FSM applies. Raft's
// own applied index cannot answer this: it moves when a batch is handed
// to the FSM, before the FSM has applied it.
func (n *Node) onlySkipped(applied, index uint64) bool {
	if n.raft.AppliedIndex() < index || index-applied > 64 {
		return false
	}
	for i := applied + 1; i <= index; i++ {
		var l raft.Log
		if err := n.logs.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}

// ReadIndex makes the next local read linearizable: it learns the leader's
// commit index, confirmed by a round of heartbeats, and waits until this node
// has applied that far.
func (n *Node) ReadIndex(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.WriteTimeout)
	defer cancel()
	backoff := 5 * time.Millisecond
	var leaderless time.Time
	for {
		idx, err := n.leaderReadIndex(ctx)
		if err == nil {
			return n.WaitApplied(ctx, idx)
		}
		if n.Leader() != "" {
			leaderless = time.Time{}
		} else if leaderless.IsZero() {
			leaderless = time.Now()
		} else if time.Since(leaderless) > n.cfg.LeaderWait {
			return fmt.Errorf("%w: no leader reachable from node %s for %s (it cannot reach a majority of the cluster)",
				ErrUnavailable, n.cfg.NodeID, n.cfg.LeaderWait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

func (n *Node) leaderReadIndex(ctx context.Context) (uint64, error) {
	if n.raft.State() == raft.Leader {
		if n.readyTerm.Load() != n.raft.CurrentTerm() {
			return 0, errors.New("new leader not ready yet")
		}
		// The last index, not the commit index: a follower may have
		// acknowledged a write this leader does not yet know is committed
		// (see provenTerm), and every such entry is in this log, written
		// before it was sent. The read waits until they are applied.
		idx := n.raft.LastIndex()
		if err := n.raft.VerifyLeader().Error(); err != nil {
			return 0, err
		}
		return idx, nil
	}
	addr, _ := n.raft.LeaderWithID()
	if addr == "" {
		return 0, errNotLeader
	}
	var out readIndexAnswer
	if err := n.call(ctx, string(addr), http.MethodGet, "/internal/readindex", nil, &out); err != nil {
		return 0, err
	}
	if out.Term > 0 { // sent only for a committed Index
		n.fsm.hint(out.Index, out.Term)
	}
	if out.CommitTerm > 0 { // older leaders send none
		n.fsm.hint(out.Commit, out.CommitTerm)
	}
	return out.Index, nil
}

// Applied is the last index applied on this node.
func (n *Node) Applied() uint64 { return n.fsm.Applied() }

// Leader is the ID of the leader this node knows of, or "".
func (n *Node) Leader() string {
	_, id := n.raft.LeaderWithID()
	return string(id)
}

// IsLeader reports whether this node leads the cluster now.
func (n *Node) IsLeader() bool { return n.raft != nil && n.raft.State() == raft.Leader }

func (n *Node) raftState() raft.RaftState {
	if n.raft == nil {
		return raft.Shutdown
	}
	return n.raft.State()
}

func (n *Node) commitIndex() uint64 {
	if n.raft == nil {
		return 0
	}
	return n.raft.CommitIndex()
}

func (n *Node) bodyBytes() int64 {
	var b int64
	_ = n.store.View(func(tx *storage.Tx) error {
		_, b = tx.BlobStats()
		return nil
	})
	return b
}

func (n *Node) voterCount() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	c := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			c++
		}
	}
	return c
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// identity is what a data dir remembers of whose it is.
type identity struct {
	path          string
	NodeID        string `json:"node_id"`
	CAFingerprint string `json:"ca_fingerprint"`
	ClusterID     string `json:"cluster_id,omitempty"`
	mu            sync.Mutex
}

// loadIdentity checks that a data dir belongs to this node and cluster CA, or
// claims a fresh one. An empty node ID takes the one the data dir remembers.
func loadIdentity(dir string, nodeID *string, caFP string) (*identity, error) {
	id := &identity{path: filepath.Join(dir, "node.json")}
	b, err := os.ReadFile(id.path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if *nodeID == "" {
			h, _ := os.Hostname()
			*nodeID = h
		}
		id.NodeID, id.CAFingerprint = *nodeID, caFP
		return id, id.save()
	case err != nil:
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if err := json.Unmarshal(b, id); err != nil {
		return nil, fmt.Errorf("data dir %s: node.json is damaged: %w", dir, err)
	}
	if *nodeID == "" {
		*nodeID = id.NodeID
	}
	if id.NodeID != *nodeID {
		return nil, fmt.Errorf("data dir %s belongs to node %q, not %q: wrong --data-dir or --node-id", dir, id.NodeID, *nodeID)
	}
	if id.CAFingerprint != caFP {
		return nil, fmt.Errorf("data dir %s belongs to another cluster: it was created with cluster CA %s, "+
			"but this node's CA is %s: wrong --data-dir or wrong cluster certificates", dir, id.CAFingerprint, caFP)
	}
	return id, nil
}

func (id *identity) save() error {
	b, _ := json.MarshalIndent(id, "", "  ")
	tmp := id.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, id.path)
}

func (id *identity) clusterID() string {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.ClusterID
}

// setClusterID records the cluster this data dir belongs to, once known.
func (id *identity) setClusterID(c string) error {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.ClusterID == c {
		return nil
	}
	id.ClusterID = c
	return id.save()
}
