package test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// seedUser adds a domain and a user through node n.
func seedUser(t *testing.T, n *harness.Node, addr string) {
	t.Helper()
	domain := addr[strings.IndexByte(addr, '@')+1:]
	if _, errOut, err := n.CLI("domain", "add", domain); err != nil && !strings.Contains(errOut, "already exists") {
		t.Fatalf("domain add: %v %s", err, errOut)
	}
	if out, errOut, err := n.CLIInput("pw-"+addr+"\n", "user", "add", addr, "--password-stdin"); err != nil {
		t.Fatalf("user add: %v %s %s", err, out, errOut)
	}
}

// importMessage stores a message through node n and returns its UID.
func importMessage(t *testing.T, n *harness.Node, user, body string) uint32 {
	t.Helper()
	out, errOut, err := n.CLIInput(body, "user", "import", user)
	if err != nil {
		t.Fatalf("import through %s: %v %s", n.ID, err, errOut)
	}
	var uid uint32
	if _, err := fmt.Sscanf(out[strings.LastIndex(out, "UID"):], "UID %d", &uid); err != nil {
		t.Fatalf("import output %q", out)
	}
	return uid
}

func messages(n *harness.Node, user string) ([]admin.Message, error) {
	var ms []admin.Message
	err := n.API("GET", "/v1/users/"+user+"/messages?stale=1", nil, &ms)
	return ms, err
}

// waitMessages waits until every running node holds exactly want messages
// for user, with identical UIDs and content hashes.
func waitMessages(t *testing.T, c *harness.Cluster, user string, want int) []admin.Message {
	t.Helper()
	var ref []admin.Message
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		harness.Eventually(t, 60*time.Second, fmt.Sprintf("%s holds %d messages of %s", n.ID, want, user), func() error {
			ms, err := messages(n, user)
			if err != nil {
				return err
			}
			if len(ms) != want {
				return fmt.Errorf("%d messages", len(ms))
			}
			if ref == nil {
				ref = ms
				return nil
			}
			for i := range ms {
				if ms[i].UID != ref[i].UID || ms[i].SHA256 != ref[i].SHA256 {
					return fmt.Errorf("message %d differs: %+v vs %+v", i, ms[i], ref[i])
				}
			}
			return nil
		})
	}
	return ref
}

func msg(i int) string {
	return fmt.Sprintf("From: a@example.org\r\nTo: b@example.org\r\nSubject: test %d\r\n\r\n%s\r\n", i, strings.Repeat(fmt.Sprintf("line %d of a message body\r\n", i), 100))
}

func TestLeaderKilledWritesGoOn(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	for i := 0; i < 5; i++ {
		importMessage(t, c.Followers(leader)[0], "alice@example.org", msg(i))
	}

	leader.Kill()
	start := time.Now()
	newLeader := c.WaitLeader(30 * time.Second)
	t.Logf("new leader %s after %s", newLeader.ID, time.Since(start))
	if newLeader == leader {
		t.Fatal("killed node still leads")
	}
	// Writes go on through both survivors, the follower forwarding.
	for i, n := range c.Followers(leader) {
		n.MustCLI("domain", "add", fmt.Sprintf("after-%d.example", i))
		importMessage(t, n, "alice@example.org", msg(10+i))
	}
	leader.Start()
	waitMessages(t, c, "alice@example.org", 7)
	waitDomain(t, c, "after-1.example")
	verifyClean(t, newLeader, 3)
}

// TestRestartAfterSnapshot restarts nodes whose logs were compacted: a
// restart applies nothing twice (the state file records the last index), and
// a node that missed the compacted entries gets a snapshot and fetches the
// message bodies it lacks from its peers.
func TestRestartAfterSnapshot(t *testing.T) {
	c := harness.New(t, harness.Options{Args: []string{"--snapshot-threshold", "40", "--snapshot-interval", "200ms", "--trailing-logs", "10"}})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	lagging := c.Followers(leader)[1]
	lagging.Stop()
	for i := 0; i < 60; i++ {
		importMessage(t, leader, "alice@example.org", msg(i))
	}
	before := waitMessages(t, c, "alice@example.org", 60)
	// Snapshots were taken and the logs truncated on the running nodes.
	for _, n := range c.Followers(nil) {
		harness.Eventually(t, 30*time.Second, n.ID+" has a snapshot", func() error {
			snaps, _ := filepath.Glob(filepath.Join(n.DataDir, "raft", "snapshots", "*", "state.bin"))
			if len(snaps) == 0 {
				return errors.New("no snapshot")
			}
			return nil
		})
	}
	// A node restarted after compaction comes back with exactly its messages.
	leader.Stop()
	leader.Start()
	// The lagging node needs a snapshot: its log ends before the compaction.
	lagging.Start()
	after := waitMessages(t, c, "alice@example.org", 60)
	for i := range before {
		if before[i].UID != after[i].UID || before[i].SHA256 != after[i].SHA256 {
			t.Fatalf("message %d changed across restarts: %+v, %+v", i, before[i], after[i])
		}
	}
	if len(lagging.Grep("installed snapshot")) == 0 {
		t.Errorf("%s caught up without a snapshot install; the test did not test it", lagging.ID)
	}
	// The bodies it fetched are byte-identical.
	checkBodies(t, lagging, "alice@example.org", after)
	mbs := mailboxes(t, leader, "alice@example.org")
	if mbs["INBOX"].UIDNext != 61 {
		t.Errorf("UIDNEXT %d after restarts, want 61 (an entry applied twice would add one)", mbs["INBOX"].UIDNext)
	}
	verifyClean(t, c.WaitLeader(30*time.Second), 3)
}

func checkBodies(t *testing.T, n *harness.Node, user string, want []admin.Message) {
	t.Helper()
	for _, m := range want {
		raw, err := rawMessage(n, user, m.UID)
		if err != nil {
			t.Fatalf("%s: message %d: %v", n.ID, m.UID, err)
		}
		sum := sha256.Sum256(raw)
		if hex.EncodeToString(sum[:]) != m.SHA256 {
			t.Fatalf("%s: message %d bytes differ", n.ID, m.UID)
		}
	}
}

func mailboxes(t *testing.T, n *harness.Node, user string) map[string]admin.Mailbox {
	t.Helper()
	var mbs []admin.Mailbox
	if err := n.API("GET", "/v1/users/"+user+"/mailboxes?stale=1", nil, &mbs); err != nil {
		t.Fatal(err)
	}
	out := map[string]admin.Mailbox{}
	for _, m := range mbs {
		out[m.Name] = m
	}
	return out
}

func TestIsolatedLeaderRefusesWrites(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	leader.MustCLI("domain", "add", "before.example")

	c.Isolate(leader)
	// A write in flight as the leader is cut off may have reached its log:
	// it is never answered with success, nor with a plain refusal while
	// it could still commit.
	inflight := make(chan string, 1)
	go func() {
		_, errOut, err := leader.CLI("domain", "add", "inflight.example")
		if err == nil {
			inflight <- "accepted"
			return
		}
		inflight <- errOut
	}()
	// Once the old leader has stepped down it refuses writes outright: it
	// cannot reach a majority.
	harness.Eventually(t, 10*time.Second, "the cut-off leader steps down", func() error {
		if l, err := leader.Leader(); err != nil || l != "" {
			return fmt.Errorf("still sees leader %q (%v)", l, err)
		}
		return nil
	})
	start := time.Now()
	_, errOut, err := leader.CLI("domain", "add", "lost.example")
	if err == nil {
		t.Fatal("an isolated node accepted a write")
	}
	if !strings.Contains(errOut, "cluster unavailable") || !strings.Contains(errOut, "majority") {
		t.Fatalf("unclear refusal: %s", errOut)
	}
	t.Logf("refused after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(errOut))
	// The majority side elects a leader and goes on.
	others := c.Followers(leader)
	harness.Eventually(t, 30*time.Second, "majority elects a leader", func() error {
		_, errOut, err := others[0].CLI("domain", "add", "during.example")
		if err != nil && !strings.Contains(errOut, "already exists") {
			return fmt.Errorf("%v %s", err, errOut)
		}
		return nil
	})
	c.HealAll()
	waitDomain(t, c, "during.example")
	ds, _ := domains(leader)
	for _, d := range ds {
		if d == "lost.example" {
			t.Fatal("the refused write was applied after all")
		}
	}
	// The write in flight is retried under its request ID: answered
	// success only once it is really committed (after the heal), else
	// "outcome unknown"; never a plain refusal followed by its commit.
	got := <-inflight
	// A linearizable read: an acknowledged write must be in it.
	var all []admin.Domain
	if err := others[0].API("GET", "/v1/domains", nil, &all); err != nil {
		t.Fatal(err)
	}
	ds = nil
	for _, d := range all {
		ds = append(ds, d.Name)
	}
	applied := false
	for _, d := range ds {
		applied = applied || d == "inflight.example"
	}
	switch {
	case got == "accepted" && !applied:
		t.Error("the write in flight was answered success but is not stored")
	case strings.Contains(got, "cluster unavailable") && applied:
		t.Error("the write in flight was refused but stored")
	case got != "accepted" && !strings.Contains(got, "outcome unknown") && !strings.Contains(got, "cluster unavailable"):
		t.Errorf("write in flight when the leader was cut off: %s", got)
	}
	t.Logf("write in flight: %s (stored: %v)", strings.TrimSpace(got), applied)
	verifyClean(t, others[0], 3)
}

func TestFourthNodeJoinsAndCatchesUp(t *testing.T) {
	c := harness.New(t, harness.Options{Args: []string{"--snapshot-threshold", "30", "--snapshot-interval", "200ms", "--trailing-logs", "10"}})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	for i := 0; i < 40; i++ {
		importMessage(t, leader, "alice@example.org", msg(i))
	}
	n4 := c.AddNode()
	n4.Start()
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3", "n4")
	ms := waitMessages(t, c, "alice@example.org", 40)
	checkBodies(t, n4, "alice@example.org", ms)
	verifyClean(t, leader, 4)
}

func TestDeadNodeRemovedThenRejoins(t *testing.T) {
	c := harness.New(t, harness.Options{DeadServerGrace: "3s"})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	victim := c.Followers(leader)[0]
	victim.Kill()
	harness.Eventually(t, 60*time.Second, victim.ID+" removed as voter", func() error {
		st, err := leader.Status()
		if err != nil {
			return err
		}
		for _, n := range st.Nodes {
			if n.ID == victim.ID {
				return fmt.Errorf("still listed: %+v", n)
			}
		}
		return nil
	})
	leader.MustCLI("domain", "add", "while-removed.example")
	victim.Start()
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	waitDomain(t, c, "while-removed.example")
	verifyClean(t, leader, 3)
}

func TestTransferLeadershipAndRemove(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	target := c.Followers(leader)[0]
	out := c.Followers(leader)[1].MustCLI("cluster", "transfer-leadership", "--to", target.ID)
	if !strings.Contains(out, "leader is now "+target.ID) {
		t.Fatalf("transfer: %s", out)
	}
	if l := c.WaitLeader(20 * time.Second); l != target {
		t.Fatalf("leader is %s, want %s", l.ID, target.ID)
	}
	gone := c.Followers(target)[0]
	target.MustCLI("cluster", "remove", gone.ID)
	gone.Stop()
	c.WaitVoters(target, 20*time.Second, voterIDs(c, gone)...)
}

func voterIDs(c *harness.Cluster, except *harness.Node) []string {
	var ids []string
	for _, n := range c.Nodes {
		if n != except {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

func rawMessage(n *harness.Node, user string, uid uint32) ([]byte, error) {
	return n.Raw("GET", fmt.Sprintf("/v1/users/%s/messages/%d?stale=1", user, uid))
}
