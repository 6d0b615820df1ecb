package smtp

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// pySend is a Python smtplib client: it connects (STARTTLS, implicit TLS or
// cleartext), authenticates with the given mechanism through smtplib's own
// implementations, sends one message and prints what happened as JSON.
const pySend = `
import json, smtplib, ssl, sys
host, port, mode, mech, user, pw, frm, to, cafile = sys.argv[1:10]
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
out = {}
try:
    if mode == "ssl":
        s = smtplib.SMTP_SSL(host, int(port), context=ctx, timeout=30)
    else:
        s = smtplib.SMTP(host, int(port), timeout=30)
    s.ehlo("python.test")
    if mode == "starttls":
        s.starttls(context=ctx)
        s.ehlo("python.test")
    out["auth_advertised"] = s.esmtp_features.get("auth", "")
    if mech:
        s.user, s.password = user, pw
        fn = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login, "CRAM-MD5": s.auth_cram_md5}[mech]
        out["auth"] = list(s.auth(mech, fn))
        out["auth"][1] = out["auth"][1].decode()
    msg = "From: %s\r\nTo: %s\r\nSubject: from smtplib\r\n\r\nHello from Python.\r\n" % (frm, to)
    out["refused"] = s.sendmail(frm, to.split(","), msg)
    s.quit()
    out["ok"] = True
except smtplib.SMTPResponseException as e:
    out["error"] = [e.smtp_code, e.smtp_error.decode(errors="replace")]
except smtplib.SMTPRecipientsRefused as e:
    out["error"] = ["rcpt", str(e)]
print(json.dumps(out))
`

type pyResult struct {
	OK             bool           `json:"ok"`
	AuthAdvertised string         `json:"auth_advertised"`
	Auth           []any          `json:"auth"`
	Refused        map[string]any `json:"refused"`
	Error          []any          `json:"error"`
}

func (e *env) python(kind Kind, mode, mech, user, pw, from, to string) pyResult {
	e.t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		e.t.Skip("python3 not installed")
	}
	dir := e.t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	// The client trusts the server's self-signed certificate.
	if err := os.WriteFile(ca, e.certPEM(), 0o600); err != nil {
		e.t.Fatal(err)
	}
	host, port, _ := strings.Cut(e.addr[kind], ":")
	cmd := exec.Command("python3", "-c", pySend, host, port, mode, mech, user, pw, from, to, ca)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		e.t.Fatalf("python: %v\n%s%s", err, out, stderr.String())
	}
	var r pyResult
	if err := json.Unmarshal(out, &r); err != nil {
		e.t.Fatalf("python output %q: %v\n%s", out, err, stderr.String())
	}
	return r
}

func TestPythonSmtplib(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		kind       Kind
		mode, mech string
		user, pw   string
		ok         bool
	}{
		{Submission, "starttls", "PLAIN", "alice@example.org", password, true},
		{Submission, "starttls", "LOGIN", "alice@example.org", password, true},
		{Submission, "starttls", "CRAM-MD5", "alice@example.org", password, true},
		{SubmissionTLS, "ssl", "PLAIN", "alice@example.org", password, true},
		{SubmissionTLS, "ssl", "CRAM-MD5", "alice@example.org", password, true},
		{Submission, "starttls", "PLAIN", "alice@example.org", "wrong", false},
		{Submission, "starttls", "CRAM-MD5", "alice@example.org", "wrong", false},
		// bob's secrets have no CRAM-MD5 state: it fails like a wrong password
		{Submission, "starttls", "CRAM-MD5", "bob@example.org", password, false},
		{Submission, "starttls", "LOGIN", "bob@example.org", password, true},
	} {
		from := tc.user
		r := e.python(tc.kind, tc.mode, tc.mech, tc.user, tc.pw, from, "bob@example.org")
		if !strings.Contains(r.AuthAdvertised, "SCRAM-SHA-256") || !strings.Contains(r.AuthAdvertised, "CRAM-MD5") {
			t.Errorf("advertised %q", r.AuthAdvertised)
		}
		if r.OK != tc.ok {
			t.Errorf("%s %s %s %s: %+v", tc.kind, tc.mode, tc.mech, tc.user, r)
		}
		if !tc.ok && (len(r.Error) != 2 || r.Error[0] != float64(535)) {
			t.Errorf("%s %s %s: error %v, want 535", tc.kind, tc.mech, tc.pw, r.Error)
		}
	}
	got := e.inbox("bob@example.org")
	if len(got) != 6 {
		t.Fatalf("bob has %d messages, want 6", len(got))
	}
	for _, m := range got {
		if !bytes.Contains(m, []byte("by mx.test (Flotilla) with ESMTPSA")) || !bytes.Contains(m, []byte("\r\nMessage-ID: <")) ||
			!bytes.HasSuffix(m, []byte("\r\n\r\nHello from Python.\r\n")) {
			t.Errorf("message:\n%s", m)
		}
	}
	// Cleartext MX from loopback, no AUTH: delivery to a local user works,
	// relaying does not.
	r := e.python(MX, "plain", "", "", "", "someone@remote.test", "alice@example.org")
	if !r.OK {
		t.Errorf("MX: %+v", r)
	}
	r = e.python(MX, "plain", "", "", "", "someone@remote.test", "victim@elsewhere.test")
	if r.OK || len(r.Error) == 0 || r.Error[0] != "rcpt" || !strings.Contains(r.Error[1].(string), "550") {
		t.Errorf("relay through MX: %+v", r)
	}
}
