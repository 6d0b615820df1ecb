package test

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// previousRelease is the earlier build a rolling upgrade to this one is
// tested from: the last one before followers answered their own forwarded
// writes at their own commit (615cd01). Its leaders read at their commit
// index, so a follower of this build that answered early under one would
// let a read miss an acknowledged write.
const previousRelease = "0524ed1"

// TestMixedVersionsStayLinearizable rolls a cluster of the previous
// release to this build, one node at a time, under a linearizability
// workload: first an old leader with an upgraded follower, then an
// upgraded leader with old followers, then all upgraded. Every read sees
// every acknowledged write throughout; the new commit shortcut stays off
// until the leader is of this build, and is used once it is.
func TestMixedVersionsStayLinearizable(t *testing.T) {
	old := filepath.Join(t.TempDir(), "flotilla-"+previousRelease)
	if err := harness.BuildRevision(old, previousRelease); err != nil {
		t.Fatal(err)
	}
	c := harness.New(t, harness.Options{Bin: old})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	var users []string
	for i := 1; i <= 12; i++ {
		users = append(users, fmt.Sprintf("mix%d@example.org", i))
	}
	for _, u := range users {
		seedUser(t, leader, u)
	}
	upgrade := func(n *harness.Node) {
		t.Helper()
		n.Stop()
		n.Bin = "" // this build
		n.Start()
		c.WaitVoters(c.WaitLeader(30*time.Second), 60*time.Second, "n1", "n2", "n3")
	}
	known := func(n *harness.Node) float64 {
		t.Helper()
		raw, err := n.Raw("GET", "/metrics")
		if err != nil {
			t.Fatalf("%s metrics: %v", n.ID, err)
		}
		return metricValue(string(raw), "flotilla_commits_proven_here_total")
	}
	load := startRegisterLoad(c, users, 6)
	phase := func(what string) {
		t.Logf("%6.1fs %s", time.Since(load.start).Seconds(), what)
		time.Sleep(3 * time.Second) // let the workload run through this phase
	}

	// An old leader, one follower of this build, one old.
	f := c.Followers(leader)[0]
	upgrade(f)
	if l := c.WaitLeader(30 * time.Second); l != leader {
		t.Fatalf("leadership moved to %s when follower %s restarted", l.ID, f.ID)
	}
	phase("old leader " + leader.ID + ", follower " + f.ID + " upgraded")
	if k := known(f); k != 0 {
		t.Errorf("follower %s of this build proved %v writes committed by its own log write under leader %s of %s, which reads at its commit index",
			f.ID, k, leader.ID, previousRelease)
	}

	// The upgraded node leads two old ones.
	f.MustCLI("cluster", "transfer-leadership", "--to", f.ID)
	harness.Eventually(t, 30*time.Second, f.ID+" leads", func() error {
		if l := c.WaitLeader(30 * time.Second); l != f {
			return fmt.Errorf("leader is %s", l.ID)
		}
		return nil
	})
	phase("leader " + f.ID + " upgraded, the others old")

	// All of this build.
	for _, n := range c.Nodes {
		if n != f {
			upgrade(n)
		}
	}
	phase("all upgraded")
	load.check(t)

	l := c.WaitLeader(30 * time.Second)
	total := 0.0
	for _, n := range c.Followers(l) {
		total += known(n)
	}
	if total < 1 {
		t.Errorf("with every node upgraded, no follower answered a write at its own commit (flotilla_commits_proven_here_total)")
	}
	verifyClean(t, l, 3)
}
