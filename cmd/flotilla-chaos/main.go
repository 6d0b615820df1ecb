// Command flotilla-chaos is the long soak of `make chaos`: a cluster of
// processes (or, with --tier docker, of containers) under SMTP load while
// random faults strike it for a set time;
// at the end every message answered 250 must be on every node exactly once.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
	"github.com/flotilla-mail/flotilla/test/workload"
)

func main() {
	duration := flag.Duration("duration", 10*time.Minute, "how long to inject faults")
	nodes := flag.Int("nodes", 5, "cluster size (3 or 5)")
	senders := flag.Int("senders", 8, "concurrent SMTP senders")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (printed, to replay a run)")
	tierName := flag.String("tier", "processes", "where the nodes run: processes (loopback) or docker (containers)")
	flag.Parse()
	tier := harness.Processes
	switch *tierName {
	case "processes":
	case "docker":
		tier = harness.Docker
	default:
		fmt.Fprintf(os.Stderr, "flotilla-chaos: --tier must be processes or docker, not %q\n", *tierName)
		os.Exit(2)
	}
	t := harness.NewRunner()
	defer t.Finish()
	rng := rand.New(rand.NewPCG(*seed, 1))
	fmt.Printf("chaos: %d nodes (%s), %d senders, %s, seed %d\n", *nodes, tier, *senders, *duration, *seed)

	c := harness.New(t, harness.Options{Nodes: *nodes, DeadServerGrace: "1h", Tier: tier, LinkProxy: true})
	ids := make([]string, *nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%d", i+1)
	}
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, ids...)
	users := []string{"u1@example.org", "u2@example.org", "u3@example.org", "u4@example.org"}
	leader.MustCLI("domain", "add", "example.org")
	for _, u := range users {
		if _, errOut, err := leader.CLIInput("pw\n", "user", "add", u, "--password-stdin"); err != nil {
			t.Fatalf("user add: %v %s", err, errOut)
		}
	}
	w := workload.StartMail(c, users, *senders)
	start := time.Now()
	counts := map[string]int{}
	for time.Since(start) < *duration {
		name := inject(t, c, rng)
		counts[name]++
		fmt.Printf("%7.1fs %-22s acked so far %d\n", time.Since(start).Seconds(), name, len(w.Snapshot()))
		time.Sleep(time.Duration(2+rng.IntN(6)) * time.Second)
		heal(c)
		c.WaitVoters(c.WaitLeader(60*time.Second), 120*time.Second, ids...)
		time.Sleep(time.Duration(2+rng.IntN(5)) * time.Second)
	}
	stopped := time.Now() // the window is measured while mail was offered
	acks := w.Stop()
	heal(c)
	leader = c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 120*time.Second, ids...)
	out, errOut, err := leader.CLI("cluster", "verify")
	if err != nil {
		t.Fatalf("cluster verify: %v\n%s%s", err, out, errOut)
	}
	res := workload.Check(c, users, acks, w.Unknown)
	var faults []string
	for k, v := range counts {
		faults = append(faults, fmt.Sprintf("%s x%d", k, v))
	}
	gap, at := workload.MaxGapAt(acks, start, stopped)
	fmt.Printf("chaos summary: %s of faults (%s); acked %d, lost %d, duplicated %d, refused attempts %d, longest no-accept window %s (from %.1fs); cluster verify clean\n",
		duration.String(), strings.Join(faults, ", "), res.Acked, res.Lost, res.Duplicated, w.Refused(),
		gap.Round(time.Millisecond), at.Sub(start).Seconds())
	for _, p := range res.Problems {
		fmt.Println("problem:", p)
	}
	if res.Lost != 0 || res.Duplicated != 0 || len(res.Problems) > 0 {
		t.Finish()
		os.Exit(1)
	}
}

// inject applies one random fault and names it.
func inject(t *harness.Runner, c *harness.Cluster, rng *rand.Rand) string {
	leader := c.WaitLeader(60 * time.Second)
	followers := c.Followers(leader)
	f := followers[rng.IntN(len(followers))]
	switch rng.IntN(10) {
	case 0:
		leader.Kill()
		return "kill leader"
	case 1:
		f.Kill()
		return "kill follower"
	case 2:
		c.Isolate(leader)
		return "isolate leader"
	case 3:
		c.Isolate(f)
		return "isolate follower"
	case 4:
		leader.Pause()
		return "pause leader"
	case 5:
		for _, n := range c.Nodes {
			n.Kill()
		}
		return "kill all"
	case 6:
		f.Kill()
		f.WipeData()
		return "replace follower"
	case 7:
		for _, p := range c.Pairs() {
			c.Slow(p[0], p[1], 40+rng.IntN(60), 20)
		}
		return "slow links"
	case 8:
		for _, p := range c.Pairs() {
			c.Flaky(p[0], p[1], 0.2)
		}
		return "lossy links"
	default:
		if len(c.Nodes) >= 5 {
			c.Split(c.Nodes[:2], c.Nodes[2:])
			return "split 2|3"
		}
		c.CutOneWay(leader, f)
		return "one-way cut"
	}
}

// heal undoes every fault: links back, paused nodes resumed, dead started.
func heal(c *harness.Cluster) {
	c.HealAll()
	for _, n := range c.Nodes {
		if n.Running() {
			n.Resume()
		} else {
			n.Start()
		}
	}
}
