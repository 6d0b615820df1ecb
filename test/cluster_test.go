package test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// domains returns the domains node n holds locally (no leader needed).
func domains(n *harness.Node) ([]string, error) {
	var ds []admin.Domain
	if err := n.API("GET", "/v1/domains?stale=1", nil, &ds); err != nil {
		return nil, err
	}
	var out []string
	for _, d := range ds {
		out = append(out, d.Name)
	}
	return out, nil
}

// waitDomain waits until every running node holds the domain.
func waitDomain(t *testing.T, c *harness.Cluster, name string) {
	t.Helper()
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		harness.Eventually(t, 20*time.Second, n.ID+" has "+name, func() error {
			ds, err := domains(n)
			if err != nil {
				return err
			}
			for _, d := range ds {
				if d == name {
					return nil
				}
			}
			return fmt.Errorf("domains %v", ds)
		})
	}
}

func verifyClean(t *testing.T, n *harness.Node, wantNodes int) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "cluster verify clean", func() error {
		out, errOut, err := n.CLI("cluster", "verify")
		if err != nil {
			return fmt.Errorf("%v: %s%s", err, out, errOut)
		}
		if got := strings.Count(out, " ok"); got != wantNodes {
			return fmt.Errorf("%d nodes ok, want %d:\n%s", got, wantNodes, out)
		}
		return nil
	})
}

// With the other follower frozen, the leader can commit only with this
// follower's copy: the follower that stored it knows of the commit before
// the leader does (leader and follower are a majority of three), and
// answers its own writes without the leader's answer. Every write still
// reaches every node once the frozen one thaws.
func TestFollowerKnowsItsOwnCommit(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	fs := c.Followers(leader)
	f, frozen := fs[0], fs[1]
	frozen.Pause()
	for i := range 20 {
		f.MustCLI("domain", "add", fmt.Sprintf("own%d.example.org", i))
	}
	if ds, err := domains(f); err != nil || len(ds) != 20 {
		t.Fatalf("%s reads back %d domains, %v; want 20", f.ID, len(ds), err)
	}
	raw, err := f.Raw("GET", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	// A write is answered by whichever comes first, so not every one need
	// be; but the follower's own knowledge is there a round trip sooner.
	if known := metricValue(string(raw), "flotilla_commits_proven_here_total"); known < 1 {
		t.Errorf("20 writes through %s while %s was frozen, none known committed there (flotilla_commits_proven_here_total %v)", f.ID, frozen.ID, known)
	}
	frozen.Resume()
	waitDomain(t, c, "own19.example.org")
	verifyClean(t, f, 3)
}

func TestFollowerWriteReachesEveryNode(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	f := c.Followers(leader)[0]

	// The write goes to a follower; the CLI answers once it is committed
	// and applied there, so the follower reads it back at once.
	f.MustCLI("domain", "add", "example.org")
	ds, err := domains(f)
	if err != nil || len(ds) != 1 || ds[0] != "example.org" {
		t.Fatalf("follower reads back %v, %v", ds, err)
	}
	waitDomain(t, c, "example.org")
	// The cluster's ID shows at once: the node has applied the entry that
	// made it (the first), though its data dir records it only later.
	if st, err := f.Status(); err != nil || st.ClusterID == "" {
		t.Errorf("status of %s right after a write through it: cluster_id %q, %v", f.ID, st.ClusterID, err)
	}

	// Errors come back from the leader with their meaning intact.
	_, errOut, err := f.CLI("domain", "add", "example.org")
	if err == nil || !strings.Contains(errOut, "already exists") {
		t.Fatalf("duplicate domain through follower: %v %s", err, errOut)
	}
	out := f.MustCLI("cluster", "status", "--json")
	for _, want := range []string{`"leader": "` + leader.ID + `"`, `"applied_index"`, `"voter": true`, `"healthy": true`, `"version"`} {
		if !strings.Contains(out, want) {
			t.Errorf("status JSON lacks %s:\n%s", want, out)
		}
	}
	verifyClean(t, f, 3)

	// The follower applies its own writes as soon as the leader's answer
	// shows them committed, not when Raft's next append tells it (up to
	// CommitTimeout later); the metric counts entries applied that way.
	for i := range 20 {
		f.MustCLI("domain", "add", fmt.Sprintf("hint%d.example.org", i))
	}
	raw, err := f.Raw("GET", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if hinted := metricValue(string(raw), "flotilla_fsm_hinted_entries_total"); hinted < 1 {
		t.Errorf("20 writes through %s, none applied from the leader's answer (flotilla_fsm_hinted_entries_total %v)", f.ID, hinted)
	}
	// They went on the forwarding stream, not one HTTP request each.
	if fw, viaHTTP := metricValue(string(raw), "flotilla_forwarded_writes_total"), metricValue(string(raw), "flotilla_forwarded_http_total"); fw < 21 || viaHTTP != 0 {
		t.Errorf("%s forwarded %v writes, %v of them over HTTP; want 21 or more, none over HTTP", f.ID, fw, viaHTTP)
	}
	waitDomain(t, c, "hint19.example.org")
	verifyClean(t, f, 3)
}

// metricValue reads one unlabelled sample from a Prometheus text page; -1
// if absent.
func metricValue(page, name string) float64 {
	for _, line := range strings.Split(page, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}

func TestMetricsAndGracefulStop(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	importMessage(t, c.Followers(leader)[0], "alice@example.org", msg(1))

	raw, err := leader.Raw("GET", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics := string(raw)
	for _, name := range []string{
		"flotilla_raft_state 2", // leader
		"flotilla_raft_commit_seconds_count", "flotilla_fsm_apply_seconds_count", "flotilla_fsm_batch_entries_count",
		"flotilla_snapshot_seconds", "flotilla_snapshot_bytes", "flotilla_store_file_bytes", "flotilla_store_body_bytes",
		"flotilla_raft_applied_index", "flotilla_raft_log_file_bytes",
	} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	// SIGTERM on the leader hands leadership over before the node stops, and
	// the node exits cleanly (the harness checks the exit code).
	leader.Stop()
	if len(leader.Grep("handed leadership over before stopping")) == 0 {
		t.Errorf("leader stopped without handing leadership over:\n%s", leader.Log())
	}
	next := c.WaitLeader(10 * time.Second)
	next.MustCLI("domain", "add", "after-stop.example")
	leader.Start()
	waitDomain(t, c, "after-stop.example")
}
