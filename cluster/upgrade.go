package cluster

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// UpgradeReport says whether the cluster can lose one node for an upgrade
// now, and what to do next.
type UpgradeReport struct {
	Safe     bool                `json:"safe"`
	Problems []string            `json:"problems,omitempty"`
	Next     []string            `json:"next"`
	Versions map[string][]string `json:"versions"` // build version -> nodes
	// Command versions: new command kinds are used only once every voter
	// understands them.
	MinCommandVersion int          `json:"min_command_version"`
	MaxCommandVersion int          `json:"max_command_version"`
	Nodes             []NodeStatus `json:"nodes"`
}

// UpgradeCheck inspects the cluster for a rolling upgrade: every voter
// healthy and caught up, enough voters to keep a majority while one node is
// down, nobody joining. It names the node to upgrade next (a follower still
// on an older build; the leader last).
func (n *Node) UpgradeCheck(ctx context.Context) UpgradeReport {
	st := n.Status(ctx)
	rep := UpgradeReport{Versions: map[string][]string{}, Nodes: st.Nodes, MinCommandVersion: 1 << 30}
	var leader *NodeStatus
	var commit uint64
	voters := 0
	for i := range st.Nodes {
		ns := &st.Nodes[i]
		if ns.ID == st.Leader {
			leader = ns
			commit = ns.CommitIndex
		}
	}
	for i := range st.Nodes {
		ns := &st.Nodes[i]
		if ns.Version != "" {
			rep.Versions[ns.Version] = append(rep.Versions[ns.Version], ns.ID)
		}
		if ns.CommandVersion > 0 {
			rep.MinCommandVersion = min(rep.MinCommandVersion, ns.CommandVersion)
			rep.MaxCommandVersion = max(rep.MaxCommandVersion, ns.CommandVersion)
		}
		switch {
		case ns.State == "joining" || !ns.Voter:
			rep.Problems = append(rep.Problems, fmt.Sprintf("node %s is joining: wait until it is a voter", ns.ID))
		case !ns.Healthy:
			rep.Problems = append(rep.Problems, fmt.Sprintf("node %s is not healthy (%s): start it again, or remove it with `flotilla cluster remove %s`", ns.ID, orUnknown(ns.Error), ns.ID))
		case ns.AppliedIndex+1000 < commit:
			rep.Problems = append(rep.Problems, fmt.Sprintf("node %s is catching up (applied %d of %d): wait", ns.ID, ns.AppliedIndex, commit))
		}
		if ns.Voter {
			voters++
		}
	}
	if rep.MinCommandVersion == 1<<30 {
		rep.MinCommandVersion = 0
	}
	if leader == nil {
		rep.Problems = append(rep.Problems, "the cluster has no leader")
	}
	if voters < 3 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d voters: the cluster cannot keep a majority while one of them restarts; add nodes first", voters))
	}
	rep.Safe = len(rep.Problems) == 0
	if !rep.Safe {
		rep.Next = append(rep.Next, "fix the problems above, then run `flotilla cluster upgrade-check` again")
		return rep
	}
	// Which node next: a follower on the oldest build, else any follower;
	// the leader goes last (SIGTERM hands leadership over first).
	versions := make([]string, 0, len(rep.Versions))
	for v := range rep.Versions {
		versions = append(versions, v)
	}
	sort.Strings(versions)
	next := ""
	if len(versions) > 1 {
		oldest := n.oldestBuild(st.Nodes)
		for _, ns := range st.Nodes {
			if ns.ID != st.Leader && ns.CommandVersion == oldest {
				next = ns.ID
				break
			}
		}
		if next == "" {
			next = st.Leader
		}
		rep.Next = append(rep.Next, fmt.Sprintf("rolling upgrade in progress (%s)", describeVersions(rep.Versions)))
	}
	if next == "" {
		for _, ns := range st.Nodes {
			if ns.ID != st.Leader {
				next = ns.ID
				break
			}
		}
	}
	rep.Next = append(rep.Next,
		fmt.Sprintf("upgrade %s next: stop it with SIGTERM (it drains its sessions%s), replace the binary, start it, and run upgrade-check again", next, leaderNote(next == st.Leader)),
		fmt.Sprintf("upgrade the leader (%s) last", st.Leader))
	if rep.MinCommandVersion < rep.MaxCommandVersion {
		rep.Next = append(rep.Next, fmt.Sprintf("new kinds of replicated changes (command version %d) stay off until every voter understands them (now %d)", rep.MaxCommandVersion, rep.MinCommandVersion))
	}
	return rep
}

// oldestBuild is the lowest command version among the nodes.
func (n *Node) oldestBuild(nodes []NodeStatus) int {
	v := 1 << 30
	for _, ns := range nodes {
		if ns.CommandVersion > 0 {
			v = min(v, ns.CommandVersion)
		}
	}
	return v
}

func leaderNote(isLeader bool) string {
	if isLeader {
		return " and hands leadership over"
	}
	return ""
}

func describeVersions(v map[string][]string) string {
	var parts []string
	for ver, ids := range v {
		sort.Strings(ids)
		parts = append(parts, fmt.Sprintf("%s on %s", strings.Join(ids, ","), ver))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func orUnknown(s string) string {
	if s == "" {
		return "not answering"
	}
	return s
}
