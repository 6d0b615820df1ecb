// Command flotilla-bench measures a real Flotilla cluster of processes on
// this machine: commit throughput and latency of message-sized writes, and
// the cost of a snapshot of a store full of mail. `make bench` runs it.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/test/harness"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: flotilla-bench commit|snapshot|smtp [flags]")
		os.Exit(2)
	}
	t := harness.NewRunner()
	defer t.Finish()
	if path := os.Getenv("BENCH_SELF_PROFILE"); path != "" {
		// The load generator shares the machine's cores with the nodes it
		// measures; this shows what it costs.
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	switch os.Args[1] {
	case "commit":
		fs := flag.NewFlagSet("commit", flag.ExitOnError)
		nodes := fs.Int("nodes", 3, "cluster size")
		writers := fs.Int("writers", 20, "concurrent writers")
		count := fs.Int("messages", 10000, "messages to write")
		size := fs.Int("size", 5120, "message size in bytes")
		profile := fs.String("profile", "", "write a 5-second CPU profile of the leader during the run to this file (an allocation profile if it ends in .allocs)")
		_ = fs.Parse(os.Args[2:])
		commit(t, *nodes, *writers, *count, *size, *profile)
	case "smtp":
		fs := flag.NewFlagSet("smtp", flag.ExitOnError)
		sessions := fs.Int("sessions", 20, "concurrent SMTP sessions")
		count := fs.Int("messages", 10000, "messages to send")
		size := fs.Int("size", 5120, "message size in bytes")
		only := fs.String("only", "", "run one of: postfix, 1, 3 (default: all, side by side)")
		_ = fs.Parse(os.Args[2:])
		smtpIngest(t, *sessions, *count, *size, *only)
	case "snapshot":
		fs := flag.NewFlagSet("snapshot", flag.ExitOnError)
		total := fs.Int64("bytes", 1<<30, "message bytes to store before the snapshot")
		size := fs.Int("size", 5120, "message size in bytes")
		_ = fs.Parse(os.Args[2:])
		snapshot(t, *total, *size)
	default:
		fmt.Fprintln(os.Stderr, "unknown benchmark", os.Args[1])
		os.Exit(2)
	}
}

var words = strings.Fields(`the cluster keeps every message on a majority of nodes before it answers
mail server replicated state machine leader follower snapshot log entry commit apply quorum
meeting tomorrow please find attached report budget review quarter customer project update
thanks regards schedule invoice delivery status question answer following previous week`)

// message makes a unique message of about size bytes of mail-like text.
func message(rng *rand.Rand, id, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: bench@example.org\r\nTo: user@example.org\r\nSubject: benchmark %d\r\nMessage-ID: <%d.%d@bench>\r\n\r\n", id, id, rng.Uint64())
	line := 0
	for b.Len() < size-2 {
		w := words[rng.IntN(len(words))]
		b.WriteString(w)
		line += len(w) + 1
		if line > 70 {
			b.WriteString("\r\n")
			line = 0
		} else {
			b.WriteByte(' ')
		}
	}
	b.WriteString("\r\n")
	return b.Bytes()
}

// importer posts messages to the admin API, as fast as the cluster commits.
type importer struct {
	client *http.Client
	token  string
}

func (im *importer) post(node *harness.Node, user string, body []byte) error {
	req, _ := http.NewRequest("POST", "http://"+node.Addr(harness.HTTPPort)+"/v1/users/"+user+"/messages?wait=commit", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+im.token)
	res, err := im.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		return fmt.Errorf("%s: %s", res.Status, b)
	}
	return nil
}

// load writes count messages with the given concurrency, spread over the
// nodes, and returns the latency of each write.
func load(c *harness.Cluster, user string, writers, count, size int) ([]time.Duration, time.Duration) {
	im := &importer{client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: writers}}, token: c.Token}
	lat := make([]time.Duration, count)
	// Bodies are made before the clock starts, when they fit in memory: the
	// load generator shares the cores with the nodes it measures.
	var bodies [][]byte
	if int64(count)*int64(size) <= 256<<20 {
		rng := rand.New(rand.NewPCG(uint64(count), 42))
		bodies = make([][]byte, count)
		for i := range bodies {
			bodies[i] = message(rng, i, size)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			node := c.Nodes[w%len(c.Nodes)]
			for {
				i := int(next.Add(1)) - 1
				if i >= count {
					return
				}
				var body []byte
				if bodies != nil {
					body = bodies[i]
				} else {
					body = message(rng, i, size)
				}
				t0 := time.Now()
				if err := im.post(node, user, body); err != nil {
					fmt.Fprintln(os.Stderr, "write failed:", err)
					os.Exit(1)
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	return lat, time.Since(start)
}

func pct(lat []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), lat...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p)]
}

func setup(t *harness.Runner, nodes int, args ...string) *harness.Cluster {
	c := harness.New(t, harness.Options{Nodes: nodes, Args: args})
	leader := c.WaitLeader(60 * time.Second)
	ids := make([]string, nodes)
	for i := range ids {
		ids[i] = fmt.Sprintf("n%d", i+1)
	}
	c.WaitVoters(leader, 60*time.Second, ids...)
	leader.MustCLI("domain", "add", "example.org")
	if _, errOut, err := leader.CLIInput("bench-password\n", "user", "add", "user@example.org", "--password-stdin"); err != nil {
		t.Fatalf("user add: %v %s", err, errOut)
	}
	// Every node must know the user before load starts: SMTP on a follower
	// that has not applied the user yet would refuse the recipient.
	for _, n := range c.Nodes {
		harness.Eventually(t, 30*time.Second, n.ID+" knows the user", func() error {
			return n.API("GET", "/v1/users/user@example.org?stale=1", nil, nil)
		})
	}
	return c
}

func commit(t *harness.Runner, nodes, writers, count, size int, profile string) {
	c := setup(t, nodes)
	// A short warm-up, then the measured run.
	load(c, "user@example.org", writers, min(500, count/10), size)
	if profile != "" {
		leader := c.WaitLeader(time.Minute)
		go fetchProfile(c, leader, profile)
		if os.Getenv("BENCH_PROFILE_ALL") != "" { // and each other node, to path.<id>
			for _, n := range c.Nodes {
				if n != leader {
					go fetchProfile(c, n, profile+"."+n.ID)
				}
			}
		}
	}
	lat, took := load(c, "user@example.org", writers, count, size)
	if os.Getenv("BENCH_METRICS") != "" {
		dumpMetrics(c)
	}
	fmt.Printf("commit  %d node(s), %d writers, %d x %d B messages (acknowledged once fsynced on a majority): %.0f commits/s, p50 %.1f ms, p99 %.1f ms\n",
		nodes, writers, count, size, float64(count)/took.Seconds(), ms(pct(lat, 0.5)), ms(pct(lat, 0.99)))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func snapshot(t *harness.Runner, total int64, size int) {
	c := setup(t, 1, "--snapshot-threshold", "100000000", "--snapshot-interval", "1h")
	n := c.Nodes[0]
	count := int(total / int64(size))
	start := time.Now()
	load(c, "user@example.org", 20, count, size)
	fill := time.Since(start)
	out := n.MustCLI("cluster", "snapshot", "--json")
	var rep cluster.SnapshotReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("snapshot report %q: %v", out, err)
	}
	stored := dirSize(n.DataDir + "/state.db")
	fmt.Printf("snapshot of a store holding %.2f GiB of message bodies (%d messages of %d B, filled in %s; state file %.0f MiB): %.2f s, %.1f MiB = %.2f%% of the mail\n",
		float64(int64(count)*int64(size))/(1<<30), count, size, fill.Round(time.Second), float64(stored)/(1<<20),
		rep.Duration.Seconds(), float64(rep.Bytes)/(1<<20), 100*float64(rep.Bytes)/float64(int64(count)*int64(size)))
}

func dirSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// fetchProfile saves a 5-second CPU or allocation profile of a node.
func fetchProfile(c *harness.Cluster, n *harness.Node, path string) {
	kind := "profile"
	if strings.HasSuffix(path, ".allocs") {
		kind = "allocs"
	}
	req, _ := http.NewRequest("GET", "http://"+n.Addr(harness.HTTPPort)+"/debug/pprof/"+kind+"?seconds=5", nil)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, "profile:", err)
		return
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	_ = os.WriteFile(path, b, 0o644)
}

// dumpMetrics prints every node's FSM, log and commit histograms (sums and
// counts) and its Raft state (2 is the leader), each line led by its ID.
func dumpMetrics(c *harness.Cluster) {
	for _, n := range c.Nodes {
		res, err := http.Get("http://" + n.Addr(harness.HTTPPort) + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "flotilla_raft_state") ||
				(strings.HasPrefix(line, "flotilla_fsm") || strings.HasPrefix(line, "flotilla_raft_commit_seconds") || strings.HasPrefix(line, "flotilla_raft_log")) &&
					(strings.Contains(line, "_sum") || strings.Contains(line, "_count")) {
				fmt.Fprintln(os.Stderr, n.ID, line)
			}
		}
	}
}
