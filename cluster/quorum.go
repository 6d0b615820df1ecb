package cluster

import (
	"github.com/hashicorp/raft"
)

// provenTerm is asked by the log store just before a follower stores
// entries from the leader. It returns the term whose entries in logs are,
// once stored here, committed; 0 if none are.
//
// That holds where the leader and this node together are a majority of
// the voters (a voter of a two- or three-voter cluster, the common case):
// hashicorp/raft's leader writes and fsyncs its own log before it
// replicates an entry, and an entry of the current term stored on a
// majority is committed (Raft, section 5.4.2). A write forwarded through
// this node is then answered from here, without the round trip back
// through the leader, whose main loop notices the commit only after its
// next log write.
//
// It runs in Raft's main goroutine, as the follower handles the leader's
// append: the term, the leader and the latest configuration cannot move
// meanwhile, and the configuration already reflects any entries the append
// truncated. A batch that itself carries a configuration change proves
// nothing. A configuration the leader has appended but not yet sent differs
// from this one by at most one server (hashicorp/raft changes one at a
// time, each committed before the next), so their majorities overlap.
//
// A write acknowledged so is committed, but the leader may not know it yet;
// linearizable reads therefore wait for the leader's last index (see
// leaderReadIndex). A leader of an older build reads at its commit index, so
// under one (readsLast false: a rolling upgrade) nothing is proven here.
func provenTerm(r *raft.Raft, self raft.ServerID, readsLast func(raft.ServerID) bool, logs []*raft.Log) uint64 {
	if r == nil || r.State() != raft.Follower {
		return 0
	}
	for _, l := range logs {
		switch l.Type {
		case raft.LogConfiguration, raft.LogAddPeerDeprecated, raft.LogRemovePeerDeprecated:
			return 0
		}
	}
	_, leader := r.LeaderWithID()
	if leader == "" || leader == self || readsLast == nil || !readsLast(leader) {
		return 0
	}
	f := r.GetConfiguration()
	if f.Error() != nil || !pairMajority(f.Configuration(), self, leader) {
		return 0
	}
	return r.CurrentTerm()
}

// pairMajority reports whether self and leader are both voters of c and
// together a majority of them.
func pairMajority(c raft.Configuration, self, leader raft.ServerID) bool {
	voters, found := 0, 0
	for _, s := range c.Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		voters++
		if s.ID == self || s.ID == leader {
			found++
		}
	}
	return found == 2 && voters <= 3 // two of at most three
}
