package harness

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// PostfixRX is a private Postfix instance (Debian's postfix, its own
// config, queue and data directories in a temporary directory) on a
// loopback address of its own. It receives mail for its domains into
// Maildirs, or (with Relayhost) relays everything it is given there.
type PostfixRX struct {
	t    T
	Dir  string
	IP   string
	Port int
	conf string
	opt  PostfixRXOptions
}

// PostfixRXOptions shape an instance.
type PostfixRXOptions struct {
	IP   string // default: a free 127.x.y.z
	Port int    // default 25
	// Users are the addresses that have a Maildir; other recipients of
	// its domains are refused with 550 5.1.1.
	Users []string
	// MessageSizeLimit in bytes (Postfix's default: 10 MB).
	MessageSizeLimit int64
	// TLS offers STARTTLS with a self-signed certificate.
	TLS bool
	// Access answers chosen recipients at RCPT ("451 4.7.1 try later").
	Access map[string]string
	// Relayhost, if set ("[ip]:port"), makes this instance relay all mail
	// it receives there instead of storing any.
	Relayhost string
	// Extra main.cf settings.
	Extra map[string]string
}

// StartPostfixRX starts an instance; it is stopped when the test ends.
func StartPostfixRX(t T, opt PostfixRXOptions) *PostfixRX {
	t.Helper()
	if _, err := exec.LookPath("postfix"); err != nil {
		t.Fatal("postfix is not installed (scripts/ci-deps.sh installs it)")
	}
	if opt.Port == 0 {
		opt.Port = 25
	}
	if opt.IP == "" {
		opt.IP = FreeLoopback(t, opt.Port)
	}
	// Postfix's processes run as the postfix user: the instance lives in
	// a directory of its own that they can reach.
	dir, err := os.MkdirTemp("", "flotilla-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	p := &PostfixRX{t: t, Dir: dir, IP: opt.IP, Port: opt.Port, conf: filepath.Join(dir, "conf"), opt: opt}
	for _, d := range []string{"conf", "queue", "data", "mail"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "chown", "postfix", filepath.Join(dir, "data"))
	run(t, "chown", "65534:65534", filepath.Join(dir, "mail"))
	t.Cleanup(p.stop)

	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.conf, "master.cf"), []byte(privateMaster(string(master), opt.IP, opt.Port)), 0o644); err != nil {
		t.Fatal(err)
	}
	domains := map[string]bool{}
	var vmail []string
	for _, u := range opt.Users {
		at := strings.LastIndexByte(u, '@')
		domains[u[at+1:]] = true
		vmail = append(vmail, fmt.Sprintf("%s %s/%s/", u, u[at+1:], u[:at]))
	}
	var doms []string
	for d := range domains {
		doms = append(doms, d)
	}
	sort.Strings(doms)
	p.write("vmailbox", strings.Join(vmail, "\n")+"\n")
	p.writeAccess(opt.Access)
	main := map[string]string{
		"compatibility_level":                 "3.6",
		"queue_directory":                     filepath.Join(dir, "queue"),
		"data_directory":                      filepath.Join(dir, "data"),
		"maillog_file":                        filepath.Join(dir, "maillog"),
		"maillog_file_prefixes":               dir,
		"inet_interfaces":                     "all",
		"inet_protocols":                      "ipv4",
		"myhostname":                          "postfix-" + strings.ReplaceAll(opt.IP, ".", "-") + ".test",
		"mydestination":                       "",
		"mynetworks":                          "127.0.0.0/8",
		"alias_maps":                          "",
		"alias_database":                      "",
		"smtpd_peername_lookup":               "no",
		"virtual_mailbox_domains":             strings.Join(doms, ", "),
		"virtual_mailbox_base":                filepath.Join(dir, "mail"),
		"virtual_mailbox_maps":                "texthash:" + filepath.Join(p.conf, "vmailbox"),
		"virtual_uid_maps":                    "static:65534",
		"virtual_gid_maps":                    "static:65534",
		"smtpd_recipient_restrictions":        "check_recipient_access texthash:" + filepath.Join(p.conf, "access") + ", permit_mynetworks, reject_unauth_destination",
		"default_transport":                   "error:this test instance sends no mail",
		"relay_transport":                     "error:this test instance sends no mail",
		"notify_classes":                      "",
		"bounce_queue_lifetime":               "0",
		"maximal_queue_lifetime":              "0",
		"smtpd_banner":                        "$myhostname ESMTP Postfix (test)",
		"smtp_dns_support_level":              "disabled",
		"smtpd_client_connection_count_limit": "0",
		"smtpd_client_message_rate_limit":     "0",
		"anvil_rate_time_unit":                "60s",
	}
	if opt.MessageSizeLimit > 0 {
		main["message_size_limit"] = fmt.Sprint(opt.MessageSizeLimit)
	}
	if opt.TLS {
		cert, key := SelfSignedPEM(t, main["myhostname"])
		p.write("cert.pem", cert)
		p.write("key.pem", key)
		main["smtpd_tls_cert_file"] = filepath.Join(p.conf, "cert.pem")
		main["smtpd_tls_key_file"] = filepath.Join(p.conf, "key.pem")
		main["smtpd_tls_security_level"] = "may"
	}
	if opt.Relayhost != "" {
		main["relayhost"] = opt.Relayhost
		main["default_transport"] = "smtp"
		main["relay_transport"] = "smtp"
		main["virtual_mailbox_domains"] = ""
		main["smtpd_recipient_restrictions"] = "permit_mynetworks, reject"
		main["maximal_queue_lifetime"] = "1d"
		main["bounce_queue_lifetime"] = "1d"
	}
	for k, v := range opt.Extra {
		main[k] = v
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
		c.Close()
		return nil
	})
	return p
}

// privateMaster is Debian's master.cf with smtpd on ip:port only and no
// chroot (a private instance has no chroot tree).
func privateMaster(master, ip string, port int) string {
	var out []string
	for _, l := range strings.Split(master, "\n") {
		f := strings.Fields(l)
		if len(f) >= 8 && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, " ") && !strings.HasPrefix(l, "\t") {
			if f[0] == "smtp" && f[1] == "inet" {
				f[0] = fmt.Sprintf("%s:%d", ip, port)
			}
			f[4] = "n"
			l = strings.Join(f, " ")
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

func (p *PostfixRX) write(name, content string) {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.conf, name), []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p *PostfixRX) writeAccess(m map[string]string) {
	var lines []string
	for k, v := range m {
		lines = append(lines, k+" "+v)
	}
	sort.Strings(lines)
	p.write("access", strings.Join(lines, "\n")+"\n")
}

// SetAccess replaces the RCPT answers and reloads Postfix.
func (p *PostfixRX) SetAccess(m map[string]string) {
	p.t.Helper()
	p.writeAccess(m)
	p.Postfix("reload")
}

// Postfix runs `postfix -c CONF args...`.
func (p *PostfixRX) Postfix(args ...string) string {
	p.t.Helper()
	out, err := exec.Command("postfix", append([]string{"-c", p.conf}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("postfix %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Postconf sets main.cf parameters (postconf -c CONF -e k=v).
func (p *PostfixRX) Postconf(kv ...string) {
	p.t.Helper()
	out, err := exec.Command("postconf", append([]string{"-c", p.conf, "-e"}, kv...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("postconf %v: %v: %s", kv, err, out)
	}
}

// Addr is host:port of its SMTP listener.
func (p *PostfixRX) Addr() string { return net.JoinHostPort(p.IP, fmt.Sprint(p.Port)) }

// Log is the instance's mail log.
func (p *PostfixRX) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// Maildir returns the messages delivered to a user's Maildir.
func (p *PostfixRX) Maildir(user string) []string {
	at := strings.LastIndexByte(user, '@')
	base := filepath.Join(p.Dir, "mail", user[at+1:], user[:at])
	var out []string
	for _, sub := range []string{"new", "cur"} {
		entries, _ := os.ReadDir(filepath.Join(base, sub))
		for _, e := range entries {
			if b, err := os.ReadFile(filepath.Join(base, sub, e.Name())); err == nil {
				out = append(out, string(b))
			}
		}
	}
	return out
}

// QueueSize counts the messages in its queue.
func (p *PostfixRX) QueueSize() int {
	n := 0
	for _, q := range []string{"maildrop", "incoming", "active", "deferred", "hold"} {
		_ = filepath.Walk(filepath.Join(p.Dir, "queue", q), func(_ string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				n++
			}
			return nil
		})
	}
	return n
}

func (p *PostfixRX) stop() {
	_ = exec.Command("postfix", "-c", p.conf, "stop").Run()
	// master waits for its children; give it a moment, then make sure.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(p.Dir, "data", "master.lock")); err != nil {
			break
		}
		if exec.Command("postfix", "-c", p.conf, "status").Run() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if p.t.Failed() {
		p.t.Logf("---- postfix %s log ----\n%s", p.Addr(), tail(p.Log(), 60))
	}
	_ = os.RemoveAll(p.Dir)
}

func run(t T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// FreeLoopback picks a loopback address 127.x.y.z with nothing listening
// on port.
func FreeLoopback(t T, port int) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		a, _ := rand.Int(rand.Reader, big.NewInt(40))
		b, _ := rand.Int(rand.Reader, big.NewInt(250))
		c, _ := rand.Int(rand.Reader, big.NewInt(250))
		ip := fmt.Sprintf("127.%d.%d.%d", 210+a.Int64(), 1+b.Int64(), 1+c.Int64())
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, fmt.Sprint(port)))
		if err == nil {
			ln.Close()
			return ip
		}
	}
	t.Fatal("no free loopback address")
	return ""
}

// SelfSignedPEM makes a certificate and key for host.
func SelfSignedPEM(t T, host string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
}
