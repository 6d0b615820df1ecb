package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// PostfixRelay is a private instance of Debian's Postfix (its own config,
// queue and data directories under a temporary directory, its smtpd on an
// address of its own) that relays every message it is given to one
// relayhost, as a real MTA in front of Flotilla would. It is stopped when
// the test ends.
type PostfixRelay struct {
	t    testing.TB
	Dir  string
	IP   string
	Port int
	conf string
}

// StartPostfixRelay starts an instance on ip:port relaying to relayhost
// ("[ip]:port"), with opportunistic STARTTLS towards it.
func StartPostfixRelay(t testing.TB, ip string, port int, relayhost string) *PostfixRelay {
	t.Helper()
	if _, err := exec.LookPath("postfix"); err != nil {
		t.Fatal("postfix is not installed (scripts/ci-deps.sh installs it)")
	}
	// Postfix's daemons run as the postfix user: the directory must be
	// reachable for it, which t.TempDir's (mode 0700) is not.
	dir, err := os.MkdirTemp("", "flotilla-postfix-relay-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	p := &PostfixRelay{t: t, Dir: dir, IP: ip, Port: port, conf: filepath.Join(dir, "conf")}
	for _, d := range []string{"conf", "queue", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "postfix", filepath.Join(dir, "data")).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	t.Cleanup(p.stop)

	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(master), "\n") {
		f := strings.Fields(l)
		if len(f) >= 8 && l[0] != '#' && l[0] != ' ' && l[0] != '\t' {
			if f[0] == "smtp" && f[1] == "inet" {
				f[0] = net.JoinHostPort(ip, fmt.Sprint(port))
			}
			f[4] = "n" // no chroot: a private instance has no chroot tree
			l = strings.Join(f, " ")
		}
		lines = append(lines, l)
	}
	p.write("master.cf", strings.Join(lines, "\n"))
	main := map[string]string{
		"compatibility_level":          "3.6",
		"queue_directory":              filepath.Join(dir, "queue"),
		"data_directory":               filepath.Join(dir, "data"),
		"maillog_file":                 filepath.Join(dir, "maillog"),
		"maillog_file_prefixes":        dir,
		"inet_interfaces":              "all",
		"inet_protocols":               "ipv4",
		"myhostname":                   "postfix-relay.test",
		"mydestination":                "",
		"mynetworks":                   "127.0.0.0/8",
		"alias_maps":                   "",
		"alias_database":               "",
		"relayhost":                    relayhost,
		"smtpd_recipient_restrictions": "permit_mynetworks, reject",
		"smtpd_peername_lookup":        "no",
		"smtp_dns_support_level":       "disabled",
		"smtp_tls_security_level":      "may",
		"notify_classes":               "",
		"bounce_queue_lifetime":        "0",
		"maximal_queue_lifetime":       "1h",
		"minimal_backoff_time":         "1s",
		"maximal_backoff_time":         "2s",
		"queue_run_delay":              "1s",
		"smtpd_banner":                 "$myhostname ESMTP Postfix (test)",
	}
	var keys []string
	for k := range main {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, main[k])
	}
	p.write("main.cf", b.String())
	if out, err := exec.Command("postfix", "-c", p.conf, "start").CombinedOutput(); err != nil {
		t.Fatalf("postfix start: %v: %s\n%s", err, out, p.Log())
	}
	Eventually(t, 20*time.Second, "postfix listening on "+p.Addr(), func() error {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return p
}

func (p *PostfixRelay) write(name, content string) {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.conf, name), []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// Addr is host:port of its smtpd.
func (p *PostfixRelay) Addr() string { return net.JoinHostPort(p.IP, fmt.Sprint(p.Port)) }

// Sendmail submits a message through the instance's sendmail(1) (postdrop
// and pickup), as a local program would.
func (p *PostfixRelay) Sendmail(from, msg string, to ...string) error {
	cmd := exec.Command("sendmail", append([]string{"-C", p.conf, "-f", from, "-i", "--"}, to...)...)
	cmd.Stdin = strings.NewReader(msg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("sendmail: %v: %s", err, out)
	}
	return nil
}

// Log is the instance's mail log.
func (p *PostfixRelay) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

func (p *PostfixRelay) stop() {
	var pid int
	if b, err := os.ReadFile(filepath.Join(p.Dir, "queue", "pid", "master.pid")); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	_ = exec.Command("postfix", "-c", p.conf, "stop").Run()
	// postfix stop returns before the master is gone: wait for it, so that
	// its directory can go.
	for deadline := time.Now().Add(10 * time.Second); pid > 0 && time.Now().Before(deadline); {
		if syscall.Kill(pid, 0) != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.t.Failed() {
		p.t.Logf("---- postfix relay log ----\n%s", p.Log())
	}
	_ = os.RemoveAll(p.Dir)
}
