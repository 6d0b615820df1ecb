package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// leaderLoop runs leader-only work while this node leads: stamping a new
// cluster's identity and reconciling Raft voters with gossip membership.
func (n *Node) leaderLoop(ctx context.Context) {
	var wg sync.WaitGroup
	stop := func() {}
	defer func() {
		stop()
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case leader := <-n.raft.LeaderCh():
			stop()
			wg.Wait()
			stop = func() {}
			if !leader {
				continue
			}
			lctx, cancel := context.WithCancel(ctx)
			stop = cancel
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.lead(lctx)
			}()
		}
	}
}

func (n *Node) lead(ctx context.Context) {
	// A barrier first: the state machine is then up to date with every
	// entry of earlier terms before decisions are made from it.
	term := n.raft.CurrentTerm()
	if err := n.raft.Barrier(10 * time.Second).Error(); err != nil {
		n.log.Warn("barrier after election failed", "err", err)
		return
	}
	// Raft's barrier covers what it handed the state machine; the applier
	// may still be working through it.
	if err := n.WaitApplied(ctx, n.raft.AppliedIndex()); err != nil {
		n.log.Warn("waiting for the state machine after election failed", "err", err)
		return
	}
	n.readyTerm.Store(term)
	n.log.Info("leading the cluster")
	if n.appliedClusterID() == "" {
		var b [12]byte
		_, _ = rand.Read(b[:])
		decoy := make([]byte, 32)
		_, _ = rand.Read(decoy)
		if _, _, err := n.Propose(ctx, &command.Init{ClusterID: hex.EncodeToString(b[:]), DecoyKey: decoy}); err != nil {
			n.log.Warn("stamping cluster identity failed", "err", err)
		}
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		n.reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// reconcile brings Raft's configuration in line with gossip, in the manner
// of Consul's autopilot: a new node is added as a non-voter and promoted
// once caught up (so an empty node never weakens the quorum while it loads);
// a voter gone longer than the grace period is removed.
func (n *Node) reconcile(ctx context.Context) {
	servers := n.servers()
	members := n.members.snapshot()
	commit := n.raft.CommitIndex()
	for id, mem := range members {
		if id == n.cfg.NodeID || !mem.alive {
			continue
		}
		if err := n.members.sameCluster(mem.meta); err != nil {
			continue
		}
		s, known := servers[id]
		switch {
		case !known:
			// Only a node that answers over the cluster's TLS is added.
			info, err := n.peerInfo(ctx, mem.meta.Cluster)
			if err != nil {
				n.log.Warn("not adding node: it does not answer on its cluster port", "peer", id, "err", err)
				continue
			}
			if info.ID != id {
				n.log.Warn("not adding node: its cluster port answers with another ID", "peer", id, "answered", info.ID)
				continue
			}
			n.log.Info("adding node as non-voter", "peer", id, "address", mem.meta.Cluster)
			if err := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(mem.meta.Cluster), 0, 5*time.Second).Error(); err != nil {
				n.log.Warn("adding node failed", "peer", id, "err", err)
			}
		case string(s.Address) != mem.meta.Cluster:
			n.log.Info("node moved; updating its address", "peer", id, "address", mem.meta.Cluster)
			add := n.raft.AddVoter
			if s.Suffrage != raft.Voter {
				add = n.raft.AddNonvoter
			}
			_ = add(raft.ServerID(id), raft.ServerAddress(mem.meta.Cluster), 0, 5*time.Second).Error()
		case s.Suffrage == raft.Nonvoter:
			info, err := n.peerInfo(ctx, mem.meta.Cluster)
			if err != nil || info.AppliedIndex+1000 < commit {
				continue
			}
			n.log.Info("promoting caught-up node to voter", "peer", id, "applied", info.AppliedIndex, "commit", commit)
			if err := n.raft.AddVoter(raft.ServerID(id), s.Address, 0, 5*time.Second).Error(); err != nil {
				n.log.Warn("promotion failed", "peer", id, "err", err)
			}
		}
	}
	for id, s := range servers {
		if id == n.cfg.NodeID {
			continue
		}
		mem, seen := members[id]
		if seen && mem.alive {
			continue
		}
		if seen && time.Since(mem.downSince) < n.cfg.DeadServerGrace {
			continue
		}
		if !seen && s.Suffrage == raft.Voter {
			// Never seen since this node started: give it the grace too.
			if time.Since(n.startedAt()) < n.cfg.DeadServerGrace {
				continue
			}
		}
		n.log.Warn("removing node gone longer than the grace period", "peer", id, "grace", n.cfg.DeadServerGrace)
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, 5*time.Second).Error(); err != nil {
			n.log.Warn("removal failed", "peer", id, "err", err)
		}
		return // one at a time
	}
}

func (n *Node) peerInfo(ctx context.Context, addr string) (NodeStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var st NodeStatus
	err := n.call(ctx, addr, "GET", "/internal/info", nil, &st)
	return st, err
}

// maintenanceLoop does each node's local housekeeping: advertising its
// metadata, collecting bodies no snapshot can refer to, and fetching bodies
// it lacks.
func (n *Node) maintenanceLoop(ctx context.Context) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	last := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if cid := n.appliedClusterID(); cid != "" {
			if err := n.id.setClusterID(cid); err != nil {
				n.log.Warn("recording cluster identity", "err", err)
			}
		}
		n.members.refresh()
		if n.snapshotBad.Load() {
			if err := n.raft.Snapshot().Error(); err == nil {
				n.snapshotBad.Store(false)
				n.log.Info("replaced the corrupt snapshot with a fresh one")
			}
		}
		if time.Since(last) < 30*time.Second {
			continue
		}
		last = time.Now()
		n.collectGarbage()
		n.repairBodies(ctx)
	}
}

// collectGarbage removes bodies unreferenced since before the oldest
// retained snapshot: no snapshot this node could send still names them.
func (n *Node) collectGarbage() {
	list, err := n.snaps.List()
	if err != nil || len(list) == 0 {
		return
	}
	oldest := list[len(list)-1].Index
	var removed int
	err = n.store.Update(func(tx *storage.Tx) error {
		removed, err = tx.CollectGarbage(oldest)
		return err
	})
	if err != nil {
		n.log.Warn("body garbage collection failed", "err", err)
	} else if removed > 0 {
		n.log.Info("removed unreferenced message bodies", "count", removed, "upto", oldest)
	}
}

// repairBodies fetches referenced bodies this node lacks (an install whose
// fetch was cut short, a damaged file).
func (n *Node) repairBodies(ctx context.Context) {
	var missing []storage.Hash
	_ = n.store.View(func(tx *storage.Tx) error {
		missing = tx.MissingBlobs(1000)
		return nil
	})
	if len(missing) == 0 {
		return
	}
	n.log.Warn("message bodies missing on this node; fetching from peers", "count", len(missing))
	bw := n.store.NewBlobWriter()
	err := n.fetchBlobs(ctx, missing, bw.Put)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		n.log.Warn("body repair failed", "err", err)
	}
}

// NodeStatus is one node as `cluster status` shows it.
type NodeStatus struct {
	ID             string `json:"id"`
	Address        string `json:"address"`
	State          string `json:"state"`
	Voter          bool   `json:"voter"`
	Healthy        bool   `json:"healthy"`
	AppliedIndex   uint64 `json:"applied_index"`
	CommitIndex    uint64 `json:"commit_index"`
	Version        string `json:"version"`
	CommandVersion int    `json:"command_version"`
	Site           string `json:"site,omitempty"`
	HTTPAddress    string `json:"http_address,omitempty"`
	ClusterID      string `json:"cluster_id,omitempty"`
	Leader         string `json:"leader,omitempty"`
	Error          string `json:"error,omitempty"`
}

// Status is the cluster as one node sees it.
type Status struct {
	Leader    string       `json:"leader"`
	ClusterID string       `json:"cluster_id"`
	Self      string       `json:"self"`
	Nodes     []NodeStatus `json:"nodes"`
}

func (n *Node) selfStatus() NodeStatus {
	_, leader := n.raft.LeaderWithID()
	return NodeStatus{
		ID: n.cfg.NodeID, Address: n.members.self.Cluster, State: stateName(n.raft.State()),
		Healthy: true, AppliedIndex: n.fsm.Applied(), CommitIndex: n.raft.CommitIndex(),
		Version: BuildVersion, CommandVersion: command.Version(), Site: n.cfg.Site,
		HTTPAddress: n.cfg.HTTPAddr, ClusterID: n.clusterID(), Leader: string(leader),
		Voter: n.servers()[n.cfg.NodeID].Suffrage == raft.Voter,
	}
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	default:
		return "shutdown"
	}
}

// clusterID is the cluster this node belongs to: as its data dir records
// it, or, in the seconds before the maintenance loop records it there, as
// its state machine has applied it.
func (n *Node) clusterID() string {
	if cid := n.id.clusterID(); cid != "" {
		return cid
	}
	return n.appliedClusterID()
}

// appliedClusterID is the cluster ID in the state machine ("" before the
// first entry is applied).
func (n *Node) appliedClusterID() string {
	var cid string
	_ = n.store.View(func(tx *storage.Tx) error { cid = tx.ClusterID(); return nil })
	return cid
}

// Status asks every server of the configuration, and every member gossip
// knows, how it is. A node that does not answer is reported unhealthy.
func (n *Node) Status(ctx context.Context) Status {
	_, leader := n.raft.LeaderWithID()
	st := Status{Leader: string(leader), ClusterID: n.clusterID(), Self: n.cfg.NodeID}
	servers := n.servers()
	members := n.members.snapshot()
	ids := map[string]bool{}
	for id := range servers {
		ids[id] = true
	}
	for id, m := range members {
		if m.alive {
			ids[id] = true
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := NodeStatus{ID: id, State: "unknown"}
			if s, ok := servers[id]; ok {
				ns.Address, ns.Voter = string(s.Address), s.Suffrage == raft.Voter
			} else {
				ns.State = "joining"
			}
			if m, ok := members[id]; ok {
				ns.Version, ns.CommandVersion, ns.Site, ns.HTTPAddress = m.meta.Version, m.meta.CmdVersion, m.meta.Site, m.meta.HTTP
				if ns.Address == "" {
					ns.Address = m.meta.Cluster
				}
			}
			if id == n.cfg.NodeID {
				self := n.selfStatus()
				self.Voter = ns.Voter
				ns = self
			} else if ns.Address != "" {
				info, err := n.peerInfo(ctx, ns.Address)
				if err != nil {
					ns.Healthy, ns.Error = false, err.Error()
					if ns.State != "joining" {
						ns.State = "unreachable"
					}
				} else {
					voter := ns.Voter
					ns = info
					ns.Voter = voter
					ns.Healthy = members[id].alive
				}
			}
			if _, ok := servers[id]; !ok {
				ns.State = "joining"
			}
			mu.Lock()
			st.Nodes = append(st.Nodes, ns)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].ID < st.Nodes[j].ID })
	return st
}

// VerifyReport compares every node's state digest at one index.
type VerifyReport struct {
	Index      uint64       `json:"index"`
	Consistent bool         `json:"consistent"`
	Digest     string       `json:"digest"`
	Nodes      []NodeDigest `json:"nodes"`
	Diverging  []string     `json:"diverging,omitempty"`
}

// NodeDigest is one node's digest, or why it has none.
type NodeDigest struct {
	ID     string `json:"id"`
	Digest string `json:"digest,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Verify writes a Digest entry and collects the digest every server recorded
// when applying it: all nodes are compared at the same point of the log.
func (n *Node) Verify(ctx context.Context) (VerifyReport, error) {
	resp, idx, err := n.Propose(ctx, &command.Digest{Nonce: uint64(time.Now().UnixNano())})
	if err != nil {
		return VerifyReport{}, err
	}
	rep := VerifyReport{Index: idx, Digest: hex.EncodeToString(resp.Digest), Consistent: true}
	servers := n.servers()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nd := NodeDigest{ID: id}
			var out struct{ Digest []byte }
			var err error
			if id == n.cfg.NodeID {
				d, ok := n.fsm.digest(idx)
				if !ok {
					err = fmt.Errorf("no digest recorded at index %d", idx)
				}
				out.Digest = d
			} else {
				err = n.call(ctx, string(s.Address), "GET", fmt.Sprintf("/internal/digest?index=%d", idx), nil, &out)
			}
			if err != nil {
				nd.Error = err.Error()
			} else {
				nd.Digest = hex.EncodeToString(out.Digest)
			}
			mu.Lock()
			rep.Nodes = append(rep.Nodes, nd)
			mu.Unlock()
		}()
	}
	wg.Wait()
	sort.Slice(rep.Nodes, func(i, j int) bool { return rep.Nodes[i].ID < rep.Nodes[j].ID })
	// The reference is the digest a majority of servers share: a leader
	// whose own state diverged must not make the healthy nodes look wrong.
	// Without a majority the leader's digest stays the reference.
	count := map[string]int{}
	for _, nd := range rep.Nodes {
		if nd.Digest != "" {
			count[nd.Digest]++
		}
	}
	for d, c := range count {
		if 2*c > len(servers) {
			rep.Digest = d
		}
	}
	for _, nd := range rep.Nodes {
		if nd.Digest != rep.Digest {
			rep.Consistent = false
			rep.Diverging = append(rep.Diverging, nd.ID)
		}
	}
	return rep, nil
}

// TransferLeadership hands leadership to another voter (to "" lets Raft
// choose the most up-to-date one).
func (n *Node) TransferLeadership(ctx context.Context, to string) error {
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		if addr == "" {
			return fmt.Errorf("%w: no leader", ErrUnavailable)
		}
		return n.call(ctx, string(addr), "POST", "/internal/leadership?to="+to, nil, nil)
	}
	var err error
	if to == "" {
		err = n.raft.LeadershipTransfer().Error()
	} else {
		s, ok := n.servers()[to]
		if !ok {
			return fmt.Errorf("%w: node %s is not a server of this cluster", storage.ErrNotFound, to)
		}
		err = n.raft.LeadershipTransferToServer(s.ID, s.Address).Error()
	}
	if err != nil {
		return err
	}
	// Answer once the new leader is known here, so that the caller's next
	// request finds it.
	for ctx.Err() == nil {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ctx.Err()
}

// RemoveServer removes a node from the Raft configuration.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	if n.raft.State() != raft.Leader {
		addr, _ := n.raft.LeaderWithID()
		if addr == "" {
			return fmt.Errorf("%w: no leader", ErrUnavailable)
		}
		return n.call(ctx, string(addr), "POST", "/internal/remove?id="+id, nil, nil)
	}
	if _, ok := n.servers()[id]; !ok {
		return fmt.Errorf("%w: node %s is not a server of this cluster", storage.ErrNotFound, id)
	}
	return n.raft.RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error()
}

// SnapshotReport describes a snapshot taken on request.
type SnapshotReport struct {
	Index    uint64        `json:"index"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration_ns"`
}

// Snapshot takes a snapshot of this node's state now (and truncates its log
// as configured), and reports its size and how long it took.
func (n *Node) Snapshot() (SnapshotReport, error) {
	start := time.Now()
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil {
		return SnapshotReport{}, fmt.Errorf("snapshot: %w", err)
	}
	took := time.Since(start)
	meta, rc, err := f.Open()
	if err != nil {
		return SnapshotReport{}, fmt.Errorf("snapshot: %w", err)
	}
	rc.Close()
	return SnapshotReport{Index: meta.Index, Bytes: meta.Size, Duration: took}, nil
}
