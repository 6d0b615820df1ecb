package test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// cramPy logs in with CRAM-MD5 over SMTP submission (STARTTLS), IMAP
// (STARTTLS) and POP3 (STLS), as Python's own clients do it, and prints
// what each server answered.
const cramPy = `
import base64, hmac, imaplib, json, poplib, smtplib, ssl, sys
host, smtp_port, imap_port, pop_port, user, pw = sys.argv[1:7]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
try:
    s = smtplib.SMTP(host, int(smtp_port), timeout=20)
    s.starttls(context=ctx)
    s.ehlo("python.test")
    out["smtp_offers"] = "CRAM-MD5" in s.esmtp_features.get("auth", "").split()
    s.user, s.password = user, pw
    code, msg = s.auth("CRAM-MD5", s.auth_cram_md5, initial_response_ok=False)
    out["smtp"] = code
    s.quit()
except smtplib.SMTPResponseException as e:
    out["smtp"] = e.smtp_code
try:
    m = imaplib.IMAP4(host, int(imap_port), timeout=20)
    m.starttls(ssl_context=ctx)
    out["imap_offers"] = "AUTH=CRAM-MD5" in m.capabilities
    typ, _ = m.login_cram_md5(user, pw)
    out["imap"] = typ
    m.logout()
except imaplib.IMAP4.error as e:
    out["imap"] = "NO: " + str(e)
try:
    p = poplib.POP3(host, int(pop_port), timeout=20)
    p.stls(context=ctx)
    out["pop3_offers"] = "CRAM-MD5" in p.capa().get("SASL", [])
    challenge = p._shortcmd("AUTH CRAM-MD5")[2:]
    digest = hmac.new(pw.encode(), base64.b64decode(challenge), "md5").hexdigest()
    out["pop3"] = p._shortcmd(base64.b64encode((user + " " + digest).encode()).decode()).decode()
    p.quit()
except poplib.error_proto as e:
    out["pop3"] = "ERR: " + str(e)
print(json.dumps(out))
`

type cramResult struct {
	SMTPOffers bool   `json:"smtp_offers"`
	SMTP       int    `json:"smtp"`
	IMAPOffers bool   `json:"imap_offers"`
	IMAP       string `json:"imap"`
	POP3Offers bool   `json:"pop3_offers"`
	POP3       string `json:"pop3"`
}

func cramLogin(t *testing.T, n *harness.Node, user, pw string) cramResult {
	t.Helper()
	cmd := exec.Command("python3", "-c", cramPy, n.IP, fmt.Sprint(harness.SubmissionPort), fmt.Sprint(harness.IMAPPort),
		fmt.Sprint(harness.POP3Port), user, pw)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	var r cramResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("python output %q: %v", out, err)
	}
	return r
}

// TestCRAMMD5OptIn: with --allow-cram-md5, nodes offer CRAM-MD5 on SMTP,
// IMAP and POP3; an account whose password was set with --cram-md5 logs in
// with it on every protocol and every node, one without it (no stored
// secret) is refused, and so is a wrong password.
func TestCRAMMD5OptIn(t *testing.T) {
	c, leader := optInCluster(t, "--allow-cram-md5", "carol@cram.test", "carol-secret", "--cram-md5", "dave@cram.test")
	for _, n := range c.Nodes {
		r := cramLogin(t, n, "carol@cram.test", "carol-secret")
		t.Logf("%s: %+v", n.ID, r)
		if !r.SMTPOffers || !r.IMAPOffers || !r.POP3Offers {
			t.Errorf("%s does not offer CRAM-MD5 everywhere: %+v", n.ID, r)
		}
		if r.SMTP != 235 || r.IMAP != "OK" || len(r.POP3) < 3 || r.POP3[:3] != "+OK" {
			t.Errorf("%s: carol (CRAM-MD5 secret stored) could not log in: %+v", n.ID, r)
		}
	}
	for _, tc := range []struct{ user, pw string }{{"dave@cram.test", "pw-dave@cram.test"}, {"carol@cram.test", "wrong"}} {
		r := cramLogin(t, c.Nodes[1], tc.user, tc.pw)
		if r.SMTP != 535 || r.IMAP == "OK" || len(r.POP3) < 4 || r.POP3[:4] != "ERR:" {
			t.Errorf("%s with %q logged in by CRAM-MD5: %+v", tc.user, tc.pw, r)
		}
	}
	// Setting a password without --cram-md5 drops the CRAM-MD5 secret.
	if _, errOut, err := leader.CLIInput("carol-new\n", "user", "passwd", "carol@cram.test", "--password-stdin"); err != nil {
		t.Fatalf("user passwd: %v %s", err, errOut)
	}
	harness.Eventually(t, 20*time.Second, "carol's CRAM-MD5 secret gone", func() error {
		if r := cramLogin(t, c.Nodes[2], "carol@cram.test", "carol-new"); r.SMTP != 535 {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
}

// apopPy logs in with APOP through Python's poplib and prints the answer.
const apopPy = `
import poplib, sys
host, port, user, pw = sys.argv[1:5]
p = poplib.POP3(host, int(port), timeout=20)
print("greeting-timestamp" if p.timestamp.search(p.welcome) else "greeting-plain")
try:
    print(p.apop(user, pw).decode())
    p.quit()
except poplib.error_proto as e:
    print("ERR", e)
`

func apopLogin(t *testing.T, n *harness.Node, user, pw string) string {
	t.Helper()
	out, err := exec.Command("python3", "-c", apopPy, n.IP, fmt.Sprint(harness.POP3Port), user, pw).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	return string(out)
}

// TestAPOPOptIn: with --allow-apop the POP3 greeting carries a timestamp
// and an account whose password was set with --apop logs in with APOP on
// every node; others, and wrong passwords, are refused. Without the flag
// (the default) no timestamp is offered.
func TestAPOPOptIn(t *testing.T) {
	c, _ := optInCluster(t, "--allow-apop", "erin@apop.test", "erin-secret", "--apop", "frank@apop.test")
	for _, n := range c.Nodes {
		if out := apopLogin(t, n, "erin@apop.test", "erin-secret"); !strings.HasPrefix(out, "greeting-timestamp\n+OK") {
			t.Errorf("%s: APOP for erin: %q", n.ID, out)
		}
	}
	for _, tc := range []struct{ user, pw string }{{"frank@apop.test", "pw-frank@apop.test"}, {"erin@apop.test", "wrong"}, {"nobody@apop.test", "x"}} {
		if out := apopLogin(t, c.Nodes[1], tc.user, tc.pw); !strings.Contains(out, "ERR") || !strings.Contains(out, "[AUTH]") {
			t.Errorf("APOP %s/%s: %q", tc.user, tc.pw, out)
		}
	}
}

// optInCluster starts three nodes with nodeFlag, adds user with password
// and userFlag, and other without it, and waits until every node knows both.
func optInCluster(t *testing.T, nodeFlag, user, password, userFlag, other string) (*harness.Cluster, *harness.Node) {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("python3 not installed (scripts/ci-deps.sh installs it)")
	}
	c := harness.New(t, harness.Options{Args: []string{nodeFlag}})
	leader := c.WaitLeader(60 * time.Second)
	c.WaitVoters(leader, 60*time.Second, "n1", "n2", "n3")
	leader.MustCLI("domain", "add", user[strings.IndexByte(user, '@')+1:])
	if _, errOut, err := leader.CLIInput(password+"\n", "user", "add", user, "--password-stdin", userFlag); err != nil {
		t.Fatalf("user add %s: %v %s", userFlag, err, errOut)
	}
	seedUser(t, leader, other) // without the legacy secret
	for _, n := range c.Nodes {
		harness.Eventually(t, 20*time.Second, n.ID+" knows the users", func() error {
			return n.API("GET", "/v1/users/"+other+"?stale=1", nil, nil)
		})
	}
	return c, leader
}
