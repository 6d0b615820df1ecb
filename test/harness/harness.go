// Package harness runs real Flotilla clusters for end-to-end tests, on one
// of two tiers behind the same Cluster and Node: separate processes, each
// on its own loopback address 127.A.B.n (fast), or containers of a FROM
// scratch image on a private Docker network (Options.Tier = Docker). Every
// node uses the standard test ports at its own address; faults (kill,
// stop, pause, restart, cut links both ways or one way, lossy, slow or
// throttled links, a wiped disk) work the same on both.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
)

// T is what the harness needs of a test: T, or a benchmark
// program's stand-in.
type T interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	TempDir() string
	Cleanup(func())
	Failed() bool
	Name() string
}

// Ports every node listens on, at its own address.
const (
	ClusterPort    = 7000
	GossipPort     = 7946
	HTTPPort       = 8080
	SMTPPort       = 2525
	SubmissionPort = 2587
	SMTPSPort      = 2465
	POP3Port       = 2110
	POP3SPort      = 2995
	IMAPPort       = 2143
	IMAPSPort      = 2993
	HTTPSPort      = 8443
)

// raceEnv: race-built processes must not sleep a second at exit (the race
// runtime's default), and must report but not stop at a race.
const raceEnv = "GORACE=halt_on_error=0 exitcode=66 atexit_sleep_ms=0"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary builds the flotilla binary once per test process (with -race when
// the tests run with it) and returns its path.
func Binary(t T) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("FLOTILLA_BIN"); p != "" {
			buildPath = p
			return
		}
		dir, err := os.MkdirTemp("", "flotilla-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "flotilla")
		buildErr = BuildTo(buildPath)
	})
	if buildErr != nil {
		t.Fatalf("build flotilla: %v", buildErr)
	}
	return buildPath
}

// BuildTo builds the flotilla binary to path with extra build tags.
func BuildTo(path string, tags ...string) error {
	args := []string{"build", "-o", path}
	if raceEnabled {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "-ldflags", "-X github.com/flotilla-mail/flotilla/cluster.BuildVersion=test"+strings.Join(tags, "+"))
	cmd := exec.Command("go", append(args, "github.com/flotilla-mail/flotilla/cmd/flotilla")...)
	cmd.Dir = moduleRoot()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// BuildRevision builds the flotilla binary of an earlier revision of this
// repository (a commit its git history holds) to path, for tests of a
// cluster that mixes releases. The revision's tree is exported with git
// archive, so the working copy is left alone.
func BuildRevision(path, rev string) error {
	dir, err := os.MkdirTemp("", "flotilla-rev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	archive := exec.Command("git", "-C", moduleRoot(), "archive", "--format=tar", rev)
	untar := exec.Command("tar", "-x", "-C", dir)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	untar.Stdin = pipe
	var errs strings.Builder
	archive.Stderr, untar.Stderr = &errs, &errs
	if err := untar.Start(); err != nil {
		return err
	}
	if err := archive.Run(); err != nil {
		_ = untar.Wait()
		return fmt.Errorf("git archive %s (this test needs the repository's history: a full clone): %v: %s", rev, err, errs.String())
	}
	if err := untar.Wait(); err != nil {
		return fmt.Errorf("unpack %s: %v: %s", rev, err, errs.String())
	}
	args := []string{"build", "-o", path}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "-ldflags", "-X github.com/flotilla-mail/flotilla/cluster.BuildVersion="+rev, "./cmd/flotilla")
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v: %s", rev, err, out)
	}
	return nil
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

// Command is exec.Command for the flotilla binary (or another program) with
// the environment test processes need.
func Command(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), raceEnv)
	return cmd
}

// Options shape a cluster.
type Options struct {
	Nodes int // default 3
	// Args are added to every node's command line.
	Args []string
	// DeadServerGrace, HeartbeatTimeout: passed when set.
	DeadServerGrace  string
	HeartbeatTimeout string
	// NoStart creates the nodes without starting them.
	NoStart bool
	// Bin is the binary the nodes run (default: this build).
	Bin string
	// Tier is where the nodes run: Processes (the default) or Docker.
	Tier Tier
	// LinkProxy runs every connection between two nodes' cluster ports
	// through a fault proxy, so that Slow and Throttle can act on it (the
	// nodes made by New; one added later talks directly).
	LinkProxy bool
}

// Tier says where a cluster's nodes run.
type Tier int

const (
	// Processes: each node a process on its own loopback address.
	Processes Tier = iota
	// Docker: each node a container on a private, internal Docker network.
	Docker
)

func (t Tier) String() string {
	if t == Docker {
		return "docker"
	}
	return "processes"
}

// Cluster is a running test cluster.
type Cluster struct {
	t         T
	Dir       string
	TLSDir    string
	GossipKey string
	Token     string
	opt       Options
	host      host
	links     *linkProxies // with Options.LinkProxy
	Nodes     []*Node
	mu        sync.Mutex
	cuts      []*cut
}

// Node is one flotilla process.
type Node struct {
	c       *Cluster
	ID      string
	IP      string
	DataDir string
	LogPath string
	// Args are this node's extra arguments; Bin overrides the binary.
	Args []string
	Bin  string
	// Expect is its --bootstrap-expect (0 for a node joining later).
	Expect int
	// TLSDir and GossipKey override the cluster's (for nodes of the wrong
	// cluster).
	TLSDir, GossipKey string

	mu   sync.Mutex
	done chan struct{} // open while it runs; nil before its first start
	// the process tier's process and log file
	cmd  *exec.Cmd
	logf *os.File
	// the container tier's container and the pid holding its network
	// namespace (which outlives the container's restarts)
	container string
	netnsPid  int
}

// New starts a cluster of opt.Nodes fresh nodes that bootstrap together.
func New(t T, opt Options) *Cluster {
	t.Helper()
	if opt.Nodes == 0 {
		opt.Nodes = 3
	}
	bin := Binary(t)
	c := &Cluster{t: t, Dir: t.TempDir(), opt: opt}
	c.TLSDir = filepath.Join(c.Dir, "tls")
	if opt.Tier == Docker {
		c.host = newDockerHost(t, c.Dir)
	} else {
		c.host = newProcessHost(t)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	c.GossipKey = base64.StdEncoding.EncodeToString(key)
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	c.Token = hex.EncodeToString(tok)
	var ids []string
	for i := 1; i <= opt.Nodes+4; i++ { // certificates for nodes added later too
		ids = append(ids, fmt.Sprintf("n%d", i))
	}
	if out, err := Command(bin, "cluster", "tls-init", "--out", c.TLSDir, "--nodes", strings.Join(ids, ",")).CombinedOutput(); err != nil {
		t.Fatalf("tls-init: %v: %s", err, out)
	}
	t.Cleanup(c.cleanup)
	for i := 0; i < opt.Nodes; i++ {
		c.newNode(opt.Nodes)
	}
	if opt.LinkProxy {
		c.links = newLinkProxies()
		for _, a := range c.Nodes {
			for _, b := range c.Nodes {
				if a == b {
					continue
				}
				addr, err := c.links.add(a, b, c.host.proxyIP())
				if err != nil {
					t.Fatal(err)
				}
				if err := c.host.redirect(a, b, addr); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if !opt.NoStart {
		for _, n := range c.Nodes {
			n.Start()
		}
	}
	return c
}

func (c *Cluster) newNode(expect int) *Node {
	i := len(c.Nodes) + 1
	n := &Node{c: c, ID: fmt.Sprintf("n%d", i), IP: c.host.ip(i), Expect: expect, Bin: c.opt.Bin}
	n.DataDir = filepath.Join(c.Dir, n.ID)
	n.LogPath = filepath.Join(c.Dir, n.ID+".log")
	c.Nodes = append(c.Nodes, n)
	return n
}

// AddNode creates a fresh node that joins the running cluster (not started).
func (c *Cluster) AddNode() *Node {
	return c.newNode(0)
}

// Node returns a node by ID.
func (c *Cluster) Node(id string) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	c.t.Fatalf("no node %s", id)
	return nil
}

// Addr is the node's address with a port.
func (n *Node) Addr(port int) string { return fmt.Sprintf("%s:%d", n.IP, port) }

func (n *Node) args() []string {
	c := n.c
	var join []string
	for _, o := range c.Nodes {
		if o != n && o.Expect > 0 {
			join = append(join, o.Addr(GossipPort))
		}
	}
	tlsDir, gossipKey := c.TLSDir, c.GossipKey
	if n.TLSDir != "" {
		tlsDir = n.TLSDir
	}
	if n.GossipKey != "" {
		gossipKey = n.GossipKey
	}
	args := []string{"serve",
		"--node-id", n.ID, "--data-dir", n.DataDir, "--bind", n.IP,
		"--join", strings.Join(join, ","),
		"--cluster-ca", filepath.Join(tlsDir, "ca.pem"),
		"--cluster-cert", filepath.Join(tlsDir, n.ID+".pem"),
		"--cluster-key", filepath.Join(tlsDir, n.ID+"-key.pem"),
		"--gossip-key", gossipKey, "--api-token", c.Token,
		"--cluster-port", fmt.Sprint(ClusterPort), "--gossip-port", fmt.Sprint(GossipPort),
		"--http-port", fmt.Sprint(HTTPPort), "--https-port", "0",
		"--smtp-port", fmt.Sprint(SMTPPort), "--submission-port", fmt.Sprint(SubmissionPort), "--smtps-port", fmt.Sprint(SMTPSPort),
		"--pop3-port", fmt.Sprint(POP3Port), "--pop3s-port", fmt.Sprint(POP3SPort),
		"--imap-port", fmt.Sprint(IMAPPort), "--imaps-port", fmt.Sprint(IMAPSPort),
		"--hostname", n.ID + ".flotilla.test",
	}
	if n.Expect > 0 {
		args = append(args, "--bootstrap-expect", fmt.Sprint(n.Expect))
	}
	if c.opt.DeadServerGrace != "" {
		args = append(args, "--dead-server-grace", c.opt.DeadServerGrace)
	}
	if c.opt.HeartbeatTimeout != "" {
		args = append(args, "--heartbeat-timeout", c.opt.HeartbeatTimeout)
	}
	args = append(args, c.opt.Args...)
	return append(args, n.Args...)
}

// ServeArgs is the node's `flotilla serve` command line, without "serve".
func (n *Node) ServeArgs() []string { return n.args()[1:] }

// Start starts the node (a restart keeps its data).
func (n *Node) Start() {
	n.c.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done != nil {
		n.c.t.Fatalf("%s already running", n.ID)
	}
	done, err := n.c.host.start(n)
	if err != nil {
		n.c.t.Fatalf("start %s: %v", n.ID, err)
	}
	n.done = done
}

// Running reports whether the node is up (a paused node is).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Pid is the node's process ID (the process tier only; 0 elsewhere or when
// it is not running).
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil || n.done == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Kill sends SIGKILL and waits for the node to end.
func (n *Node) Kill() { n.signal(syscall.SIGKILL, 10*time.Second) }

// Stop sends SIGTERM and waits for a clean exit; it fails the test if the
// node takes longer than timeout or exits with an error.
func (n *Node) Stop() { n.signal(syscall.SIGTERM, 30*time.Second) }

// Pause and Resume freeze and thaw the node (SIGSTOP and SIGCONT, or
// docker pause and unpause).
func (n *Node) Pause()  { n.freeze(true) }
func (n *Node) Resume() { n.freeze(false) }

func (n *Node) freeze(frozen bool) {
	n.c.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.done == nil {
		return
	}
	if err := n.c.host.freeze(n, frozen); err != nil {
		n.c.t.Errorf("%s: pause/resume: %v", n.ID, err)
	}
}

func (n *Node) signal(sig syscall.Signal, timeout time.Duration) {
	n.c.t.Helper()
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return
	}
	if err := n.c.host.signal(n, sig); err != nil {
		select {
		case <-done: // it had ended already
		default:
			n.c.t.Errorf("%s: %s: %v", n.ID, sig, err)
		}
	}
	select {
	case <-done:
	case <-time.After(timeout):
		_ = n.c.host.signal(n, syscall.SIGKILL)
		<-done
		n.c.t.Errorf("%s did not stop within %s of %s", n.ID, timeout, sig)
	}
	if sig == syscall.SIGTERM {
		if code := n.c.host.exitCode(n); code != 0 {
			n.c.t.Errorf("%s exited with code %d after SIGTERM", n.ID, code)
		}
	}
	n.mu.Lock()
	n.c.host.stopped(n)
	n.done = nil
	n.mu.Unlock()
}

// Wait waits for the node to exit by itself and returns its exit code.
func (n *Node) Wait(timeout time.Duration) (int, error) {
	n.mu.Lock()
	done := n.done
	n.mu.Unlock()
	if done == nil {
		return 0, errors.New("not running")
	}
	select {
	case <-done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("%s still running after %s", n.ID, timeout)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	code := n.c.host.exitCode(n)
	n.c.host.stopped(n)
	n.done = nil
	return code, nil
}

// Log returns the node's log so far.
func (n *Node) Log() string { return n.c.host.log(n) }

// WipeData removes the node's data dir (the node must be stopped): its
// disk is lost.
func (n *Node) WipeData() {
	if n.Running() {
		n.c.t.Fatalf("%s: wipe while running", n.ID)
	}
	if err := os.RemoveAll(n.DataDir); err != nil {
		n.c.t.Fatal(err)
	}
}

func (c *Cluster) cleanup() {
	for _, n := range c.Nodes {
		n.mu.Lock()
		done := n.done
		n.mu.Unlock()
		if done != nil {
			_ = c.host.freeze(n, false)
			_ = c.host.signal(n, syscall.SIGKILL)
			<-done
			n.mu.Lock()
			c.host.stopped(n)
			n.done = nil
			n.mu.Unlock()
		}
	}
	c.HealAll()
	if c.links != nil {
		c.links.close()
	}
	for _, n := range c.Nodes {
		log := n.Log()
		if strings.Contains(log, "WARNING: DATA RACE") {
			c.t.Errorf("%s: data race in the node process; see its log below", n.ID)
		}
		if strings.Contains(log, "panic:") {
			c.t.Errorf("%s: panic in the node process; see its log below", n.ID)
		}
	}
	if c.t.Failed() {
		if dir := os.Getenv("FLOTILLA_TEST_LOGS"); dir != "" {
			dst := filepath.Join(dir, strings.ReplaceAll(c.t.Name(), "/", "_"))
			_ = os.MkdirAll(dst, 0o755)
			for _, n := range c.Nodes {
				_ = os.WriteFile(filepath.Join(dst, n.ID+".log"), []byte(n.Log()), 0o644)
			}
		}
		for _, n := range c.Nodes {
			c.t.Logf("---- log of %s (%s) ----\n%s", n.ID, n.LogPath, tail(n.Log(), 120))
		}
	}
	c.host.close()
}

func tail(s string, lines int) string {
	all := strings.Split(s, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// CLI runs `flotilla args...` against node n through its control socket.
func (n *Node) CLI(args ...string) (stdout, stderr string, err error) {
	return n.CLIInput("", args...)
}

// CLIInput is CLI with standard input.
func (n *Node) CLIInput(stdin string, args ...string) (stdout, stderr string, err error) {
	bin := n.Bin
	if bin == "" {
		bin = Binary(n.c.t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "--data-dir", n.DataDir)...)
	cmd.Env = append(os.Environ(), raceEnv)
	var o, e bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// MustCLI is CLI that fails the test on error.
func (n *Node) MustCLI(args ...string) string {
	n.c.t.Helper()
	out, errOut, err := n.CLI(args...)
	if err != nil {
		n.c.t.Fatalf("%s: flotilla %s: %v\n%s%s", n.ID, strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// API calls the node's admin API over HTTP with the cluster's token.
func (n *Node) API(method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.Addr(HTTPPort)+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+n.c.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return &APIError{Status: res.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// Raw calls the admin API and returns the body as it is.
func (n *Node) Raw(method, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.Addr(HTTPPort)+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+n.c.Token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return nil, &APIError{Status: res.StatusCode, Body: strings.TrimSpace(string(b))}
	}
	return b, err
}

// APIError is a non-200 answer of the admin API.
type APIError struct {
	Status int
	Body   string
}

func (e *APIError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.Status, e.Body) }

// Status returns the cluster as node n sees it.
func (n *Node) Status() (cluster.Status, error) {
	var st cluster.Status
	err := n.API("GET", "/v1/cluster/status", nil, &st)
	return st, err
}

// Leader is the leader node n knows of, from its own view ("" if none).
func (n *Node) Leader() (string, error) {
	var out struct{ Leader string }
	err := n.API("GET", "/v1/cluster/leader", nil, &out)
	return out.Leader, err
}

// Eventually polls cond every 50ms until it holds or timeout passes.
func Eventually(t T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, timeout, err)
}

// WaitLeader waits until every running node agrees on one leader among the
// running nodes, and returns it.
func (c *Cluster) WaitLeader(timeout time.Duration) *Node {
	c.t.Helper()
	var leader *Node
	Eventually(c.t, timeout, "a leader all running nodes agree on", func() error {
		leader = nil
		seen := ""
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			st, err := n.Status()
			if err != nil {
				return fmt.Errorf("%s: %w", n.ID, err)
			}
			if st.Leader == "" {
				return fmt.Errorf("%s sees no leader", n.ID)
			}
			if seen != "" && st.Leader != seen {
				return fmt.Errorf("%s sees leader %s, others %s", n.ID, st.Leader, seen)
			}
			seen = st.Leader
		}
		for _, n := range c.Nodes {
			if n.ID == seen && n.Running() {
				leader = n
			}
		}
		if leader == nil {
			return fmt.Errorf("leader %q is not a running node", seen)
		}
		return nil
	})
	return leader
}

// WaitVoters waits until node n's view of the cluster has exactly these
// healthy voters.
func (c *Cluster) WaitVoters(n *Node, timeout time.Duration, ids ...string) {
	c.t.Helper()
	want := strings.Join(ids, ",")
	Eventually(c.t, timeout, "voters "+want, func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		var got []string
		for _, ns := range st.Nodes {
			if ns.Voter && ns.Healthy {
				got = append(got, ns.ID)
			}
		}
		if g := strings.Join(got, ","); g != want {
			return fmt.Errorf("healthy voters %s; status %+v", g, st.Nodes)
		}
		return nil
	})
}

// Followers returns the running nodes other than leader.
func (c *Cluster) Followers(leader *Node) []*Node {
	var out []*Node
	for _, n := range c.Nodes {
		if n != leader && n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Grep returns the lines of the node's log containing s.
func (n *Node) Grep(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(n.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			out = append(out, sc.Text())
		}
	}
	return out
}
