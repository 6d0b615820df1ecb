package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/storage"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// exitCode is the exit code of a finished command (0 for success, -1 when
// it did not run to an exit).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// cliTable parses the table a list command prints: the header's first
// column must be header, and every row comes back keyed by its first cell
// with the other cells (columns are at least two spaces apart).
func cliTable(out, header string) (map[string][]string, error) {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], header+" ") {
		return nil, fmt.Errorf("no %s header in %q", header, out)
	}
	sep := regexp.MustCompile(`\s{2,}`)
	rows := map[string][]string{}
	for _, l := range lines[1:] {
		cells := sep.Split(strings.TrimSpace(l), -1)
		rows[cells[0]] = cells[1:]
	}
	return rows, nil
}

// waitListed runs a list command on node n until check accepts its table.
func waitListed(t *testing.T, n *harness.Node, header string, check func(map[string][]string) error, args ...string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, n.ID+": flotilla "+strings.Join(args, " "), func() error {
		out, errOut, err := n.CLI(args...)
		if err != nil {
			return fmt.Errorf("%v: %s", err, errOut)
		}
		rows, err := cliTable(out, header)
		if err != nil {
			return err
		}
		if err := check(rows); err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		return nil
	})
}

// exactly accepts a table whose first column is exactly keys, in any order.
func exactly(keys ...string) func(map[string][]string) error {
	return func(rows map[string][]string) error {
		if len(rows) != len(keys) {
			return fmt.Errorf("%d rows, want %v", len(rows), keys)
		}
		for _, k := range keys {
			if _, ok := rows[k]; !ok {
				return fmt.Errorf("no row %s, want %v", k, keys)
			}
		}
		return nil
	}
}

// mustCLIOut runs a CLI command through node n that must succeed, print
// exactly want and nothing on stderr.
func mustCLIOut(t *testing.T, n *harness.Node, stdin, want string, args ...string) {
	t.Helper()
	out, errOut, err := n.CLIInput(stdin, args...)
	if err != nil || out != want || errOut != "" {
		t.Fatalf("%s: flotilla %s: %v\nstdout %q, want %q\nstderr %q", n.ID, strings.Join(args, " "), err, out, want, errOut)
	}
}

// submissionAuth logs in on an SMTP submission port (STARTTLS, AUTH PLAIN).
// A refused login comes back as a *textproto.Error with code 535.
func submissionAuth(addr, user, pw string) error {
	host, _, _ := net.SplitHostPort(addr)
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return err
	}
	if err := c.Hello("cli.test"); err != nil {
		return err
	}
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		return err
	}
	if err := c.Auth(smtp.PlainAuth("", user, pw, host)); err != nil {
		return err
	}
	return c.Quit()
}

// authRefused is nil when the login was refused as bad credentials.
func authRefused(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code == 535 {
		return nil
	}
	if err == nil {
		return errors.New("login accepted")
	}
	return fmt.Errorf("not a 535 refusal: %w", err)
}

// TestCLIDirectoryCommands drives domain, user and alias administration
// through the CLI of different nodes of a three-node cluster, as an
// operator would, including the mistakes an operator makes.
func TestCLIDirectoryCommands(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]

	// Domains: added through two nodes, listed on the third.
	mustCLIOut(t, n1, "", "domain example.org added\n", "domain", "add", "example.org")
	// The name as stored, lower case, whatever the case typed.
	mustCLIOut(t, n3, "", "domain other.test added\n", "domain", "add", "Other.TEST")
	waitListed(t, n2, "DOMAIN", func(rows map[string][]string) error {
		if err := exactly("example.org", "other.test")(rows); err != nil {
			return err
		}
		for d, cells := range rows {
			if len(cells) != 1 {
				return fmt.Errorf("%s: cells %q", d, cells)
			}
			if ts, err := time.Parse(time.RFC3339, cells[0]); err != nil || time.Since(ts) > time.Hour || time.Until(ts) > time.Hour {
				return fmt.Errorf("%s created %q (%v)", d, cells[0], err)
			}
		}
		return nil
	}, "domain", "list")

	// Users, with a name and a quota, listed on another node.
	const alice, bob = "alice@example.org", "bob@example.org"
	const pw1, pw2 = "first secret", "second secret"
	mustCLIOut(t, n2, pw1+"\n", "user "+alice+" added\n", "user", "add", alice, "--password-stdin", "--name", "Alice", "--quota", "1000000")
	mustCLIOut(t, n3, "pw-bob\r\n", "user "+bob+" added\n", "user", "add", "bob@EXAMPLE.org", "--name", "Bob", "--password-stdin")
	waitListed(t, n1, "ADDRESS", func(rows map[string][]string) error {
		if err := exactly(alice, bob)(rows); err != nil {
			return err
		}
		if got := strings.Join(rows[alice], "|"); got != "Alice|0|1000000" {
			return fmt.Errorf("alice: %s", got)
		}
		if got := strings.Join(rows[bob], "|"); got != "Bob|0|-" {
			return fmt.Errorf("bob: %s", got)
		}
		return nil
	}, "user", "list")
	waitListed(t, n1, "ADDRESS", exactly(), "user", "list", "--domain", "other.test")

	// The password: the first one logs in on another node, then after
	// `user passwd` only the new one does, at once on the node that changed
	// it and soon on the others.
	harness.Eventually(t, 30*time.Second, "alice logs in on n1 with her first password", func() error {
		return submissionAuth(n1.Addr(harness.SubmissionPort), alice, pw1)
	})
	if err := authRefused(submissionAuth(n1.Addr(harness.SubmissionPort), alice, pw2)); err != nil {
		t.Fatalf("alice with a password she does not have yet: %v", err)
	}
	mustCLIOut(t, n3, pw2+"\n", "user "+alice+" password changed\n", "user", "passwd", alice, "--password-stdin")
	if err := submissionAuth(n3.Addr(harness.SubmissionPort), alice, pw2); err != nil {
		t.Fatalf("new password on n3, which changed it: %v", err)
	}
	if err := authRefused(submissionAuth(n3.Addr(harness.SubmissionPort), alice, pw1)); err != nil {
		t.Fatalf("old password on n3 after passwd: %v", err)
	}
	harness.Eventually(t, 30*time.Second, "n1 takes only the new password", func() error {
		if err := authRefused(submissionAuth(n1.Addr(harness.SubmissionPort), alice, pw1)); err != nil {
			return fmt.Errorf("old password: %w", err)
		}
		return submissionAuth(n1.Addr(harness.SubmissionPort), alice, pw2)
	})
	if err := submissionAuth(n2.Addr(harness.SubmissionPort), bob, "pw-bob"); err != nil {
		t.Fatalf("bob (password read up to CRLF) on n2: %v", err)
	}

	// Aliases: one to many (local and remote targets, comma-separated and
	// as separate arguments), and a catch-all.
	mustCLIOut(t, n1, "", "alias team@example.org -> alice@example.org, bob@example.org, far@remote.test\n",
		"alias", "add", "Team@Example.ORG", "alice@example.org,BOB@example.org", "far@remote.test")
	mustCLIOut(t, n2, "", "alias @example.org -> alice@example.org\n", "alias", "add", "@example.org", alice)
	waitListed(t, n3, "ALIAS", func(rows map[string][]string) error {
		if err := exactly("team@example.org", "@example.org")(rows); err != nil {
			return err
		}
		if got := strings.Join(rows["team@example.org"], "|"); got != "alice@example.org, bob@example.org, far@remote.test" {
			return fmt.Errorf("team: %s", got)
		}
		if got := strings.Join(rows["@example.org"], "|"); got != alice {
			return fmt.Errorf("catch-all: %s", got)
		}
		return nil
	}, "alias", "list")
	waitListed(t, n3, "ALIAS", exactly(), "alias", "list", "--domain", "other.test")

	// Mistakes: each fails with its exit code, says what is wrong on
	// stderr, prints nothing on stdout, and changes nothing.
	bad := []struct {
		n     *harness.Node
		stdin string
		args  []string
		code  int
		want  string
	}{
		{n1, "", []string{"domain", "remove", "nope.example"}, 1, "domain nope.example: not found"},
		{n2, "", []string{"domain", "add", "example.org"}, 1, "domain example.org: already exists"},
		{n3, "", []string{"domain", "add", "bad domain!"}, 1, `invalid domain name "bad domain!"`},
		{n1, "", []string{"domain", "remove", "example.org"}, 1, "domain example.org still has 2 users and 2 aliases; remove them first"},
		{n2, "x\n", []string{"user", "add", alice, "--password-stdin"}, 1, "user alice@example.org: already exists"},
		{n3, "x\n", []string{"user", "add", "ALICE@example.org", "--password-stdin"}, 1, "user alice@example.org: already exists"},
		{n1, "x\n", []string{"user", "add", "team@example.org", "--password-stdin"}, 1, "team@example.org is an alias"},
		{n2, "x\n", []string{"user", "add", "carol", "--password-stdin"}, 1, `invalid address "carol": no @`},
		{n3, "x\n", []string{"user", "add", "carol@bad_domain", "--password-stdin"}, 1, `invalid address "carol@bad_domain": bad domain`},
		{n1, "x\n", []string{"user", "add", "carol@nowhere.example", "--password-stdin"}, 1, "domain nowhere.example: not found"},
		{n2, "", []string{"user", "add", "carol@example.org"}, 1, "give the password with --password-stdin"},
		{n3, "", []string{"user", "remove", "ghost@example.org"}, 1, "user ghost@example.org: not found"},
		{n1, "x\n", []string{"user", "passwd", "ghost@example.org", "--password-stdin"}, 1, "user ghost@example.org: not found"},
		{n2, "", []string{"alias", "remove", "ghost@example.org"}, 1, "alias ghost@example.org: not found"},
		{n3, "", []string{"alias", "add", "team@example.org", bob}, 1, "alias team@example.org: already exists"},
		{n1, "", []string{"alias", "add", alice, bob}, 1, "alice@example.org is a user"},
		{n2, "", []string{"alias", "add", "team", alice}, 1, `invalid address "team": no @`},
		{n3, "", []string{"alias", "add", "x@example.org", "ghost@example.org"}, 1, "target ghost@example.org: not found (no such local user or alias)"},
		{n1, "", []string{"alias", "add", "x@example.org", "not-an-address"}, 1, `invalid address "not-an-address": no @`},
		{n2, "", []string{"alias", "add", "x@nowhere.example", alice}, 1, "domain nowhere.example: not found"},
		{n3, "", []string{"user", "add"}, 2, "usage: flotilla user add ADDRESS"},
		{n1, "", []string{"alias", "add", "x@example.org"}, 2, "usage: flotilla alias add ADDRESS TARGET"},
		{n2, "", []string{"domain", "remove"}, 2, "usage: flotilla domain remove NAME"},
	}
	for _, b := range bad {
		out, errOut, err := b.n.CLIInput(b.stdin, b.args...)
		what := b.n.ID + ": flotilla " + strings.Join(b.args, " ")
		if code := exitCode(err); code != b.code {
			t.Errorf("%s: exit %d (%v), want %d\nstdout %q\nstderr %q", what, code, err, b.code, out, errOut)
			continue
		}
		if !strings.HasPrefix(errOut, "flotilla: ") || !strings.Contains(errOut, b.want) {
			t.Errorf("%s: stderr %q, want %q in it", what, errOut, b.want)
		}
		if out != "" {
			t.Errorf("%s: failed but printed %q", what, out)
		}
	}
	// Nothing changed (lists read linearizably, so no waiting).
	for _, l := range []struct {
		header string
		check  func(map[string][]string) error
		args   []string
	}{
		{"DOMAIN", exactly("example.org", "other.test"), []string{"domain", "list"}},
		{"ADDRESS", exactly(alice, bob), []string{"user", "list"}},
		{"ALIAS", exactly("team@example.org", "@example.org"), []string{"alias", "list"}},
	} {
		out := n2.MustCLI(l.args...)
		rows, err := cliTable(out, l.header)
		if err == nil {
			err = l.check(rows)
		}
		if err != nil {
			t.Errorf("after the mistakes, %s: %v\n%s", strings.Join(l.args, " "), err, out)
		}
	}
	if err := submissionAuth(n2.Addr(harness.SubmissionPort), alice, pw2); err != nil {
		t.Errorf("alice after the failed passwd of ghost: %v", err)
	}

	// Removal, each seen on another node.
	mustCLIOut(t, n2, "", "alias team@example.org removed\n", "alias", "remove", "team@example.org")
	waitListed(t, n1, "ALIAS", exactly("@example.org"), "alias", "list")
	mustCLIOut(t, n3, "", "alias @example.org removed\n", "alias", "remove", "@example.org")
	waitListed(t, n1, "ALIAS", exactly(), "alias", "list")

	mustCLIOut(t, n1, "", "user "+bob+" removed\n", "user", "remove", bob)
	waitListed(t, n2, "ADDRESS", exactly(alice), "user", "list")
	harness.Eventually(t, 30*time.Second, "removed bob can no longer log in on n2", func() error {
		return authRefused(submissionAuth(n2.Addr(harness.SubmissionPort), bob, "pw-bob"))
	})
	_, errOut, err := n2.CLI("domain", "remove", "example.org")
	if exitCode(err) != 1 || !strings.Contains(errOut, "still has 1 users and 0 aliases") {
		t.Errorf("domain remove with alice left: %v %q", err, errOut)
	}
	mustCLIOut(t, n3, "", "user "+alice+" removed\n", "user", "remove", alice)
	waitListed(t, n1, "ADDRESS", exactly(), "user", "list")

	mustCLIOut(t, n2, "", "domain example.org removed\n", "domain", "remove", "example.org")
	waitListed(t, n3, "DOMAIN", exactly("other.test"), "domain", "list")
	mustCLIOut(t, n1, "", "domain other.test removed\n", "domain", "remove", "other.test")
	waitListed(t, n2, "DOMAIN", exactly(), "domain", "list")
	_, errOut, err = n3.CLI("domain", "remove", "other.test")
	if exitCode(err) != 1 || !strings.Contains(errOut, "domain other.test: not found") {
		t.Errorf("second domain remove: %v %q", err, errOut)
	}
}

// runFlotilla runs the flotilla binary in dir with the test's environment
// minus any FLOTILLA_ADDR and FLOTILLA_TOKEN, plus env.
func runFlotilla(t *testing.T, dir string, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := harness.Command(harness.Binary(t), args...)
	var keep []string
	for _, e := range cmd.Env {
		if !strings.HasPrefix(e, "FLOTILLA_ADDR=") && !strings.HasPrefix(e, "FLOTILLA_TOKEN=") {
			keep = append(keep, e)
		}
	}
	cmd.Env = append(keep, env...)
	cmd.Dir = dir
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(60*time.Second, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	timer.Stop()
	code = exitCode(err)
	if code < 0 {
		t.Fatalf("flotilla %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// TestCLIOverHTTPWithToken: the CLI reaches a node over its HTTP port with
// the API token from --token or FLOTILLA_TOKEN (and the address from --addr
// or FLOTILLA_ADDR), and a wrong or missing token is refused, saying so.
func TestCLIOverHTTPWithToken(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	leader.MustCLI("domain", "add", "socket.example")
	f := c.Followers(leader)[0]
	c.WaitVoters(f, 60*time.Second, "n1", "n2", "n3")
	url := "http://" + f.Addr(harness.HTTPPort)
	// A directory without a data dir: only HTTP can reach a node from here.
	dir := t.TempDir()

	status := func(out string) error {
		var st cluster.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return fmt.Errorf("status JSON: %v\n%s", err, out)
		}
		if st.Self != f.ID || st.Leader != leader.ID || len(st.Nodes) != 3 {
			return fmt.Errorf("status self %s leader %s, %d nodes; want self %s leader %s\n%s",
				st.Self, st.Leader, len(st.Nodes), f.ID, leader.ID, out)
		}
		for _, ns := range st.Nodes {
			if !ns.Voter || !ns.Healthy {
				return fmt.Errorf("%s: voter %v healthy %v\n%s", ns.ID, ns.Voter, ns.Healthy, out)
			}
		}
		return nil
	}
	ways := []struct {
		name  string
		env   []string
		flags []string
	}{
		{"--addr --token", nil, []string{"--addr", url, "--token", c.Token}},
		{"--addr, FLOTILLA_TOKEN", []string{"FLOTILLA_TOKEN=" + c.Token}, []string{"--addr", url + "/"}},
		{"FLOTILLA_ADDR, FLOTILLA_TOKEN", []string{"FLOTILLA_ADDR=" + url, "FLOTILLA_TOKEN=" + c.Token}, nil},
		{"--token over a wrong FLOTILLA_TOKEN", []string{"FLOTILLA_TOKEN=wrong"}, []string{"--addr", url, "--token", c.Token}},
	}
	for i, w := range ways {
		out, errOut, code := runFlotilla(t, dir, w.env, append([]string{"cluster", "status", "--json"}, w.flags...)...)
		if code != 0 {
			t.Fatalf("%s: cluster status: exit %d: %s", w.name, code, errOut)
		}
		if err := status(out); err != nil {
			t.Errorf("%s: %v", w.name, err)
		}
		// A write over HTTP, through the follower, seen through another node.
		name := fmt.Sprintf("http-%d.example", i)
		out, errOut, code = runFlotilla(t, dir, w.env, append([]string{"domain", "add", name}, w.flags...)...)
		if code != 0 || out != "domain "+name+" added\n" {
			t.Fatalf("%s: domain add: exit %d: %q %q", w.name, code, out, errOut)
		}
		out, errOut, code = runFlotilla(t, dir, w.env, append([]string{"domain", "list"}, w.flags...)...)
		if code != 0 {
			t.Fatalf("%s: domain list: exit %d: %s", w.name, code, errOut)
		}
		rows, err := cliTable(out, "DOMAIN")
		if err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
		for _, d := range []string{"socket.example", name} {
			if _, ok := rows[d]; !ok {
				t.Errorf("%s: domain list lacks %s:\n%s", w.name, d, out)
			}
		}
	}
	waitListed(t, c.Followers(leader)[1], "DOMAIN", exactly("socket.example", "http-0.example", "http-1.example", "http-2.example", "http-3.example"), "domain", "list")

	// Refused: wrong token (flag, environment, or a right environment
	// overridden by a wrong flag) and no token at all. Writes are refused
	// as well as reads.
	refused := []struct {
		name  string
		env   []string
		flags []string
		want  string
	}{
		{"wrong --token", nil, []string{"--addr", url, "--token", "not-" + c.Token}, "wrong API token"},
		{"wrong FLOTILLA_TOKEN", []string{"FLOTILLA_TOKEN=" + c.Token + "x"}, []string{"--addr", url}, "wrong API token"},
		{"wrong --token over FLOTILLA_TOKEN", []string{"FLOTILLA_TOKEN=" + c.Token}, []string{"--addr", url, "--token", "wrong"}, "wrong API token"},
		{"no token", nil, []string{"--addr", url}, "missing or wrong API token"},
	}
	for _, r := range refused {
		for _, args := range [][]string{{"cluster", "status", "--json"}, {"domain", "list"}, {"domain", "add", "refused.example"}} {
			out, errOut, code := runFlotilla(t, dir, r.env, append(args, r.flags...)...)
			if code != 1 || !strings.HasPrefix(errOut, "flotilla: ") || !strings.Contains(errOut, r.want) || out != "" {
				t.Errorf("%s: flotilla %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", r.name, strings.Join(args, " "), code, out, errOut, r.want)
			}
		}
	}
	ds, err := domains(leader)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d == "refused.example" {
			t.Errorf("a refused token added a domain: %v", ds)
		}
	}
	// Without --addr or FLOTILLA_ADDR the CLI looks for a control socket,
	// and says where it looked.
	_, errOut, code := runFlotilla(t, dir, []string{"FLOTILLA_TOKEN=" + c.Token}, "domain", "list")
	if code != 1 || !strings.Contains(errOut, "cannot reach the node through flotilla-data/control.sock") {
		t.Errorf("no --addr, no socket: exit %d, %q", code, errOut)
	}
}

// TestClusterVerifyFindsDivergence changes one node's state file behind
// Raft's back; `cluster verify` then fails and names that node.
func TestClusterVerifyFindsDivergence(t *testing.T) {
	c := harness.New(t, harness.Options{})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	const alice = "alice@example.org"
	seedUser(t, leader, alice)
	victim := c.Followers(leader)[0]
	harness.Eventually(t, 30*time.Second, victim.ID+" knows alice", func() error {
		return victim.API("GET", "/v1/users/"+alice+"?stale=1", nil, nil)
	})
	verifyClean(t, leader, 3) // the cluster agrees before the tampering

	victim.Stop()
	st, err := storage.Open(filepath.Join(victim.DataDir, "state.db"), storage.Options{MmapSize: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	err = st.Update(func(tx *storage.Tx) error {
		tx.SetClock(tx.Applied(), time.Now())
		return tx.SetQuota(alice, 4242)
	})
	if cerr := st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("tamper with %s's state: %v", victim.ID, err)
	}
	victim.Start()
	leader = c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	c.WaitVoters(victim, 60*time.Second, "n1", "n2", "n3")

	// The tampering survived the restart (the node does not reapply what
	// it has applied), and only there.
	for _, n := range c.Nodes {
		var u admin.User
		if err := n.API("GET", "/v1/users/"+alice+"?stale=1", nil, &u); err != nil {
			t.Fatal(err)
		}
		want := int64(0)
		if n == victim {
			want = 4242
		}
		if u.QuotaBytes != want {
			t.Fatalf("%s: alice's quota %d, want %d", n.ID, u.QuotaBytes, want)
		}
	}
	// The tampered node leads: the verdict must still name it, not the
	// two good nodes (the reference is the majority's digest).
	if leader != victim {
		leader.MustCLI("cluster", "transfer-leadership", "--to", victim.ID)
		if leader = c.WaitLeader(30 * time.Second); leader != victim {
			t.Fatalf("%s leads, not %s", leader.ID, victim.ID)
		}
	}
	var healthy, other *harness.Node
	for _, n := range c.Nodes {
		if n != victim {
			healthy, other = n, healthy
		}
	}

	// On a good follower: exit 1, the victim's row DIVERGES, the others ok,
	// and stderr names the victim alone.
	harness.Eventually(t, 60*time.Second, "cluster verify names "+victim.ID, func() error {
		out, errOut, err := healthy.CLI("cluster", "verify")
		if code := exitCode(err); code != 1 {
			return fmt.Errorf("exit %d (%v)\n%s%s", code, err, out, errOut)
		}
		if want := "flotilla: cluster verify: nodes diverge or did not answer: " + victim.ID + "\n"; errOut != want {
			return fmt.Errorf("stderr %q, want %q", errOut, want)
		}
		head, table, _ := strings.Cut(out, "\n")
		if !strings.HasPrefix(head, "state digests at index ") {
			return fmt.Errorf("stdout:\n%s", out)
		}
		rows, err := cliTable(table, "NODE")
		if err != nil {
			return err
		}
		if err := exactly("n1", "n2", "n3")(rows); err != nil {
			return err
		}
		for id, cells := range rows {
			want := "ok"
			if id == victim.ID {
				want = "DIVERGES"
			}
			if len(cells) != 2 || cells[1] != want || len(cells[0]) != 16 {
				return fmt.Errorf("%s: %q, want a digest and %s\n%s", id, cells, want, out)
			}
		}
		if rows[victim.ID][0] == rows[healthy.ID][0] || rows[other.ID][0] != rows[healthy.ID][0] {
			return fmt.Errorf("digests: the good nodes differ, or the diverging one shows theirs\n%s", out)
		}
		if strings.Contains(out, "all nodes identical") {
			return fmt.Errorf("says identical:\n%s", out)
		}
		return nil
	})

	// The same verdict as JSON, asked through the diverging node itself:
	// it answered with a digest of its own, not an error.
	out, errOut, err := victim.CLI("cluster", "verify", "--json")
	if exitCode(err) != 1 || !strings.Contains(errOut, "nodes diverge or did not answer: "+victim.ID) {
		t.Fatalf("verify --json on %s: %v %q", victim.ID, err, errOut)
	}
	var rep cluster.VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("verify JSON: %v\n%s", err, out)
	}
	if rep.Consistent || len(rep.Diverging) != 1 || rep.Diverging[0] != victim.ID || len(rep.Nodes) != 3 {
		t.Fatalf("report %+v", rep)
	}
	for _, nd := range rep.Nodes {
		if nd.Error != "" || nd.Digest == "" {
			t.Errorf("%s: digest %q error %q", nd.ID, nd.Digest, nd.Error)
		}
		if (nd.Digest == rep.Digest) == (nd.ID == victim.ID) {
			t.Errorf("%s: digest %s, leader's %s", nd.ID, nd.Digest, rep.Digest)
		}
	}
}

// syncBuffer is a bytes.Buffer a process writes to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServeDevPrintsWorkingLogin: `flotilla serve --dev` in an empty
// directory prints a login that works over IMAP and SMTP submission, keeps
// its data in ./flotilla-data there, and stops cleanly on SIGTERM.
func TestServeDevPrintsWorkingLogin(t *testing.T) {
	ip := harness.FreeLoopback(t, 2143)
	// Free ports on that address for every listener, so that nothing the
	// dev defaults name (8080, 7000, 2525...) can clash with other tests.
	names := []string{"smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps", "http", "https", "cluster", "gossip"}
	ports := map[string]int{}
	var lns []net.Listener
	for _, name := range names {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports[name] = ln.Addr().(*net.TCPAddr).Port
	}
	args := []string{"serve", "--dev", "--bind", ip}
	for _, ln := range lns {
		ln.Close()
	}
	for _, name := range names {
		args = append(args, "--"+name+"-port", strconv.Itoa(ports[name]))
	}

	dir := t.TempDir()
	cmd := harness.Command(harness.Binary(t), args...)
	cmd.Dir = dir
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("---- dev node stdout ----\n%s\n---- stderr ----\n%s", stdout.String(), lastLines(stderr.String(), 80))
		}
	})

	welcome := regexp.MustCompile(`(?m)^Flotilla dev node is up\.\n` +
		`  Login:      (\S+)  password: (\S+)\n` +
		`  Admin API:  http://(\S+):(\d+)  \(token: (\S+)\)\n` +
		`  SMTP (\d+), submission (\d+), SMTPS (\d+), IMAP (\d+), IMAPS (\d+), POP3 (\d+), POP3S (\d+) on (\S+)\n` +
		`  Try:        flotilla cluster status --data-dir (\S+)\n`)
	var m []string
	harness.Eventually(t, 90*time.Second, "the dev node's welcome", func() error {
		select {
		case <-done:
			return fmt.Errorf("serve --dev exited: %v", cmd.ProcessState)
		default:
		}
		if m = welcome.FindStringSubmatch(stdout.String()); m == nil {
			return fmt.Errorf("stdout so far %q", stdout.String())
		}
		return nil
	})
	user, pw, apiHost, token, host, dataDir := m[1], m[2], m[3], m[5], m[13], m[14]
	if user != "demo@demo.test" || len(pw) < 16 || host != ip || apiHost != ip || dataDir != "./flotilla-data" {
		t.Errorf("welcome: login %s password %q on %s, API on %s, data dir %s:\n%s", user, pw, host, apiHost, dataDir, m[0])
	}
	for i, name := range []string{"http", "smtp", "submission", "smtps", "imap", "imaps", "pop3", "pop3s"} {
		idx := 4
		if i > 0 {
			idx = 5 + i
		}
		if m[idx] != strconv.Itoa(ports[name]) {
			t.Errorf("welcome says %s port %s, we gave %d:\n%s", name, m[idx], ports[name], m[0])
		}
	}
	// The data, the password and the token are in ./flotilla-data of the
	// working directory.
	data := filepath.Join(dir, "flotilla-data")
	for _, f := range []string{"state.db", "node.json", "control.sock", "tls/ca.pem", "raft"} {
		if _, err := os.Stat(filepath.Join(data, f)); err != nil {
			t.Errorf("data dir: %v", err)
		}
	}
	for f, want := range map[string]string{"demo-password": pw, "api-token": token} {
		b, err := os.ReadFile(filepath.Join(data, f))
		if err != nil || strings.TrimSpace(string(b)) != want {
			t.Errorf("%s holds %q (%v), welcome printed %q", f, b, err, want)
		}
	}

	// The suggested command works from that directory, as does the API
	// with the printed token.
	out, errOut, code := runFlotilla(t, dir, nil, "cluster", "status", "--data-dir", dataDir)
	if code != 0 || !strings.Contains(out, "leader dev (asked dev)") {
		t.Errorf("cluster status --data-dir %s: exit %d\n%s%s", dataDir, code, out, errOut)
	}
	out, errOut, code = runFlotilla(t, t.TempDir(), nil, "domain", "list", "--addr", "http://"+net.JoinHostPort(apiHost, m[4]), "--token", token)
	if rows, err := cliTable(out, "DOMAIN"); code != 0 || err != nil || exactly(demoDomainName)(rows) != nil {
		t.Errorf("domain list over HTTP with the printed token: exit %d %v\n%s%s", code, err, out, errOut)
	}

	// IMAP with the printed login: a wrong password is refused, the right
	// one gets in.
	imapAddr := net.JoinHostPort(host, m[9])
	imapOpts := &imapclient.Options{TLSConfig: &tls.Config{InsecureSkipVerify: true}}
	wrong, err := imapclient.DialStartTLS(imapAddr, imapOpts)
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Login(user, pw+"x").Wait(); err == nil {
		t.Errorf("IMAP accepted a wrong password")
	}
	wrong.Close()
	ic, err := imapclient.DialStartTLS(imapAddr, imapOpts)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	if err := ic.Login(user, pw).Wait(); err != nil {
		t.Fatalf("IMAP login with the printed password: %v", err)
	}
	sel, err := ic.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	before := sel.NumMessages

	// A message to ourselves over submission with STARTTLS and the printed
	// login arrives in INBOX.
	subject := fmt.Sprintf("dev check %d", time.Now().UnixNano())
	if err := devSend(net.JoinHostPort(host, m[7]), user, pw, subject); err != nil {
		t.Fatalf("submission: %v", err)
	}
	harness.Eventually(t, 30*time.Second, "the message in INBOX", func() error {
		sel, err := ic.Select("INBOX", nil).Wait()
		if err != nil {
			return err
		}
		if sel.NumMessages <= before {
			return fmt.Errorf("%d messages", sel.NumMessages)
		}
		var all goimap.SeqSet
		all.AddRange(1, sel.NumMessages)
		msgs, err := ic.Fetch(all, &goimap.FetchOptions{Envelope: true}).Collect()
		if err != nil {
			return err
		}
		for _, msg := range msgs {
			if msg.Envelope != nil && msg.Envelope.Subject == subject {
				return nil
			}
		}
		return fmt.Errorf("no message with subject %q among %d", subject, len(msgs))
	})
	if err := ic.Logout().Wait(); err != nil {
		t.Errorf("logout: %v", err)
	}

	// SIGTERM: a clean exit, code 0, and no race or panic on the way.
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("serve --dev still running 30s after SIGTERM")
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("serve --dev exited %d after SIGTERM", code)
	}
	if log := stderr.String(); strings.Contains(log, "DATA RACE") || strings.Contains(log, "panic:") || !strings.Contains(log, "msg=stopped") {
		t.Errorf("serve --dev log:\n%s", lastLines(log, 80))
	}
}

const demoDomainName = "demo.test"

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// devSend sends one message from user to user on a submission port:
// STARTTLS (any certificate), AUTH PLAIN, then the message.
func devSend(addr, user, pw, subject string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	host, _, _ := net.SplitHostPort(addr)
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	c, err := smtp.NewClient(conn, host)
	if err != nil {
		return err
	}
	if err := c.Hello("cli.test"); err != nil {
		return err
	}
	if err := c.StartTLS(&tls.Config{InsecureSkipVerify: true}); err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if err := c.Auth(smtp.PlainAuth("", user, pw, host)); err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	if err := c.Mail(user); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	if err := c.Rcpt(user); err != nil {
		return fmt.Errorf("RCPT: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	fmt.Fprintf(w, "From: %s\r\nTo: %s\r\nSubject: %s\r\n\r\nHello from the dev test.\r\n", user, user, subject)
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return c.Quit()
}
