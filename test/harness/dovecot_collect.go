package harness

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Dovecot is a private Dovecot instance (Debian's dovecot-imapd and
// dovecot-pop3d) serving POP3 and IMAP on a loopback address of its own,
// from Maildirs in a temporary directory: an ISP mailbox to collect from.
type Dovecot struct {
	t        T
	Dir      string
	IP       string
	POP3Port int
	IMAPPort int
	conf     string
}

var dovecotSeq atomic.Uint64

// StartDovecot starts an instance with these users (name -> password).
func StartDovecot(t T, users map[string]string) *Dovecot {
	t.Helper()
	if _, err := exec.LookPath("dovecot"); err != nil {
		t.Fatal("dovecot is not installed (scripts/ci-deps.sh installs it)")
	}
	dir, err := os.MkdirTemp("", "flotilla-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	d := &Dovecot{t: t, Dir: dir, IP: FreeLoopback(t, 110), POP3Port: 110, IMAPPort: 143, conf: filepath.Join(dir, "dovecot.conf")}
	for _, sub := range []string{"run", "state", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var pw []string
	for u, p := range users {
		pw = append(pw, fmt.Sprintf("%s:{PLAIN}%s", u, p))
		for _, sub := range []string{"new", "cur", "tmp"} {
			if err := os.MkdirAll(filepath.Join(dir, "home", u, "Maildir", sub), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "passwd"), []byte(strings.Join(pw, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "chown", "-R", "mail:mail", filepath.Join(dir, "home"))
	conf := fmt.Sprintf(`base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
info_log_path = %[1]s/dovecot.log
protocols = imap pop3
listen = %[2]s
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:~/Maildir
pop3_uidl_format = %%08Xu%%08Xv
passdb {
  driver = passwd-file
  args = %[1]s/passwd
}
userdb {
  driver = static
  args = uid=mail gid=mail home=%[1]s/home/%%u
}
service imap-login {
  inet_listener imap {
    address = %[2]s
    port = %[3]d
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  inet_listener pop3 {
    address = %[2]s
    port = %[4]d
  }
  inet_listener pop3s {
    port = 0
  }
}
`, dir, d.IP, d.IMAPPort, d.POP3Port)
	if err := os.WriteFile(d.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.stop)
	// dovecot forks into the background: its output goes to a file, not
	// to a pipe the child would keep open.
	errf, err := os.Create(filepath.Join(dir, "start.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("dovecot", "-c", d.conf)
	cmd.Stdout, cmd.Stderr = errf, errf
	err = cmd.Run()
	errf.Close()
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "start.log"))
		t.Fatalf("dovecot: %v: %s", err, b)
	}
	for _, port := range []int{d.POP3Port, d.IMAPPort} {
		addr := net.JoinHostPort(d.IP, strconv.Itoa(port))
		Eventually(t, 20*time.Second, "dovecot listening on "+addr, func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			c.Close()
			return nil
		})
	}
	return d
}

// Put stores a message in a user's Maildir, as an ISP's MTA would.
func (d *Dovecot) Put(user, msg string) {
	d.t.Helper()
	name := fmt.Sprintf("%d.M%dP%d.test", time.Now().Unix(), dovecotSeq.Add(1), os.Getpid())
	path := filepath.Join(d.Dir, "home", user, "Maildir", "new", name)
	if err := os.WriteFile(path, []byte(msg), 0o600); err != nil {
		d.t.Fatal(err)
	}
	run(d.t, "chown", "mail:mail", path)
}

// Count is how many messages a user's Maildir holds.
func (d *Dovecot) Count(user string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		entries, _ := os.ReadDir(filepath.Join(d.Dir, "home", user, "Maildir", sub))
		n += len(entries)
	}
	return n
}

// Addr is the address of a protocol's listener ("pop3" or "imap").
func (d *Dovecot) Addr(proto string) string {
	if proto == "imap" {
		return net.JoinHostPort(d.IP, strconv.Itoa(d.IMAPPort))
	}
	return net.JoinHostPort(d.IP, strconv.Itoa(d.POP3Port))
}

func (d *Dovecot) stop() {
	if b, err := os.ReadFile(filepath.Join(d.Dir, "run", "master.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	if d.t.Failed() {
		b, _ := os.ReadFile(filepath.Join(d.Dir, "dovecot.log"))
		d.t.Logf("---- dovecot log ----\n%s", tail(string(b), 40))
	}
	_ = os.RemoveAll(d.Dir)
}
