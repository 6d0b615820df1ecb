package harness

import (
	"context"
	"fmt"
	"strings"
	"sync"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Faults on the links between nodes. A cut drops packets (all of them, or a
// share at random) with iptables; a slow link runs through a fault proxy
// (toxiproxy, as a library) that delays or throttles the bytes. Both work the
// same on either tier: on loopback the rules are in the host's tables, in
// the container tier in each node's own network namespace.

// cut is one drop rule: packets from one node to another.
type cut struct {
	from, to *Node
	prob     float64 // 0: all of them
	undo     func()
}

// linkProxies holds one proxy per ordered pair of nodes, on the cluster
// port: the connections node a opens to node b's cluster port are
// redirected to proxy a->b, which forwards them to b. With no toxic the
// proxy passes bytes through as they come.
type linkProxies struct {
	server *toxiproxy.ApiServer
	mu     sync.Mutex
	byPair map[[2]string]*toxiproxy.Proxy
	toxics []toxicRef
}

type toxicRef struct {
	proxy *toxiproxy.Proxy
	name  string
}

func newLinkProxies() *linkProxies {
	metrics := toxiproxy.NewMetricsContainer(prometheus.NewRegistry())
	return &linkProxies{
		server: toxiproxy.NewServer(metrics, zerolog.Nop()),
		byPair: map[[2]string]*toxiproxy.Proxy{},
	}
}

// add starts the proxy for a->b listening on listenIP and returns its
// address.
func (l *linkProxies) add(a, b *Node, listenIP string) (string, error) {
	name := a.ID + "->" + b.ID
	p := toxiproxy.NewProxy(l.server, name, listenIP+":0", b.Addr(ClusterPort))
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("link proxy %s: %w", name, err)
	}
	l.mu.Lock()
	l.byPair[[2]string{a.ID, b.ID}] = p
	l.mu.Unlock()
	return p.Listen, nil
}

// toxic adds a toxic to both directions of the link between a and b.
func (l *linkProxies) toxic(a, b *Node, kind, attrs string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, pair := range [][2]string{{a.ID, b.ID}, {b.ID, a.ID}} {
		p := l.byPair[pair]
		if p == nil {
			return fmt.Errorf("no link proxy %s->%s: start the cluster with Options.LinkProxy", pair[0], pair[1])
		}
		for _, stream := range []string{"upstream", "downstream"} {
			name := fmt.Sprintf("%s-%s-%d", kind, stream, len(l.toxics))
			js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":%s}`, name, kind, stream, attrs)
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
				return fmt.Errorf("link proxy %s->%s: %s toxic: %w", pair[0], pair[1], kind, err)
			}
			l.toxics = append(l.toxics, toxicRef{p, name})
		}
	}
	return nil
}

// clear removes every toxic: the links pass bytes through again.
func (l *linkProxies) clear() {
	l.mu.Lock()
	refs := l.toxics
	l.toxics = nil
	l.mu.Unlock()
	for _, r := range refs {
		_ = r.proxy.Toxics.RemoveToxic(context.Background(), r.name)
	}
}

func (l *linkProxies) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.byPair {
		p.Stop()
	}
}

// PeerIP is an address of this host, free at port (any port when 0), that
// the nodes can reach: where a test runs the servers they talk to (a DNS
// server, a remote MTA). On loopback a fresh 127.x address; for containers
// the host's address on their bridge.
func (c *Cluster) PeerIP(port int) string { return c.host.peerIP(port) }

// Pairs is every pair of distinct nodes, once each.
func (c *Cluster) Pairs() [][2]*Node {
	var out [][2]*Node
	for i, a := range c.Nodes {
		for _, b := range c.Nodes[i+1:] {
			out = append(out, [2]*Node{a, b})
		}
	}
	return out
}

// Isolate cuts node n off from every other node of the cluster, both ways.
// Clients can still reach it.
func (c *Cluster) Isolate(n *Node) {
	c.t.Helper()
	for _, o := range c.Nodes {
		if o != n {
			c.drop(n, o, 0)
			c.drop(o, n, 0)
		}
	}
}

// Split cuts every link between the two groups, both ways.
func (c *Cluster) Split(a, b []*Node) {
	c.t.Helper()
	for _, x := range a {
		for _, y := range b {
			c.drop(x, y, 0)
			c.drop(y, x, 0)
		}
	}
}

// CutOneWay drops packets from a to b only.
func (c *Cluster) CutOneWay(a, b *Node) {
	c.t.Helper()
	c.drop(a, b, 0)
}

// Flaky drops a share p (0 to 1) of the packets between a and b, both
// ways, at random: a lossy link, on which TCP retransmits and stalls.
func (c *Cluster) Flaky(a, b *Node, p float64) {
	c.t.Helper()
	c.drop(a, b, p)
	c.drop(b, a, p)
}

// Slow delays every byte between a and b, both ways, by latency plus or
// minus jitter (milliseconds) in each direction: a long-distance link. The
// cluster must have been made with Options.LinkProxy.
func (c *Cluster) Slow(a, b *Node, latencyMS, jitterMS int) {
	c.t.Helper()
	if err := c.proxyToxic(a, b, "latency", fmt.Sprintf(`{"latency":%d,"jitter":%d}`, latencyMS, jitterMS)); err != nil {
		c.t.Fatal(err)
	}
}

// Throttle limits the link between a and b to rateKB kilobytes a second in
// each direction. The cluster must have been made with Options.LinkProxy.
func (c *Cluster) Throttle(a, b *Node, rateKB int) {
	c.t.Helper()
	if err := c.proxyToxic(a, b, "bandwidth", fmt.Sprintf(`{"rate":%d}`, rateKB)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) proxyToxic(a, b *Node, kind, attrs string) error {
	if c.links == nil {
		return fmt.Errorf("%s between %s and %s: the cluster has no link proxies (Options.LinkProxy)", kind, a.ID, b.ID)
	}
	return c.links.toxic(a, b, kind, attrs)
}

// drop adds a cut and applies it.
func (c *Cluster) drop(from, to *Node, prob float64) {
	c.t.Helper()
	k := &cut{from: from, to: to, prob: prob}
	c.mu.Lock()
	c.cuts = append(c.cuts, k)
	c.mu.Unlock()
	if err := c.applyCut(k); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) applyCut(k *cut) error {
	undo, err := c.host.drop(k.from, k.to, k.prob)
	if err != nil {
		return err
	}
	c.mu.Lock()
	k.undo = undo
	c.mu.Unlock()
	return nil
}

// HealAll removes every cut and every slow link.
func (c *Cluster) HealAll() {
	c.mu.Lock()
	cuts := c.cuts
	c.cuts = nil
	c.mu.Unlock()
	for _, k := range cuts {
		if k.undo != nil {
			k.undo()
		}
	}
	if c.links != nil {
		c.links.clear()
	}
}

// dropSpec is the iptables match for a cut, after the source address.
func dropSpec(prob float64) []string {
	if prob <= 0 {
		return []string{"-j", "DROP"}
	}
	return []string{"-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.3f", prob), "-j", "DROP"}
}
