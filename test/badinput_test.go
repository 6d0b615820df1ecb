package test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// serveErr runs `flotilla serve args...` expecting it to refuse to start.
func serveErr(t *testing.T, args ...string) string {
	t.Helper()
	cmd := harness.Command(harness.Binary(t), append([]string{"serve"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("serve %v started and exited 0:\n%s", args, out.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("serve %v did not refuse to start:\n%s", args, out.String())
	}
	return out.String()
}

func TestMalformedConfigIsRefusedClearly(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct{ file, want string }{
		"syntax":       {"node_id = \"n1\"\nsmtp_port = = 25\n", "line 2"},
		"unknown key":  {"node_id = \"n1\"\nsmpt_port = 25\n", "unknown setting smpt_port"},
		"wrong type":   {"smtp_port = \"twenty-five\"\n", "smtp_port"},
		"bad port":     {"smtp_port = 70000\n", "not a port"},
		"bad gossip":   {"gossip_key = \"short\"\n", "gossip-key"},
		"bad duration": {"dead_server_grace = \"soon\"\n", "dead_server_grace"},
		"no sessions":  {"max_connections_per_ip = 0\n", "--max-connections-per-ip (0) must be at least 1"},
		"bad size":     {"min_free_space = \"lots\"\n", "min_free_space"},
	}
	for name, tc := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".toml")
		if err := os.WriteFile(path, []byte(tc.file), 0o644); err != nil {
			t.Fatal(err)
		}
		out := serveErr(t, "--config", path, "--data-dir", filepath.Join(dir, "data-"+name))
		if !strings.Contains(out, tc.want) || !strings.Contains(out, path) && name != "bad port" && name != "bad gossip" && name != "no sessions" {
			t.Errorf("%s: want an error naming %q (and the file), got:\n%s", name, tc.want, out)
		}
	}
	// A missing file is named too; a flag overrides the file.
	out := serveErr(t, "--config", filepath.Join(dir, "nope.toml"))
	if !strings.Contains(out, "nope.toml") {
		t.Errorf("missing config: %s", out)
	}
	path := filepath.Join(dir, "ok.toml")
	os.WriteFile(path, []byte("smtp_port = 2525\n"), 0o644)
	out = serveErr(t, "--config", path, "--smtp-port", "99999")
	if !strings.Contains(out, "smtp-port 99999") {
		t.Errorf("flag did not override the file: %s", out)
	}
}

// TestUnknownCommandStopsOldNode: a node of an older build meeting a command
// kind it does not know (and may not skip) stops with a clear message and
// applies nothing, instead of diverging; run with the newer build again, it
// catches up. Proposing that kind is refused while an old node is a voter.
func TestUnknownCommandStopsOldNode(t *testing.T) {
	next := filepath.Join(t.TempDir(), "flotilla-next")
	if err := harness.BuildTo(next, "flotilla_next"); err != nil {
		t.Fatal(err)
	}
	c := harness.New(t, harness.Options{Bin: next})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	if err := leader.API("POST", "/v1/debug/note", map[string]string{"Key": "a", "Text": "first"}, nil); err != nil {
		t.Fatalf("note with every node new: %v", err)
	}
	old := c.Followers(leader)[0]
	old.Stop()
	if err := leader.API("POST", "/v1/debug/note", map[string]string{"Key": "b", "Text": "while old is down"}, nil); err != nil {
		t.Fatalf("note: %v", err)
	}
	old.Bin = "" // the release build
	old.Start()
	code, err := old.Wait(60 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code == 0 {
		t.Fatal("old node exited 0")
	}
	if lines := old.Grep("unknown command type 1000"); len(lines) == 0 || !strings.Contains(old.Log(), "upgrade this node") {
		t.Fatalf("old node's log does not say what happened:\n%s", old.Log())
	}
	// Back on the new build it catches up and matches the others.
	old.Bin = next
	old.Start()
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	verifyCleanWith(t, leader, 3, next)

}

// TestNewCommandKindWaitsForEveryVoter: while one voter runs the older
// build, a command kind it does not know is refused, not written.
func TestNewCommandKindWaitsForEveryVoter(t *testing.T) {
	next := filepath.Join(t.TempDir(), "flotilla-next")
	if err := harness.BuildTo(next, "flotilla_next"); err != nil {
		t.Fatal(err)
	}
	c := harness.New(t, harness.Options{NoStart: true})
	c.Nodes[0].Bin, c.Nodes[1].Bin = next, next // n3 runs the release build
	for _, n := range c.Nodes {
		n.Start()
	}
	c.WaitVoters(c.WaitLeader(30*time.Second), 30*time.Second, "n1", "n2", "n3")
	err := c.Nodes[0].API("POST", "/v1/debug/note", map[string]string{"Key": "c", "Text": "refused"}, nil)
	var apiErr *harness.APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 412 || !strings.Contains(apiErr.Body, "node n3 understands 2") {
		t.Fatalf("note with an old voter: %v", err)
	}
	// The old node never saw anything it could not apply.
	c.Nodes[0].MustCLI("domain", "add", "mixed.example")
	waitDomain(t, c, "mixed.example")
}

func verifyCleanWith(t *testing.T, n *harness.Node, want int, bin string) {
	t.Helper()
	saved := n.Bin
	n.Bin = bin
	defer func() { n.Bin = saved }()
	verifyClean(t, n, want)
}

func TestCorruptSnapshotIsReplaced(t *testing.T) {
	c := harness.New(t, harness.Options{Args: []string{"--snapshot-threshold", "20", "--snapshot-interval", "200ms"}})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	for i := 0; i < 30; i++ {
		importMessage(t, leader, "alice@example.org", msg(i))
	}
	victim := c.Followers(leader)[0]
	var snap string
	harness.Eventually(t, 30*time.Second, "a snapshot", func() error {
		snaps, _ := filepath.Glob(filepath.Join(victim.DataDir, "raft", "snapshots", "*", "state.bin"))
		if len(snaps) == 0 {
			return errors.New("none")
		}
		sort.Strings(snaps)
		snap = snaps[len(snaps)-1]
		return nil
	})
	victim.Stop()
	snaps, _ := filepath.Glob(filepath.Join(victim.DataDir, "raft", "snapshots", "*", "state.bin"))
	sort.Strings(snaps)
	snap = snaps[len(snaps)-1]
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(snap, b, 0o644); err != nil {
		t.Fatal(err)
	}
	victim.Start()
	harness.Eventually(t, 30*time.Second, "corruption reported", func() error {
		if len(victim.Grep("newest snapshot is corrupt")) == 0 {
			return errors.New("not reported")
		}
		return nil
	})
	// Nothing of the state was damaged, and new writes lead to a fresh,
	// good snapshot.
	for i := 30; i < 60; i++ {
		importMessage(t, leader, "alice@example.org", msg(i))
	}
	waitMessages(t, c, "alice@example.org", 60)
	harness.Eventually(t, 30*time.Second, "corrupt snapshot replaced", func() error {
		if len(victim.Grep("replaced the corrupt snapshot")) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	verifyClean(t, leader, 3)
}

func TestWrongClusterCredentialsAreKeptOut(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")

	// A node whose certificate comes from another CA.
	otherTLS := filepath.Join(t.TempDir(), "other-tls")
	if out, err := harness.Command(harness.Binary(t), "cluster", "tls-init", "--out", otherTLS, "--nodes", "n4,n5").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	n4 := c.AddNode()
	n4.TLSDir = otherTLS
	n4.Start()
	// A node with the wrong gossip key.
	n5 := c.AddNode()
	n5.GossipKey = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
	n5.Start()

	harness.Eventually(t, 30*time.Second, "the bad certificate is reported", func() error {
		if len(leader.Grep("does not answer on its cluster port")) == 0 {
			return errors.New("leader has not reported n4")
		}
		if len(n4.Grep("TLS handshake failed")) == 0 {
			return errors.New("n4 has not reported the handshake failure")
		}
		return nil
	})
	harness.Eventually(t, 30*time.Second, "the bad gossip key is reported", func() error {
		if len(n5.Grep("gossip key")) == 0 {
			return errors.New("n5 has not reported the key")
		}
		return nil
	})
	leader.MustCLI("domain", "add", "still-works.example")
	st, err := leader.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range st.Nodes {
		if (ns.ID == "n4" || ns.ID == "n5") && ns.State != "joining" {
			t.Errorf("%s got into the cluster: %+v", ns.ID, ns)
		}
		if ns.ID == "n5" {
			t.Errorf("n5 with the wrong gossip key is known to the cluster: %+v", ns)
		}
	}
	c.WaitVoters(leader, 5*time.Second, "n1", "n2", "n3")
	verifyClean(t, leader, 3)
}

func TestDataDirOfAnotherCluster(t *testing.T) {
	a := harness.New(t, harness.Options{Nodes: 1})
	a.WaitLeader(30 * time.Second)
	b := harness.New(t, harness.Options{Nodes: 1})
	b.WaitLeader(30 * time.Second)
	a.Nodes[0].Stop()
	b.Nodes[0].Stop()
	// Node n1 of cluster B started on the data dir of cluster A's n1.
	b.Nodes[0].DataDir = a.Nodes[0].DataDir
	b.Nodes[0].Start()
	code, err := b.Nodes[0].Wait(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	log := b.Nodes[0].Log()
	if code == 0 || !strings.Contains(log, "belongs to another cluster") {
		t.Fatalf("exit %d; log:\n%s", code, log)
	}
	// Cluster A's data is intact: its node starts and has its state.
	a.Nodes[0].Start()
	a.WaitLeader(30 * time.Second)
	verifyClean(t, a.Nodes[0], 1)
	_ = fmt.Sprint
}
