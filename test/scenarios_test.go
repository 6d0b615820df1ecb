package test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
	"github.com/flotilla-mail/flotilla/test/workload"
)

// The fault scenarios of the CI tier. Each runs SMTP senders, IMAP readers
// and flag writers, POP3 retrievers and submissions of outbound mail
// against every node while a fault happens, heals, and checks that every
// message answered 250 is on every node exactly once, every acknowledged
// flag is on every node, each session read its own writes and never went
// back, and every acknowledged outbound message reached the remote peer
// (once, where no node failed); it prints one line with what it saw.

var chaosUsers = []string{"u1@example.org", "u2@example.org", "u3@example.org"}

type scenarioResult struct {
	acked, lost, duplicated int
	flags                   int // acknowledged IMAP flag writes
	outbound                workload.OutboundResult
	window, election        time.Duration
}

// Whether a scenario's nodes all stay up and reachable: only then must no
// outbound message reach the peer twice (a node that dies or is cut off
// mid-transfer has it sent again by another, at least once).
const (
	nodesFail    = false
	nodesHealthy = true
)

// scenarioCluster makes and starts a cluster for a scenario, with a remote
// peer for its outbound mail: a DNS server naming the sink as far.test's
// MX, both where the nodes reach them.
func scenarioCluster(t *testing.T, opt harness.Options) (*harness.Cluster, *workload.Sink) {
	t.Helper()
	opt.NoStart = true
	c := harness.New(t, opt)
	dns := startDNSAt(t, c.PeerIP(0))
	ip := c.PeerIP(25)
	sink, err := workload.StartSink(net.JoinHostPort(ip, "25"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	dns.setMX("far.test", "mx.far.test")
	dns.setA("mx.far.test", ip)
	for _, n := range c.Nodes {
		n.Args = append(n.Args, "--dns-resolver", dns.Addr)
		n.Start()
	}
	return c, sink
}

// scenario runs fault against a loaded cluster of the given size.
func scenario(t *testing.T, c *harness.Cluster, sink *workload.Sink, healthy bool, fault func() time.Duration) scenarioResult {
	t.Helper()
	ids := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		ids[i] = n.ID
	}
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, ids...)
	for _, u := range chaosUsers {
		seedUser(t, leader, u)
	}
	setDelivery(t, leader, "settings", fastDelivery)
	w := workload.StartMail(c, chaosUsers, 2*len(c.Nodes))
	// Readers and flag writers on every node, and POP3 retrievers that
	// delete nothing, on the same users (passwords as seedUser sets them).
	passwords := map[string]string{}
	for _, u := range chaosUsers {
		passwords[u] = "pw-" + u
	}
	im := workload.StartIMAP(c, passwords, len(c.Nodes))
	pop := workload.StartPOP3(c, passwords, 2)
	out := workload.StartOutbound(c, passwords, "far.test", len(c.Nodes))
	t.Cleanup(func() { im.Stop(); pop.Stop(); out.Stop() }) // if the test ends early
	harness.Eventually(t, 60*time.Second, "mail flowing", func() error {
		if n := len(w.Snapshot()); n < 20 {
			return fmt.Errorf("%d acknowledged", n)
		}
		// The IMAP and POP3 workloads are under way too.
		if n := im.Acked(); n < 2 {
			return fmt.Errorf("%d flag writes acknowledged", n)
		}
		if n := pop.Retrieved(); n < 1 {
			return fmt.Errorf("%d messages retrieved over POP3", n)
		}
		if n := out.Acked(); n < 1 {
			return fmt.Errorf("%d outbound messages acknowledged", n)
		}
		return nil
	})
	from := time.Now()
	election := fault()
	// Mail must flow again after the fault: wait for fresh acknowledgements.
	healedAt := time.Now()
	harness.Eventually(t, 60*time.Second, "mail flowing after the fault", func() error {
		if n := w.AckedSince(healedAt); n < 10 {
			return fmt.Errorf("%d acknowledged since", n)
		}
		if n := im.AckedSince(healedAt); n < 1 {
			return fmt.Errorf("%d flag writes acknowledged since", n)
		}
		return nil
	})
	to := time.Now()
	acks := w.Stop()
	flagWrites, imapProblems := im.Stop()
	popRes := pop.Stop()
	outAcks := out.Stop()

	c.HealAll()
	for _, n := range c.Nodes {
		if !n.Running() {
			n.Start()
		}
	}
	leader = c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 90*time.Second, ids...)
	verifyClean(t, leader, len(c.Nodes))
	res := workload.Check(c, chaosUsers, acks, w.Unknown)
	flagProblems := workload.CheckFlags(c, chaosUsers, flagWrites)
	r := scenarioResult{acked: res.Acked, lost: res.Lost, duplicated: res.Duplicated, flags: len(flagWrites),
		outbound: workload.CheckOutbound(outAcks, sink, 90*time.Second),
		window:   workload.MaxGap(acks, from, to), election: election}
	line := fmt.Sprintf("scenario %-44s acked %5d  lost %d  duplicated %d  flags %4d  outbound %3d (lost %d, twice %d)  longest no-accept window %7s  election %7s",
		t.Name(), r.acked, r.lost, r.duplicated, r.flags, r.outbound.Acked, r.outbound.Lost, r.outbound.Duplicated,
		r.window.Round(time.Millisecond), r.election.Round(time.Millisecond))
	t.Log(line)
	recordScenario(line)
	t.Logf("IMAP: %d connections; POP3: %d sessions, %d messages retrieved, %d logins refused [IN-USE] (expected), %d other refusals %v",
		im.Connections(), popRes.Sessions, popRes.Retrieved, popRes.InUse, popRes.Refused, popRes.Reasons)
	for _, p := range res.Problems {
		t.Error(p)
	}
	for _, p := range imapProblems {
		t.Error(p)
	}
	for _, p := range popRes.Problems {
		t.Error(p)
	}
	for _, p := range flagProblems {
		t.Error(p)
	}
	if r.flags == 0 {
		t.Error("no IMAP flag write was acknowledged: the IMAP workload did not run")
	}
	if popRes.Retrieved == 0 {
		t.Error("no message was retrieved over POP3: the POP3 workload did not run")
	}
	if r.outbound.Acked == 0 {
		t.Error("no outbound message was acknowledged: the outbound workload did not run")
	}
	if r.outbound.Lost != 0 {
		t.Errorf("%d acknowledged outbound messages never reached the peer", r.outbound.Lost)
	}
	if healthy && r.outbound.Duplicated != 0 {
		t.Errorf("%d outbound messages reached the peer twice, though every node stayed healthy", r.outbound.Duplicated)
	}
	if r.lost != 0 || r.duplicated != 0 {
		t.Fatalf("lost %d, duplicated %d", r.lost, r.duplicated)
	}
	return r
}

// recordScenario appends the line to $FLOTILLA_SCENARIOS, if set, so that
// `make test` can print the table at the end.
func recordScenario(line string) {
	path := os.Getenv("FLOTILLA_SCENARIOS")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// electionAfter measures how long until one of nodes knows a leader other
// than old (from the nodes' own views, which cost nothing to ask).
func electionAfter(t *testing.T, nodes []*harness.Node, old string, since time.Time) time.Duration {
	t.Helper()
	var d time.Duration
	harness.Eventually(t, 60*time.Second, "a new leader", func() error {
		for _, n := range nodes {
			if l, err := n.Leader(); err == nil && l != "" && l != old {
				d = time.Since(since)
				return nil
			}
		}
		return fmt.Errorf("no new leader")
	})
	return d
}

// fault is what a scenario does to a loaded cluster; it returns the time
// the cluster took to elect a new leader (0 when no election is expected).
type fault func(t *testing.T, c *harness.Cluster) time.Duration

// onTiers runs a scenario on processes, then on a cluster of Docker
// containers (FLOTILLA_SKIP_DOCKER=1 leaves those out). Every scenario runs
// on both but the rolling upgrade, whose second build is a binary on the
// host.
func onTiers(t *testing.T, opt harness.Options, healthy bool, f fault) {
	for _, tier := range []harness.Tier{harness.Processes, harness.Docker} {
		t.Run(tier.String(), func(t *testing.T) {
			if tier == harness.Docker && os.Getenv("FLOTILLA_SKIP_DOCKER") == "1" {
				t.Skip("FLOTILLA_SKIP_DOCKER=1")
			}
			o := opt
			o.Tier = tier
			c, sink := scenarioCluster(t, o)
			scenario(t, c, sink, healthy, func() time.Duration { return f(t, c) })
		})
	}
}

func TestScenarioLeaderKilled(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		l := c.WaitLeader(30 * time.Second)
		start := time.Now()
		l.Kill()
		d := electionAfter(t, c.Followers(l), l.ID, start)
		l.Start()
		return d
	})
}

func TestScenarioFollowerKilled(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		f := c.Followers(c.WaitLeader(30 * time.Second))[0]
		f.Kill()
		time.Sleep(2 * time.Second) // mail flows while it is down (the workload runs)
		f.Start()
		return 0
	})
}

func TestScenarioPartitionedLeader(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		l := c.WaitLeader(30 * time.Second)
		start := time.Now()
		c.Isolate(l)
		d := electionAfter(t, c.Followers(l), l.ID, start)
		time.Sleep(2 * time.Second) // the minority side refuses; the majority accepts
		c.HealAll()
		return d
	})
}

func TestScenarioLeaderPaused(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		l := c.WaitLeader(30 * time.Second)
		start := time.Now()
		l.Pause()
		d := electionAfter(t, c.Followers(l), l.ID, start)
		time.Sleep(time.Second)
		l.Resume()
		return d
	})
}

func TestScenarioAllKilled(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		for _, n := range c.Nodes {
			n.Kill()
		}
		start := time.Now()
		for _, n := range c.Nodes {
			n.Start()
		}
		return electionAfter(t, c.Nodes, "", start)
	})
}

func TestScenarioNodeReplacedByEmptyOne(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		f := c.Followers(c.WaitLeader(30 * time.Second))[0]
		f.Kill()
		f.WipeData()
		f.Start()
		c.WaitVoters(c.WaitLeader(30*time.Second), 90*time.Second, "n1", "n2", "n3")
		return 0
	})
}

func TestScenarioFiveNodesSplit(t *testing.T) {
	onTiers(t, harness.Options{Nodes: 5}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		l := c.WaitLeader(30 * time.Second)
		// The leader goes to the minority side.
		minority := []*harness.Node{l}
		var majority []*harness.Node
		for _, n := range c.Nodes {
			switch {
			case n == l:
			case len(minority) < 2:
				minority = append(minority, n)
			default:
				majority = append(majority, n)
			}
		}
		start := time.Now()
		c.Split(minority, majority)
		d := electionAfter(t, majority, l.ID, start)
		// The minority side never takes a write. Until its old leader's
		// lease runs out, that leader may still append the write and then
		// lose the majority: it must answer "outcome unknown", never
		// success, and the entry must be discarded once the cluster heals.
		if _, errOut, err := minority[1].CLI("domain", "add", "minority-early.example"); err == nil ||
			!(strings.Contains(errOut, "unavailable") || strings.Contains(errOut, "outcome unknown")) {
			t.Errorf("minority accepted a write during the old leader's lease: %v %s", err, errOut)
		}
		harness.Eventually(t, 30*time.Second, "the old leader steps down", func() error {
			if own, err := l.Leader(); err != nil || own == l.ID {
				return fmt.Errorf("%s still says it leads (%v)", l.ID, err)
			}
			return nil
		})
		// Once it has stepped down, the refusal is clear and certain.
		if _, errOut, err := minority[1].CLI("domain", "add", "minority.example"); err == nil || !strings.Contains(errOut, "unavailable") {
			t.Errorf("minority accepted a write: %v %s", err, errOut)
		}
		c.HealAll()
		// After the heal, a write through the majority that every node
		// applies puts each node past any entry the old leader held; neither
		// minority write may be there.
		majority[0].MustCLI("domain", "add", "after-heal.example")
		for _, n := range c.Nodes {
			harness.Eventually(t, 60*time.Second, n.ID+" applies the write after the heal", func() error {
				out, _, err := n.CLI("domain", "list")
				if err != nil {
					return err
				}
				if !strings.Contains(out, "after-heal.example") {
					return fmt.Errorf("after-heal.example not listed yet")
				}
				if strings.Contains(out, "minority") {
					t.Errorf("%s lists a domain only the minority was asked to add:\n%s", n.ID, out)
				}
				return nil
			})
		}
		return d
	})
}

// TestScenarioOneWayFromLeader: the leader's packets no longer reach the
// followers, while theirs still reach it. The followers elect a new leader;
// the old one must step down rather than go on taking writes.
func TestScenarioOneWayFromLeader(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		l := c.WaitLeader(30 * time.Second)
		start := time.Now()
		for _, f := range c.Followers(l) {
			c.CutOneWay(l, f)
		}
		d := electionAfter(t, c.Followers(l), l.ID, start)
		harness.Eventually(t, 30*time.Second, "the old leader steps down", func() error {
			if own, err := l.Leader(); err != nil || own == l.ID {
				return fmt.Errorf("%s still says it leads (%v)", l.ID, err)
			}
			return nil
		})
		c.HealAll()
		return d
	})
}

// TestScenarioFlakyLinks: every link between the nodes loses a third of its
// packets for a while; mail goes on, slower, and nothing is lost.
func TestScenarioFlakyLinks(t *testing.T) {
	onTiers(t, harness.Options{}, nodesFail, func(t *testing.T, c *harness.Cluster) time.Duration {
		for _, p := range c.Pairs() {
			c.Flaky(p[0], p[1], 0.33)
		}
		time.Sleep(3 * time.Second) // the fault lasts this long, under load
		c.HealAll()
		return 0
	})
}

// TestScenarioSlowLinks: every link between the nodes runs through a fault
// proxy that delays each direction by 40-80 ms (a link between distant
// sites), and then the leader's link to one follower is throttled to
// 32 KB/s as well, under load. Mail goes on, slower; nothing is lost, and
// no election happens: slow is not dead.
func TestScenarioSlowLinks(t *testing.T) {
	onTiers(t, harness.Options{LinkProxy: true}, nodesHealthy, func(t *testing.T, c *harness.Cluster) time.Duration {
		l := c.WaitLeader(30 * time.Second)
		for _, p := range c.Pairs() {
			c.Slow(p[0], p[1], 60, 20)
		}
		time.Sleep(2 * time.Second) // the fault lasts this long, under load
		c.Throttle(l, c.Followers(l)[0], 32)
		time.Sleep(2 * time.Second)
		c.HealAll()
		return 0
	})
}

// TestScenarioRollingUpgrade upgrades every node, one at a time, from the
// release build to a build with a newer command version, under load: some
// node accepts mail at every moment.
func TestScenarioRollingUpgrade(t *testing.T) {
	next := filepath.Join(t.TempDir(), "flotilla-next")
	if err := harness.BuildTo(next, "flotilla_next"); err != nil {
		t.Fatal(err)
	}
	c, sink := scenarioCluster(t, harness.Options{})
	r := scenario(t, c, sink, nodesHealthy, func() time.Duration {
		order := c.Followers(c.WaitLeader(30 * time.Second))
		order = append(order, c.WaitLeader(30*time.Second))
		for _, n := range order {
			// As an operator does: roll the next node once upgrade-check
			// says it is safe (the node restarted before may still be
			// catching up).
			harness.Eventually(t, 60*time.Second, "upgrade-check safe before "+n.ID, func() error {
				out, errOut, err := n.CLI("cluster", "upgrade-check")
				if err != nil {
					return fmt.Errorf("%v\n%s%s", err, out, errOut)
				}
				return nil
			})
			n.Stop() // SIGTERM: drains, hands leadership over
			n.Bin = next
			n.Start()
			c.WaitVoters(c.WaitLeader(30*time.Second), 60*time.Second, "n1", "n2", "n3")
		}
		// Every voter now understands the new command kind.
		l := c.WaitLeader(30 * time.Second)
		harness.Eventually(t, 10*time.Second, "the new command kind is allowed", func() error {
			return l.API("POST", "/v1/debug/note", map[string]string{"Key": "after", "Text": "upgrade"}, nil)
		})
		return 0
	})
	// Some node accepts mail at every moment: the longest pause between two
	// acknowledgements stays of the order of one message's round trip (tens
	// of milliseconds here), far from an election's second or more.
	if r.window > 2*time.Second {
		t.Errorf("no node accepted mail for %s during the upgrade", r.window)
	}
}

// TestUpgradeCheckRefusesWhileANodeIsDown: with one of three nodes down,
// taking another down would lose the majority; upgrade-check says so, names
// the node and what to do, and exits 1. Once the node is back it is safe.
func TestUpgradeCheckRefusesWhileANodeIsDown(t *testing.T) {
	c := harness.New(t, harness.Options{})
	l := c.WaitLeader(60 * time.Second)
	c.WaitVoters(l, 60*time.Second, "n1", "n2", "n3")
	f := c.Followers(l)[0]
	f.Kill()
	harness.Eventually(t, 30*time.Second, "upgrade-check refuses", func() error {
		out, _, err := l.CLI("cluster", "upgrade-check")
		if err == nil {
			return fmt.Errorf("exit 0 with %s down:\n%s", f.ID, out)
		}
		for _, want := range []string{"NOT safe", "node " + f.ID + " is not healthy", "start it again", "next:"} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		return nil
	})
	f.Start()
	harness.Eventually(t, 60*time.Second, "upgrade-check says safe", func() error {
		out, _, err := l.CLI("cluster", "upgrade-check")
		if err != nil || !strings.Contains(out, "SAFE") {
			return fmt.Errorf("%v:\n%s", err, out)
		}
		return nil
	})
}
