package test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/test/harness"
)

// smtpClient is a raw SMTP client: what it sends goes byte for byte.
type smtpClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func smtpDial(t *testing.T, addr string, implicitTLS bool) *smtpClient {
	t.Helper()
	var conn net.Conn
	var err error
	if implicitTLS {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	} else {
		conn, err = net.DialTimeout("tcp", addr, 10*time.Second)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	_ = conn.SetDeadline(time.Now().Add(60 * time.Second))
	t.Cleanup(func() { conn.Close() })
	c := &smtpClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	if code, text := c.reply(); code != 220 {
		t.Fatalf("greeting %d %s", code, text)
	}
	return c
}

func (c *smtpClient) reply() (int, string) {
	var lines []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(append(lines, "<"+err.Error()+">"), "\n")
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			return 0, line
		}
		lines = append(lines, line[4:])
		if line[3] == ' ' {
			code, _ := strconv.Atoi(line[:3])
			return code, strings.Join(lines, "\n")
		}
	}
}

func (c *smtpClient) cmd(line string) (int, string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\r\n")); err != nil {
		return 0, err.Error()
	}
	return c.reply()
}

func (c *smtpClient) must(line string, code int, want ...string) string {
	c.t.Helper()
	got, text := c.cmd(line)
	if got != code {
		c.t.Fatalf("%q: %d %q, want %d", line, got, text, code)
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			c.t.Fatalf("%q: %d %q, want %q in it", line, got, text, w)
		}
	}
	return text
}

func (c *smtpClient) starttls() {
	c.t.Helper()
	c.must("STARTTLS", 220)
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		c.t.Fatal(err)
	}
	c.conn, c.r = tc, bufio.NewReader(tc)
}

func (c *smtpClient) authPlain(user, pass string) (int, string) {
	return c.cmd("AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass)))
}

// data sends a message after DATA and returns the final reply.
func (c *smtpClient) data(msg string) (int, string) {
	c.t.Helper()
	c.must("DATA", 354)
	if _, err := c.conn.Write([]byte(msg + ".\r\n")); err != nil {
		return 0, err.Error()
	}
	return c.reply()
}

// smtpPy is Python's smtplib sending one message: STARTTLS ("starttls"),
// implicit TLS ("ssl") or cleartext, and AUTH when a user is given.
const smtpPy = `
import json, smtplib, ssl, sys
host, port, mode, user, pw, frm, to, body = sys.argv[1:9]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
try:
    if mode == "ssl":
        s = smtplib.SMTP_SSL(host, int(port), context=ctx, timeout=60)
    else:
        s = smtplib.SMTP(host, int(port), timeout=60)
    s.ehlo("python.test")
    if mode == "starttls":
        s.starttls(context=ctx)
        s.ehlo("python.test")
    if user:
        s.login(user, pw)
    s.mail(frm)
    for r in to.split(","):
        c, m = s.rcpt(r)
        if c != 250:
            raise smtplib.SMTPResponseException(c, m)
    code, resp = s.data(body.encode())
    out["data"] = [code, resp.decode()]
    s.quit()
    out["ok"] = code == 250
except smtplib.SMTPResponseException as e:
    out["error"] = [e.smtp_code, e.smtp_error.decode(errors="replace")]
print(json.dumps(out))
`

type smtpPyResult struct {
	OK    bool  `json:"ok"`
	Data  []any `json:"data"`
	Error []any `json:"error"`
}

func smtplib(t *testing.T, addr, mode, user, pw, from, to, body string) smtpPyResult {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command("python3", "-c", smtpPy, host, port, mode, user, pw, from, to, body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v\n%s%s", err, out, stderr.String())
	}
	var r smtpPyResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("python output %q: %v\n%s", out, err, stderr.String())
	}
	return r
}

// smtpCluster is a three-node cluster with example.org, alice and bob
// (password "pw-" + address).
func smtpCluster(t *testing.T) (*harness.Cluster, *harness.Node) {
	t.Helper()
	c := harness.New(t, harness.Options{Args: smtpNodeArgs(t)})
	leader := c.WaitLeader(30 * time.Second)
	c.WaitVoters(leader, 30*time.Second, "n1", "n2", "n3")
	seedUser(t, leader, "alice@example.org")
	seedUser(t, leader, "bob@example.org")
	// Every node knows the users before a session asks it.
	for _, n := range c.Nodes {
		harness.Eventually(t, 20*time.Second, n.ID+" knows bob", func() error {
			return n.API("GET", "/v1/users/bob@example.org?stale=1", nil, nil)
		})
	}
	return c, leader
}

// smtpNodeArgs keeps mail for other domains in the queue, where these tests
// look for it: when the build has outbound delivery (--dns-resolver), its
// lookups go to a resolver that does not answer, so attempts are deferred
// rather than bounced by whatever the machine's resolver says of the test
// domains.
func smtpNodeArgs(t *testing.T) []string {
	out, _ := harness.Command(harness.Binary(t), "serve", "-h").CombinedOutput()
	if strings.Contains(string(out), "-dns-resolver") {
		return []string{"--dns-resolver", "127.0.0.1:9"}
	}
	return nil
}

// smtpRestart starts stopped nodes and waits until each takes SMTP
// connections, which it does once its cluster side has started: asking a
// node for its status before then races with its start (a bug of the
// cluster package's, reported; status calls fan out to every node).
func smtpRestart(t *testing.T, nodes ...*harness.Node) {
	t.Helper()
	for _, n := range nodes {
		n.Start()
	}
	for _, n := range nodes {
		harness.Eventually(t, 60*time.Second, n.ID+" takes SMTP connections", func() error {
			c, err := net.DialTimeout("tcp", n.Addr(harness.SMTPPort), time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		})
	}
}

// sameEverywhere checks that every running node holds want messages for
// user with identical bytes, and returns the bytes of the last one.
func sameEverywhere(t *testing.T, c *harness.Cluster, user string, want int) []byte {
	t.Helper()
	ms := waitMessages(t, c, user, want)
	last := ms[len(ms)-1]
	var ref []byte
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		b, err := rawMessage(n, user, last.UID)
		if err != nil {
			t.Fatalf("%s: %v", n.ID, err)
		}
		if ref == nil {
			ref = b
		} else if !bytes.Equal(b, ref) {
			t.Fatalf("%s holds different bytes for %s UID %d:\n%q\nvs\n%q", n.ID, user, last.UID, b, ref)
		}
	}
	return ref
}

func smtpMsg(subject string) string {
	return fmt.Sprintf("From: someone <someone@remote.test>\r\nTo: alice@example.org\r\nSubject: %s\r\nMessage-ID: <%d@remote.test>\r\n\r\n%s\r\n",
		subject, time.Now().UnixNano(), strings.Repeat("A line of the body of the message.\r\n", 20))
}
