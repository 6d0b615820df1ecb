package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/command"
)

// nodeMeta is what a node tells the others about itself through gossip.
type nodeMeta struct {
	ID         string `json:"id"`
	Site       string `json:"site,omitempty"`
	Cluster    string `json:"ca"`             // cluster port address
	HTTP       string `json:"http,omitempty"` // admin API address
	Version    string `json:"v"`              // build
	CmdVersion int    `json:"cv"`             // highest command version understood
	ClusterID  string `json:"cid,omitempty"`  // cluster this node's data belongs to
	Expect     int    `json:"expect,omitempty"`
	HasState   bool   `json:"state,omitempty"` // has Raft state: part of a cluster already
	// ReadsLast: as leader, this node answers a read index with its last log
	// index, so a follower may acknowledge a write it knows committed before
	// the leader does (see provenTerm). Older builds answer with the commit
	// index, and their followers' early answers would let a read miss a write.
	ReadsLast bool `json:"rl,omitempty"`
}

// member is what this node knows of another.
type member struct {
	meta      nodeMeta
	gossip    string // gossip address
	alive     bool
	downSince time.Time
}

// membership wraps memberlist: who is around, and what they run.
type membership struct {
	n   *Node
	ml  *memberlist.Memberlist
	log *slog.Logger

	mu      sync.Mutex
	self    nodeMeta
	members map[string]*member
	// the cluster's lowest command version, recomputed at most once a second
	minV   int
	minWho string
	minAt  time.Time
}

func newMembership(n *Node) (*membership, error) {
	m := &membership{n: n, log: n.log.With("component", "gossip"), members: map[string]*member{}}
	m.self = nodeMeta{
		ID: n.cfg.NodeID, Site: n.cfg.Site,
		Cluster: net.JoinHostPort(n.cfg.AdvertiseAddr, strconv.Itoa(n.cfg.ClusterPort)),
		HTTP:    n.cfg.HTTPAddr, Version: BuildVersion, CmdVersion: command.Version(),
		ClusterID: n.id.clusterID(), Expect: n.cfg.BootstrapExpect, HasState: n.hasState(),
		ReadsLast: true,
	}
	stdlog := log.New(&slogWriter{log: m.log}, "", 0)
	tr, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{n.cfg.BindAddr}, BindPort: n.cfg.GossipPort, Logger: stdlog,
	})
	if err != nil {
		return nil, fmt.Errorf("gossip port: %w", err)
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.cfg.NodeID
	mc.Transport = &boundTransport{NetTransport: tr, local: net.ParseIP(n.cfg.BindAddr)}
	mc.BindAddr, mc.BindPort = n.cfg.BindAddr, n.cfg.GossipPort
	mc.AdvertiseAddr, mc.AdvertisePort = n.cfg.AdvertiseAddr, n.cfg.GossipPort
	mc.SecretKey = n.cfg.GossipKey
	mc.Delegate = m
	mc.Events = m
	mc.Alive = m
	mc.Merge = m
	mc.Logger = stdlog
	if m.ml, err = memberlist.Create(mc); err != nil {
		tr.Shutdown()
		return nil, fmt.Errorf("gossip: %w", err)
	}
	return m, nil
}

// boundTransport makes memberlist's outgoing TCP connections leave from the
// node's own address, as its UDP packets do, so that a firewall rule on that
// address cuts the node off completely (the fault tests rely on it).
type boundTransport struct {
	*memberlist.NetTransport
	local net.IP
}

func (t *boundTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if t.local != nil && !t.local.IsUnspecified() {
		d.LocalAddr = &net.TCPAddr{IP: t.local}
	}
	return d.Dial("tcp", addr)
}

func (t *boundTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	return t.DialTimeout(a.Addr, timeout)
}

// joinLoop joins the peers given, retrying until one answers, then keeps
// trying to reach Raft servers gossip has lost (a healed partition).
func (m *membership) joinLoop(ctx context.Context) {
	joined := len(m.n.cfg.Join) == 0
	delay := 200 * time.Millisecond
	for {
		if !joined {
			if _, err := m.ml.Join(m.n.cfg.Join); err != nil {
				m.log.Warn("cannot join the cluster yet", "peers", strings.Join(m.n.cfg.Join, ","), "err", explainJoin(err))
			} else {
				joined = true
				delay = 5 * time.Second
			}
		} else {
			m.rejoinLost()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		if !joined {
			delay = min(delay*2, 5*time.Second)
		}
	}
}

func explainJoin(err error) string {
	s := err.Error()
	if strings.Contains(s, "decrypt") || strings.Contains(s, "encryption") || strings.Contains(s, "No installed keys") {
		return s + " (the gossip key differs from the cluster's: check --gossip-key)"
	}
	return s
}

// rejoinLost contacts every Raft server that gossip has lost, and the join
// list when some server was never seen: after a partition longer than
// memberlist's memory of dead nodes, nobody else would.
func (m *membership) rejoinLost() {
	servers := m.n.servers()
	var addrs []string
	alive := 0
	m.mu.Lock()
	for id := range servers {
		mem, ok := m.members[id]
		switch {
		case id == m.self.ID || ok && mem.alive:
			alive++
		case ok && mem.gossip != "":
			addrs = append(addrs, mem.gossip)
		}
	}
	m.mu.Unlock()
	if alive < len(servers) {
		addrs = append(addrs, m.n.cfg.Join...)
	}
	if len(addrs) > 0 {
		_, _ = m.ml.Join(addrs)
	}
}

// refresh re-advertises this node's metadata when it changed.
func (m *membership) refresh() {
	m.mu.Lock()
	cid, st := m.n.id.clusterID(), m.n.hasState()
	changed := m.self.ClusterID != cid || m.self.HasState != st
	m.self.ClusterID, m.self.HasState = cid, st
	m.mu.Unlock()
	if changed {
		_ = m.ml.UpdateNode(time.Second)
	}
}

func (m *membership) leave(timeout time.Duration) {
	_ = m.ml.Leave(timeout)
	_ = m.ml.Shutdown()
}

// snapshot returns what is known of every member, this node included.
func (m *membership) snapshot() map[string]member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]member, len(m.members)+1)
	for id, mem := range m.members {
		out[id] = *mem
	}
	out[m.self.ID] = member{meta: m.self, alive: true}
	return out
}

// minCommandVersion is the lowest command version among the voters, and who
// has it. A voter never heard of counts as version 1.
func (m *membership) minCommandVersion() (int, string) {
	m.mu.Lock()
	if time.Since(m.minAt) < time.Second {
		defer m.mu.Unlock()
		return m.minV, m.minWho
	}
	m.mu.Unlock()
	v, who := m.computeMinVersion()
	m.mu.Lock()
	m.minV, m.minWho, m.minAt = v, who, time.Now()
	m.mu.Unlock()
	return v, who
}

func (m *membership) computeMinVersion() (int, string) {
	v, who := command.Version(), m.n.cfg.NodeID
	members := m.snapshot()
	for id, s := range m.n.servers() {
		if s.Suffrage != raft.Voter {
			continue
		}
		cv := 1
		if mem, ok := members[id]; ok && mem.meta.CmdVersion > 0 {
			cv = mem.meta.CmdVersion
		}
		if cv < v {
			v, who = cv, id
		}
	}
	return v, who
}

// sameCluster checks a peer's cluster identity against ours.
func (m *membership) sameCluster(peer nodeMeta) error {
	ours := m.n.id.clusterID()
	if ours != "" && peer.ClusterID != "" && peer.ClusterID != ours {
		return fmt.Errorf("node %s belongs to cluster %s, this node's data to cluster %s: refusing to mix them (wrong --join or wrong --data-dir)",
			peer.ID, peer.ClusterID, ours)
	}
	return nil
}

// memberlist.Delegate

func (m *membership) NodeMeta(limit int) []byte {
	m.mu.Lock()
	b, _ := json.Marshal(m.self)
	m.mu.Unlock()
	if len(b) > limit {
		return nil
	}
	return b
}
func (m *membership) NotifyMsg([]byte)                           {}
func (m *membership) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (m *membership) LocalState(join bool) []byte                { return nil }
func (m *membership) MergeRemoteState(buf []byte, join bool)     {}

// memberlist.EventDelegate

func (m *membership) NotifyJoin(n *memberlist.Node)   { m.update(n, true) }
func (m *membership) NotifyUpdate(n *memberlist.Node) { m.update(n, true) }
func (m *membership) NotifyLeave(n *memberlist.Node)  { m.update(n, false) }

func (m *membership) update(n *memberlist.Node, alive bool) {
	var meta nodeMeta
	if err := json.Unmarshal(n.Meta, &meta); err != nil || meta.ID == "" || meta.ID == m.n.cfg.NodeID {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[meta.ID]
	if !ok {
		mem = &member{}
		m.members[meta.ID] = mem
	}
	mem.meta, mem.gossip = meta, n.Address()
	if mem.alive && !alive {
		mem.downSince = time.Now()
		m.log.Info("node is gone", "peer", meta.ID)
	}
	if !mem.alive && alive {
		m.log.Info("node is up", "peer", meta.ID, "version", meta.Version)
	}
	mem.alive = alive
	readsLast := map[raft.ServerID]bool{raft.ServerID(m.self.ID): true}
	for id, mem := range m.members {
		if mem.meta.ReadsLast {
			readsLast[raft.ServerID(id)] = true
		}
	}
	m.n.readsLast.Store(&readsLast)
}

// memberlist.AliveDelegate and MergeDelegate: keep other clusters out.

func (m *membership) NotifyAlive(n *memberlist.Node) error { return m.check(n) }

func (m *membership) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if err := m.check(p); err != nil {
			return err
		}
	}
	return nil
}

func (m *membership) check(n *memberlist.Node) error {
	var meta nodeMeta
	if err := json.Unmarshal(n.Meta, &meta); err != nil {
		return fmt.Errorf("node %s: unreadable metadata", n.Name)
	}
	if err := m.sameCluster(meta); err != nil {
		m.log.Error("refusing a node of another cluster", "err", err)
		return err
	}
	return nil
}

// hasState reports whether this node is part of a Raft cluster already.
func (n *Node) hasState() bool {
	if n.raft == nil {
		ok, _ := raft.HasExistingState(n.logStore, n.logStore, n.snaps)
		return ok
	}
	return len(n.servers()) > 0
}

// servers returns the Raft configuration by server ID.
func (n *Node) servers() map[string]raft.Server {
	out := map[string]raft.Server{}
	if n.raft == nil {
		return out
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return out
	}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = s
	}
	return out
}

// bootstrapLoop forms a new cluster once BootstrapExpect fresh nodes see
// each other. Each of them bootstraps with the same configuration, which Raft
// accepts; a node that finds an existing cluster waits to be added instead.
func (n *Node) bootstrapLoop(ctx context.Context) {
	if n.hasState() || n.cfg.BootstrapExpect == 0 {
		return
	}
	for {
		if n.hasState() {
			return
		}
		members := n.members.snapshot()
		var fresh []nodeMeta
		existing := ""
		for _, mem := range members {
			if !mem.alive {
				continue
			}
			if mem.meta.HasState || mem.meta.ClusterID != "" {
				existing = mem.meta.ID
			}
			if mem.meta.Expect == n.cfg.BootstrapExpect {
				fresh = append(fresh, mem.meta)
			}
		}
		switch {
		case existing != "":
			n.log.Info("found an existing cluster; waiting to be added by its leader", "peer", existing)
			return
		case len(fresh) == n.cfg.BootstrapExpect:
			sort.Slice(fresh, func(i, j int) bool { return fresh[i].ID < fresh[j].ID })
			var conf raft.Configuration
			for _, f := range fresh {
				conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(f.ID), Address: raft.ServerAddress(f.Cluster)})
			}
			if err := n.raft.BootstrapCluster(conf).Error(); err != nil && err != raft.ErrCantBootstrap {
				n.log.Error("bootstrap failed", "err", err)
			} else {
				n.log.Info("bootstrapped a new cluster", "servers", len(conf.Servers))
			}
			n.members.refresh()
			return
		case len(fresh) > n.cfg.BootstrapExpect:
			n.log.Error("more fresh nodes than --bootstrap-expect; not bootstrapping (start them with the same --bootstrap-expect equal to their number)",
				"seen", len(fresh), "expect", n.cfg.BootstrapExpect)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
