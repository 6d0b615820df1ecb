package cluster

import (
	"net"
	"sort"
)

// LiveNodes returns the IDs of the members gossip sees alive, this node
// included, sorted. Work shared among nodes (queue ownership by rendezvous
// hashing, collection accounts) is divided over this list.
func (n *Node) LiveNodes() []string {
	if n.members == nil {
		return []string{n.cfg.NodeID}
	}
	var out []string
	for id, m := range n.members.snapshot() {
		if m.alive {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

// MemberIPs returns the advertised IP of every member gossip knows, alive or
// not, this node included: the addresses at which mail would come back to
// this cluster (loop detection).
func (n *Node) MemberIPs() []net.IP {
	seen := map[string]bool{}
	var out []net.IP
	add := func(hostport string) {
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			host = hostport
		}
		if ip := net.ParseIP(host); ip != nil && !seen[ip.String()] {
			seen[ip.String()] = true
			out = append(out, ip)
		}
	}
	add(n.cfg.AdvertiseAddr)
	add(n.cfg.BindAddr)
	if n.members != nil {
		for _, m := range n.members.snapshot() {
			add(m.meta.Cluster)
		}
	}
	return out
}
