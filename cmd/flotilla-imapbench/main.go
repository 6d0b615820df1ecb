// Command flotilla-imapbench runs one IMAP load against Dovecot (Maildir,
// pre-started processes) and against Flotilla (one node, and a follower of
// a three-node cluster), with the same messages, and prints operations per
// second and p99 latency per command for each, with the ratios.
//
//	go run ./cmd/flotilla-imapbench [-sessions 8] [-messages 300] [-duration 5s] [-big 100000]
//
// IMAPBENCH_PROFILE=STORE:/tmp/store.cpu saves a CPU profile of each
// serving Flotilla node while that command runs (to /tmp/store.cpu.<target>).
//
// The dovecot-fsync target (in -only, not run by default) is a second
// Dovecot with mail_fsync = always: the durability Flotilla gives every
// write (the default, optimized, does not fsync a flag change). Each
// Flotilla target's ratio is given against every Dovecot run.
//
// It needs Debian's dovecot-imapd (dovecot on PATH) and runs as root (the
// Dovecot mail user is "mail"). Servers listen on loopback addresses only.
package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/test/harness"
)

var (
	sessions = flag.Int("sessions", 8, "concurrent sessions, one user each")
	messages = flag.Int("messages", 300, "messages in each user's INBOX")
	duration = flag.Duration("duration", 5*time.Second, "how long each command is run")
	big      = flag.Int("big", 100_000, "messages in the big mailbox (0: skip that test)")
	bigF     = flag.Bool("big-follower", false, "also load and measure the big mailbox on the three-node cluster (slow: every message is a replicated commit)")
	only     = flag.String("only", "", "run only these targets (comma-separated: dovecot,flotilla-1,flotilla-3f; dovecot-fsync only when named)")
	opsF     = flag.String("ops", "", "run only these commands (comma-separated, as in the report: STORE,FETCH body); EXPUNGE needs APPEND")
	verbose  = flag.Bool("v", false, "log progress")
)

const password = "bench-password-1"

// target is one server under test.
type target struct {
	name  string
	addr  string
	tls   bool // STARTTLS
	user  func(i int) string
	bigOK bool
	// profile, if set, saves a CPU profile of the serving node to path.
	profile func(path string, d time.Duration)
	// metrics, if set, prints every node's commit, log and apply histograms.
	metrics func()
}

func main() {
	flag.Parse()
	// The load generator shares two cores with the servers, and with a
	// header FETCH it is the busiest process (the client parses every
	// ENVELOPE): less garbage collection leaves the servers more CPU and
	// measures them rather than the client. Its heap stays small.
	debug.SetGCPercent(800)
	if path := os.Getenv("BENCH_SELF_PROFILE"); path != "" {
		// The load generator shares the cores with the servers it
		// measures; this shows what it costs.
		if f, err := os.Create(path); err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if *opsF != "" {
		var chosen []string
		for _, op := range ops {
			for _, w := range strings.Split(*opsF, ",") {
				if strings.EqualFold(strings.TrimSpace(w), op) {
					chosen = append(chosen, op)
					break
				}
			}
		}
		if len(chosen) == 0 {
			fmt.Fprintf(os.Stderr, "-ops %q names none of %s\n", *opsF, strings.Join(ops, ", "))
			os.Exit(2)
		}
		ops = chosen
	}
	r := &runner{name: "imapbench"}
	defer r.finish()
	named := func(n string) bool { return strings.Contains(","+*only+",", ","+n+",") }
	want := func(n string) bool { return *only == "" || named(n) }

	// Every target is started and seeded first; then each command runs on
	// each target in turn, so that the machine's slow and fast phases
	// (runs of one binary here differ by up to 2x) fall on all of them
	// alike and the ratios compare like with like.
	var targets []*target
	if want("dovecot") {
		targets = append(targets, startDovecot(r, "dovecot", 10143, "optimized"))
	}
	if named("dovecot-fsync") {
		targets = append(targets, startDovecot(r, "dovecot-fsync", 10144, "always"))
	}
	if want("flotilla-1") {
		targets = append(targets, startFlotilla(r, 1))
	}
	if want("flotilla-3f") {
		targets = append(targets, startFlotilla(r, 3))
	}
	var loads []*load
	for _, t := range targets {
		loads = append(loads, prepare(r, t))
	}
	for _, op := range ops {
		for _, l := range loads {
			l.run(r, op)
		}
	}
	var results []*result
	var bigResults []bigResult
	for _, l := range loads {
		l.close()
		results = append(results, l.res)
		if l.t.metrics != nil && os.Getenv("IMAPBENCH_METRICS") != "" {
			l.t.metrics()
		}
	}
	for _, t := range targets {
		if *big > 0 && t.name != "dovecot-fsync" && (t.name != "flotilla-3f" || *bigF) {
			bigResults = append(bigResults, runBig(r, t))
		}
	}
	report(results, bigResults)
}

// ---- load ----

var ops = []string{"SELECT", "FETCH headers", "FETCH body", "STORE", "SEARCH", "APPEND", "EXPUNGE"}

type stat struct {
	n    int
	lats []time.Duration
}

type result struct {
	target string
	ops    map[string]*stat
	wall   map[string]time.Duration
}

func dial(t *target, user string) (*imapclient.Client, error) {
	var c *imapclient.Client
	var err error
	if t.tls {
		c, err = imapclient.DialStartTLS(t.addr, &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}})
	} else {
		c, err = imapclient.DialInsecure(t.addr, nil)
	}
	if err != nil {
		return nil, err
	}
	if err := c.Login(user, password).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("login %s: %w", user, err)
	}
	return c, nil
}

func benchMessage(i int, user string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "Return-Path: <list-%d@lists.example.net>\r\nReceived: from mx.example.net (mx.example.net [192.0.2.7])\r\n\tby mail.example.org with ESMTPS id %08x\r\n\tfor <%s>; Wed, 1 May 2024 12:%02d:00 +0000\r\n", i%17, i*7919, user, i%60)
	fmt.Fprintf(&b, "From: Sender %d <sender%d@example.net>\r\nTo: %s\r\nSubject: Benchmark message number %d about topic %d\r\n", i, i%50, user, i, i%23)
	fmt.Fprintf(&b, "Date: Wed, 1 May 2024 12:%02d:%02d +0000\r\nMessage-ID: <bench-%d-%s>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", i%60, i%60, i, user)
	for l := 0; l < 30; l++ {
		fmt.Fprintf(&b, "Line %d of message %d: the quick brown fox jumps over the lazy dog, %d times.\r\n", l, i, l*i%97)
	}
	return []byte(b.String())
}

func appendMsg(c *imapclient.Client, mailbox string, msg []byte) (goimap.UID, error) {
	ac := c.Append(mailbox, int64(len(msg)), nil)
	if _, err := ac.Write(msg); err != nil {
		return 0, err
	}
	if err := ac.Close(); err != nil {
		return 0, err
	}
	d, err := ac.Wait()
	if err != nil {
		return 0, err
	}
	return d.UID, nil
}

// seed appends the same messages into every user's INBOX.
func seed(r *runner, t *target) {
	var wg sync.WaitGroup
	errs := make(chan error, *sessions)
	for s := 0; s < *sessions; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			u := t.user(s)
			c, err := dial(t, u)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for i := 1; i <= *messages; i++ {
				if _, err := appendMsg(c, "INBOX", benchMessage(i, u)); err != nil {
					errs <- err
					return
				}
			}
		}(s)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		r.Fatalf("%s: seeding: %v", t.name, err)
	}
}

// load is one target's sessions, logged in and INBOX selected, and what
// they measured.
type load struct {
	t        *target
	clients  []*imapclient.Client
	appended [][]goimap.UID
	res      *result
}

func prepare(r *runner, t *target) *load {
	r.Logf("%s: seeding %d users with %d messages", t.name, *sessions, *messages)
	seed(r, t)
	l := &load{t: t, res: &result{target: t.name, ops: map[string]*stat{}, wall: map[string]time.Duration{}},
		clients: make([]*imapclient.Client, *sessions), appended: make([][]goimap.UID, *sessions)}
	for s := range l.clients {
		c, err := dial(t, t.user(s))
		if err != nil {
			r.Fatalf("%s: %v", t.name, err)
		}
		if _, err := c.Select("INBOX", nil).Wait(); err != nil {
			r.Fatalf("%s: select: %v", t.name, err)
		}
		l.clients[s] = c
	}
	return l
}

func (l *load) close() {
	for _, c := range l.clients {
		c.Close()
	}
}

// run runs one command in every session for the -duration.
func (l *load) run(r *runner, op string) {
	t := l.t
	r.Logf("%s: %s for %v", t.name, op, *duration)
	var mu sync.Mutex
	st := &stat{}
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(*duration)
	var firstErr error
	if spec := os.Getenv("IMAPBENCH_PROFILE"); spec != "" && t.profile != nil {
		if want, path, ok := strings.Cut(spec, ":"); ok && strings.EqualFold(strings.ReplaceAll(want, "-", " "), op) {
			go t.profile(path, min(*duration, 5*time.Second))
		}
	}
	for s, c := range l.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(s), 42))
			var lats []time.Duration
			for i := 0; time.Now().Before(deadline); i++ {
				d, err := doOp(c, op, rng, t.user(s), &l.appended[s], i)
				if errors.Is(err, errNothing) {
					break
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%s %s: %w", t.name, op, err)
					}
					mu.Unlock()
					return
				}
				lats = append(lats, d)
			}
			mu.Lock()
			st.n += len(lats)
			st.lats = append(st.lats, lats...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		r.Fatalf("%v", firstErr)
	}
	l.res.ops[op] = st
	l.res.wall[op] = time.Since(start)
}

var errNothing = errors.New("nothing left to do")

// doOp runs one operation of the given kind and returns its latency.
func doOp(c *imapclient.Client, op string, rng *rand.Rand, user string, appended *[]goimap.UID, i int) (time.Duration, error) {
	n := uint32(*messages)
	var err error
	start := time.Now()
	switch op {
	case "SELECT":
		_, err = c.Select("INBOX", nil).Wait()
	case "FETCH headers":
		lo := 1 + rng.Uint32N(n-20)
		var set goimap.UIDSet
		set.AddRange(goimap.UID(lo), goimap.UID(lo+19))
		_, err = c.Fetch(set, &goimap.FetchOptions{UID: true, Flags: true, Envelope: true, RFC822Size: true,
			BodySection: []*goimap.FetchItemBodySection{{Specifier: goimap.PartSpecifierHeader, HeaderFields: []string{"From", "To", "Subject", "Date"}, Peek: true}}}).Collect()
	case "FETCH body":
		uid := goimap.UID(1 + rng.Uint32N(n))
		_, err = c.Fetch(goimap.UIDSetNum(uid), &goimap.FetchOptions{UID: true, BodySection: []*goimap.FetchItemBodySection{{Peek: true}}}).Collect()
	case "STORE":
		uid := goimap.UID(1 + rng.Uint32N(n))
		o := goimap.StoreFlagsAdd
		if i%2 == 1 {
			o = goimap.StoreFlagsDel
		}
		_, err = c.Store(goimap.UIDSetNum(uid), &goimap.StoreFlags{Op: o, Flags: []goimap.Flag{goimap.FlagFlagged}, Silent: true}, nil).Collect()
	case "SEARCH":
		crit := &goimap.SearchCriteria{Flag: []goimap.Flag{goimap.FlagFlagged}}
		if i%2 == 1 {
			crit = &goimap.SearchCriteria{Header: []goimap.SearchCriteriaHeaderField{{Key: "Subject", Value: fmt.Sprintf("topic %d", rng.IntN(23))}}}
		}
		_, err = c.UIDSearch(crit, nil).Wait()
	case "APPEND":
		var uid goimap.UID
		uid, err = appendMsg(c, "INBOX", benchMessage(10_000+i, user))
		*appended = append(*appended, uid)
	case "EXPUNGE":
		if len(*appended) == 0 {
			return 0, errNothing
		}
		uid := (*appended)[len(*appended)-1]
		*appended = (*appended)[:len(*appended)-1]
		if _, err := c.Store(goimap.UIDSetNum(uid), &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Flags: []goimap.Flag{goimap.FlagDeleted}, Silent: true}, nil).Collect(); err != nil {
			return 0, err
		}
		start = time.Now()
		_, err = c.UIDExpunge(goimap.UIDSetNum(uid)).Collect()
	}
	return time.Since(start), err
}

// ---- the big mailbox ----

type bigResult struct {
	target    string
	min, p50  time.Duration
	preparing time.Duration
}

const bigUser = "big"

func runBig(r *runner, t *target) bigResult {
	user := t.user(-1)
	start := time.Now()
	if t.name == "dovecot" {
		dovecotBig(r, user)
	} else {
		r.Logf("%s: appending %d messages to the big mailbox", t.name, *big)
		var wg sync.WaitGroup
		const writers = 32
		per := (*big + writers - 1) / writers
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				c, err := dial(t, user)
				if err != nil {
					r.Fatalf("%v", err)
				}
				defer c.Close()
				for i := w * per; i < min((w+1)*per, *big); i++ {
					if _, err := appendMsg(c, "INBOX", benchMessage(i+1, user)); err != nil {
						r.Fatalf("big append: %v", err)
					}
				}
			}(w)
		}
		wg.Wait()
	}
	prep := time.Since(start)
	// A first SELECT lets Dovecot build its index; it is not measured.
	c, err := dial(t, user)
	if err != nil {
		r.Fatalf("%v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		r.Fatalf("%s: big select: %v", t.name, err)
	}
	c.Close()
	var ds []time.Duration
	for i := 0; i < 15; i++ {
		c, err := dial(t, user)
		if err != nil {
			r.Fatalf("%v", err)
		}
		s := time.Now()
		sel, err := c.Select("INBOX", nil).Wait()
		if err != nil {
			r.Fatalf("%v", err)
		}
		if int(sel.NumMessages) != *big {
			r.Fatalf("%s: big mailbox has %d messages", t.name, sel.NumMessages)
		}
		var set goimap.SeqSet
		set.AddRange(sel.NumMessages-49, sel.NumMessages)
		msgs, err := c.Fetch(set, &goimap.FetchOptions{UID: true, Flags: true, Envelope: true, RFC822Size: true,
			BodySection: []*goimap.FetchItemBodySection{{Specifier: goimap.PartSpecifierHeader, HeaderFields: []string{"From", "To", "Subject", "Date"}, Peek: true}}}).Collect()
		d := time.Since(s)
		if err != nil || len(msgs) != 50 {
			r.Fatalf("%s: fetch newest 50: %d, %v", t.name, len(msgs), err)
		}
		c.Close()
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return bigResult{target: t.name, min: ds[0], p50: ds[len(ds)/2], preparing: prep}
}

// ---- servers ----

func startFlotilla(r *runner, nodes int) *target {
	r.Logf("starting a %d-node Flotilla cluster", nodes)
	c := harness.New(r, harness.Options{Nodes: nodes})
	leader := c.WaitLeader(60 * time.Second)
	if nodes > 1 {
		ids := []string{}
		for _, n := range c.Nodes {
			ids = append(ids, n.ID)
		}
		c.WaitVoters(leader, 60*time.Second, ids...)
	}
	if _, errOut, err := leader.CLI("domain", "add", "bench.test"); err != nil {
		r.Fatalf("domain add: %v %s", err, errOut)
	}
	users := []string{bigUser + "@bench.test"}
	for i := 0; i < *sessions; i++ {
		users = append(users, fmt.Sprintf("u%d@bench.test", i))
	}
	for _, u := range users {
		if out, errOut, err := leader.CLIInput(password+"\n", "user", "add", u, "--password-stdin"); err != nil {
			r.Fatalf("user add: %v %s %s", err, out, errOut)
		}
	}
	serve := leader
	name := "flotilla-1"
	if nodes > 1 {
		serve = c.Followers(leader)[0]
		name = "flotilla-3f"
	}
	t := &target{name: name, addr: serve.Addr(harness.IMAPPort), tls: false, user: func(i int) string {
		if i < 0 {
			return bigUser + "@bench.test"
		}
		return fmt.Sprintf("u%d@bench.test", i)
	}}
	t.metrics = func() {
		for _, n := range c.Nodes {
			raw, err := n.Raw("GET", "/metrics")
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(raw), "\n") {
				if strings.HasPrefix(line, "flotilla_") && (strings.Contains(line, "_sum ") || strings.Contains(line, "_count ") || strings.Contains(line, "_total ")) {
					fmt.Fprintln(os.Stderr, n.ID, line)
				}
			}
		}
	}
	// profile saves the serving node's CPU profile to path.<target>; with
	// IMAPBENCH_PROFILE_ALL set, every node's too, to path.<target>.<node>.
	t.profile = func(path string, d time.Duration) {
		var wg sync.WaitGroup
		for _, n := range c.Nodes {
			out := path + "." + name
			if n != serve {
				if os.Getenv("IMAPBENCH_PROFILE_ALL") == "" {
					continue
				}
				out += "." + n.ID
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, _ := http.NewRequest("GET", fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", n.Addr(harness.HTTPPort), max(1, int(d.Seconds()))), nil)
				req.Header.Set("Authorization", "Bearer "+c.Token)
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					r.Logf("profile: %v", err)
					return
				}
				defer res.Body.Close()
				b, _ := io.ReadAll(res.Body)
				if err := os.WriteFile(out, b, 0o644); err != nil {
					r.Logf("profile: %v", err)
				}
			}()
		}
		wg.Wait()
	}
	// The users are there on the serving node once a login works.
	harness.Eventually(r, 30*time.Second, "login on "+serve.ID, func() error {
		for _, u := range users {
			c, err := dial(t, u)
			if err != nil {
				return err
			}
			c.Close()
		}
		return nil
	})
	return t
}

// startDovecot starts a Dovecot named name on port with the given
// mail_fsync setting (optimized is Debian's default).
func startDovecot(r *runner, name string, port int, fsync string) *target {
	bin, err := exec.LookPath("dovecot")
	if err != nil {
		r.Fatalf("dovecot is not installed (apt-get install dovecot-imapd)")
	}
	dir := r.TempDir()
	home := filepath.Join(dir, "home")
	for _, d := range []string{home, filepath.Join(dir, "run"), filepath.Join(dir, "state")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			r.Fatal(err)
		}
	}
	mailUser, err := user.Lookup("mail")
	if err != nil {
		r.Fatalf("no user mail: %v", err)
	}
	uid, _ := strconv.Atoi(mailUser.Uid)
	gid, _ := strconv.Atoi(mailUser.Gid)
	if err := os.Chown(home, uid, gid); err != nil {
		r.Fatal(err)
	}
	conf := filepath.Join(dir, "dovecot.conf")
	cfg := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
info_log_path = /dev/null
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:~/Maildir
mail_fsync = %[6]s
passdb {
  driver = static
  args = password=%[2]s
}
userdb {
  driver = static
  args = uid=mail gid=mail home=%[3]s/%%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = %[4]d
  }
  inet_listener imaps {
    port = 0
  }
  process_min_avail = 4
}
service imap {
  process_min_avail = %[5]d
}
`, dir, password, home, port, *sessions+2, fsync)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		r.Fatal(err)
	}
	cmd := exec.Command(bin, "-F", "-c", conf)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		r.Fatalf("%s: %v", name, err)
	}
	r.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	t := &target{name: name, addr: fmt.Sprintf("127.0.0.1:%d", port), user: func(i int) string {
		if i < 0 {
			return bigUser
		}
		return fmt.Sprintf("u%d", i)
	}}
	harness.Eventually(r, 20*time.Second, name+" answers", func() error {
		c, err := dial(t, t.user(0))
		if err != nil {
			return err
		}
		return c.Close()
	})
	if name == "dovecot" { // the big mailbox is written for this one
		r.home, r.mailUID, r.mailGID = home, uid, gid
	}
	return t
}

// dovecotBig writes the big mailbox as Maildir files, as if delivered.
func dovecotBig(r *runner, user string) {
	md := filepath.Join(r.home, user, "Maildir")
	for _, d := range []string{"cur", "new", "tmp"} {
		if err := os.MkdirAll(filepath.Join(md, d), 0o700); err != nil {
			r.Fatal(err)
		}
	}
	for i := 1; i <= *big; i++ {
		name := filepath.Join(md, "new", fmt.Sprintf("%d.M%dP1.bench", 1700000000+i, i))
		if err := os.WriteFile(name, benchMessage(i, user), 0o600); err != nil {
			r.Fatal(err)
		}
		_ = os.Chown(name, r.mailUID, r.mailGID)
	}
	_ = filepath.Walk(filepath.Join(r.home, user), func(p string, _ os.FileInfo, _ error) error {
		return os.Chown(p, r.mailUID, r.mailGID)
	})
}

// ---- report ----

func pct(lats []time.Duration, p float64) time.Duration {
	if len(lats) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), lats...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func rate(res *result, op string) float64 {
	st := res.ops[op]
	if st == nil || res.wall[op] == 0 {
		return 0
	}
	return float64(st.n) / res.wall[op].Seconds()
}

func report(results []*result, bigs []bigResult) {
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "\nIMAP load: %d sessions (one user each), %d messages per INBOX, %v per command\n\n", *sessions, *messages, *duration)
	fmt.Fprintf(w, "%-14s", "command")
	for _, r := range results {
		label := r.target + " ops/s  p50  p99"
		if len(label) > 28 {
			label = r.target + " ops/s p50 p99"
		}
		fmt.Fprintf(w, " | %-28s", label)
	}
	// Every Flotilla target is compared with each Dovecot present, and
	// dovecot-fsync with the default Dovecot.
	type pair struct{ r, base *result }
	var pairs []pair
	for _, b := range results {
		if !strings.HasPrefix(b.target, "dovecot") {
			continue
		}
		for _, r := range results {
			if r != b && (!strings.HasPrefix(r.target, "dovecot") || b.target == "dovecot") {
				pairs = append(pairs, pair{r, b})
			}
		}
	}
	for _, p := range pairs {
		name := p.r.target + "/" + p.base.target
		fmt.Fprintf(w, " | %-*s", max(10, len(name)), name)
	}
	fmt.Fprintln(w)
	for _, op := range ops {
		fmt.Fprintf(w, "%-14s", op)
		for _, r := range results {
			st := r.ops[op]
			fmt.Fprintf(w, " | %8.0f %8s %8s  ", rate(r, op), round(pct(st.lats, 0.5)), round(pct(st.lats, 0.99)))
		}
		for _, p := range pairs {
			name := p.r.target + "/" + p.base.target
			fmt.Fprintf(w, " | %*.2fx", max(9, len(name)-1), rate(p.r, op)/rate(p.base, op))
		}
		fmt.Fprintln(w)
	}
	if len(bigs) > 0 {
		fmt.Fprintf(w, "\nNew session, SELECT + FETCH headers of the newest 50 in a %d-message mailbox (15 runs):\n", *big)
		for _, b := range bigs {
			fmt.Fprintf(w, "  %-12s min %8s  median %8s   (loading the mailbox took %s)\n", b.target, round(b.min), round(b.p50), b.preparing.Round(time.Second))
		}
	}
}

func round(d time.Duration) string {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}

// ---- runner: testing.T for the harness ----

type runner struct {
	name     string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	dirs     []string
	home     string
	mailUID  int
	mailGID  int
}

func (r *runner) Helper()                   {}
func (r *runner) Name() string              { return r.name }
func (r *runner) Failed() bool              { return r.failed }
func (r *runner) Errorf(f string, a ...any) { r.failed = true; r.Logf(f, a...) }
func (r *runner) Fatal(a ...any)            { r.Fatalf("%s", fmt.Sprint(a...)) }
func (r *runner) Fatalf(f string, a ...any) {
	r.failed = true
	fmt.Fprintf(os.Stderr, "FATAL: "+f+"\n", a...)
	r.finish()
	os.Exit(1)
}
func (r *runner) Logf(f string, a ...any) {
	if *verbose || r.failed {
		fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+f+"\n", a...)
	}
}
func (r *runner) Cleanup(f func()) { r.mu.Lock(); r.cleanups = append(r.cleanups, f); r.mu.Unlock() }
func (r *runner) TempDir() string {
	d, err := os.MkdirTemp("", "imapbench-")
	if err != nil {
		panic(err)
	}
	_ = os.Chmod(d, 0o755)
	r.mu.Lock()
	r.dirs = append(r.dirs, d)
	r.mu.Unlock()
	return d
}

func (r *runner) finish() {
	r.mu.Lock()
	cs := r.cleanups
	r.cleanups = nil
	dirs := r.dirs
	r.dirs = nil
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
	for _, d := range dirs {
		_ = os.RemoveAll(d)
	}
}
