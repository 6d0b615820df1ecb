package test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/test/harness"
)

func TestBackupRestoreIntoFreshCluster(t *testing.T) {
	a := harness.New(t, harness.Options{})
	aLeader := a.WaitLeader(30 * time.Second)
	a.WaitVoters(aLeader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, aLeader, "alice@example.org")
	for i := 0; i < 20; i++ {
		importMessage(t, a.Followers(aLeader)[i%2], "alice@example.org", msg(i))
	}
	want := waitMessages(t, a, "alice@example.org", 20)
	file := filepath.Join(t.TempDir(), "a.backup")
	out := a.Followers(aLeader)[0].MustCLI("backup", "create", "--out", file)
	if !strings.Contains(out, "backup written") {
		t.Fatalf("backup: %s", out)
	}

	b := harness.New(t, harness.Options{})
	bLeader := b.WaitLeader(30 * time.Second)
	b.WaitVoters(bLeader, 30*time.Second, "n1", "n2", "n3")
	var bBefore cluster.Status
	harness.Eventually(t, 30*time.Second, "cluster B has its identity", func() error {
		var err error
		if bBefore, err = bLeader.Status(); err == nil && bBefore.ClusterID == "" {
			err = errors.New("no cluster ID yet")
		}
		return err
	})

	// A damaged backup is refused whole, and nothing changes.
	raw, _ := os.ReadFile(file)
	bad := filepath.Join(t.TempDir(), "bad.backup")
	os.WriteFile(bad, raw[:len(raw)-100], 0o644)
	if _, errOut, err := bLeader.CLI("backup", "restore", "--file", bad); err == nil || !strings.Contains(errOut, "corrupt snapshot") {
		t.Fatalf("damaged backup: %v %s", err, errOut)
	}
	// Only the leader restores.
	if _, errOut, err := b.Followers(bLeader)[0].CLI("backup", "restore", "--file", file); err == nil || !strings.Contains(errOut, "leader") {
		t.Fatalf("restore on a follower: %v %s", err, errOut)
	}

	bLeader.MustCLI("backup", "restore", "--file", file)
	got := waitMessages(t, b, "alice@example.org", 20)
	for i := range want {
		if got[i].UID != want[i].UID || got[i].SHA256 != want[i].SHA256 {
			t.Fatalf("message %d differs after restore: %+v vs %+v", i, got[i], want[i])
		}
	}
	for _, n := range b.Nodes {
		checkBodies(t, n, "alice@example.org", got)
	}
	// The restored cluster keeps its identity and goes on taking writes.
	after, _ := bLeader.Status()
	if after.ClusterID != bBefore.ClusterID {
		t.Errorf("cluster ID changed from %s to %s", bBefore.ClusterID, after.ClusterID)
	}
	importMessage(t, b.Nodes[1], "alice@example.org", msg(99))
	waitMessages(t, b, "alice@example.org", 21)
	verifyClean(t, bLeader, 3)
}

func TestRecoverFromLostMajority(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	for i := 0; i < 5; i++ {
		importMessage(t, leader, "alice@example.org", msg(i))
	}
	waitMessages(t, c, "alice@example.org", 5)
	survivor := c.Node("n1")
	for _, n := range []*harness.Node{c.Node("n2"), c.Node("n3")} {
		n.Kill()
		n.WipeData()
	}
	// Refused, or (when the survivor led and took the entry into its log)
	// reported of unknown outcome: never accepted.
	if _, errOut, err := survivor.CLI("domain", "add", "lost-majority.example"); err == nil ||
		!strings.Contains(errOut, "unavailable") && !strings.Contains(errOut, "outcome unknown") {
		t.Fatalf("write without a majority: %v %s", err, errOut)
	}
	survivor.Stop()
	out, err := harness.Command(harness.Binary(t), append([]string{"cluster", "recover", "--keep", "n1"}, survivor.ServeArgs()...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("recover: %v %s", err, out)
	}
	survivor.Start()
	harness.Eventually(t, 30*time.Second, "the survivor leads alone and takes writes", func() error {
		_, errOut, err := survivor.CLI("domain", "add", "recovered.example")
		if err != nil && !strings.Contains(errOut, "already exists") {
			return errors.New(errOut)
		}
		return nil
	})
	// Its mail is intact, and fresh nodes join it again.
	for _, id := range []string{"n2", "n3"} {
		c.Node(id).Start()
	}
	c.WaitVoters(survivor, 60*time.Second, "n1", "n2", "n3")
	ms := waitMessages(t, c, "alice@example.org", 5)
	checkBodies(t, c.Node("n3"), "alice@example.org", ms)
	verifyClean(t, survivor, 3)
}
