package test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// regOp is one operation on a register: a user's quota, written through the
// admin API (a replicated write) and read back through it (a linearizable
// read: the node confirms the leader's commit index first).
type regOp struct {
	key   string
	write bool
	value int64
}

// partitionBy splits a history into independent parts by key: porcupine
// checks each alone, which keeps each part's search small.
func partitionBy(key func(porcupine.Operation) string) func([]porcupine.Operation) [][]porcupine.Operation {
	return func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			byKey[key(op)] = append(byKey[key(op)], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	}
}

var registerModel = porcupine.Model{
	Partition: partitionBy(func(op porcupine.Operation) string { return op.Input.(regOp).key }),
	Init:      func() any { return int64(0) },
	Step: func(state, input, output any) (bool, any) {
		in := input.(regOp)
		if in.write {
			return true, in.value
		}
		return output.(int64) == state.(int64), state
	},
	Equal: func(a, b any) bool { return a == b },
	DescribeOperation: func(input, output any) string {
		in := input.(regOp)
		if in.write {
			return fmt.Sprintf("set %s = %d", in.key, in.value)
		}
		return fmt.Sprintf("get %s -> %v", in.key, output)
	},
}

// TestWritesAndReadsAreLinearizable drives concurrent writers and readers
// through every node while the leader is killed and, later, a new leader
// is cut off; porcupine then checks that the history is linearizable: no
// read misses an acknowledged write, none sees a write before it happened.
func TestWritesAndReadsAreLinearizable(t *testing.T) {
	// Many registers keep each one's history small for the checker.
	c, users := linearizabilityCluster(t, "r", 12)
	load := startRegisterLoad(c, users, 6)
	linearizabilityFaults(t, c, load.start)
	load.check(t)
	verifyClean(t, c.WaitLeader(30*time.Second), 3)
}

// registerLoad is the linearizability tests' workload: clients writing
// users' quotas and reading them back, each through its own node.
type registerLoad struct {
	c     *harness.Cluster
	users []string
	start time.Time
	stop  chan struct{}
	wg    sync.WaitGroup

	mu       sync.Mutex
	ops      []porcupine.Operation
	failures map[string]int
}

func startRegisterLoad(c *harness.Cluster, users []string, clients int) *registerLoad {
	l := &registerLoad{c: c, users: users, start: time.Now(), stop: make(chan struct{}), failures: map[string]int{}}
	for client := range clients {
		l.wg.Add(1)
		go l.run(client)
	}
	return l
}

func (l *registerLoad) now() int64 { return int64(time.Since(l.start)) }

func (l *registerLoad) run(client int) {
	defer l.wg.Done()
	rng := rand.New(rand.NewPCG(uint64(client), 7))
	seq := int64(0)
	for {
		select {
		case <-l.stop:
			return
		default:
		}
		n := l.c.Nodes[client%len(l.c.Nodes)]
		if !n.Running() {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		key := l.users[rng.IntN(len(l.users))]
		op := porcupine.Operation{ClientId: client, Call: l.now()}
		if rng.IntN(2) == 0 {
			seq++
			v := int64(client+1)*1_000_000 + seq
			op.Input = regOp{key: key, write: true, value: v}
			err := n.API("PUT", "/v1/users/"+key+"/quota", map[string]int64{"quota_bytes": v}, nil)
			op.Return, op.Output = l.now(), int64(0)
			if err != nil && strings.Contains(err.Error(), "connection refused") {
				continue // never sent: it did not happen
			}
			if err != nil {
				// The write may or may not have happened: its effect may
				// show any time after the call.
				op.Return = math.MaxInt64
				l.mu.Lock()
				l.failures[trimErr(err)]++
				l.mu.Unlock()
			}
		} else {
			var u admin.User
			err := n.API("GET", "/v1/users/"+key, nil, &u)
			op.Return = l.now()
			if err != nil {
				continue // a failed read tells nothing
			}
			op.Input, op.Output = regOp{key: key}, u.QuotaBytes
		}
		l.mu.Lock()
		l.ops = append(l.ops, op)
		l.mu.Unlock()
	}
}

// check stops the load and has porcupine check its history.
func (l *registerLoad) check(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	ops := l.ops
	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	writes, reads, unknown := 0, 0, 0
	for _, op := range ops {
		if op.Input.(regOp).write {
			writes++
			if op.Return == math.MaxInt64 {
				unknown++
			}
		} else {
			reads++
		}
	}
	if reads < 100 || writes < 100 {
		t.Fatalf("too few operations to judge: %d writes, %d reads", writes, reads)
	}
	res, info := porcupine.CheckOperationsVerbose(registerModel, ops, 2*time.Minute)
	t.Logf("%d writes (%d with unknown outcome), %d reads: %s", writes, unknown, reads, res)
	for msg, n := range l.failures {
		t.Logf("write failures: %d x %s", n, msg)
	}
	if res != porcupine.Ok {
		path := t.TempDir() + "/linearizability.html"
		_ = porcupine.VisualizePath(registerModel, info, path)
		t.Fatalf("history is not linearizable (%s); visualization in %s", res, path)
	}
}

// linearizabilityCluster starts a three-node cluster with users
// prefix1..prefixN@example.org (passwords as seedUser sets them).
func linearizabilityCluster(t *testing.T, prefix string, n int) (*harness.Cluster, []string) {
	t.Helper()
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	var users []string
	for i := 1; i <= n; i++ {
		users = append(users, fmt.Sprintf("%s%d@example.org", prefix, i))
	}
	for _, u := range users {
		seedUser(t, leader, u)
	}
	return c, users
}

// linearizabilityFaults runs the phases of the linearizability tests while
// their workload runs: steady, the leader killed, back, the new leader cut
// off, healed.
func linearizabilityFaults(t *testing.T, c *harness.Cluster, start time.Time) {
	t.Helper()
	step := func(what string, d time.Duration) {
		t.Logf("%6.1fs %s", time.Since(start).Seconds(), what)
		time.Sleep(d) // let the workload run through this phase
	}
	step("steady", 2*time.Second)
	old := c.WaitLeader(30 * time.Second)
	old.Kill()
	step("leader "+old.ID+" killed", 3*time.Second)
	old.Start()
	next := c.WaitLeader(30 * time.Second)
	step("old leader back", 2*time.Second)
	c.Isolate(next)
	step("new leader "+next.ID+" isolated", 4*time.Second)
	c.HealAll()
	c.WaitLeader(30 * time.Second)
	step("healed", 2*time.Second)
}

func trimErr(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}
