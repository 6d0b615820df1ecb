package pop3

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// poplibScript drives Python's poplib against the server. Arguments: host,
// port, mode ("plain", "stls" or "apop"). It prints a JSON object.
const poplibScript = `
import json, poplib, ssl, sys

host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}
p = poplib.POP3(host, port, timeout=10)
out["welcome"] = p.getwelcome().decode()
out["capa_before"] = sorted(p.capa().keys())
if mode == "stls":
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    p.stls(context=ctx)
    out["tls_version"] = p.sock.version()
    out["capa_tls"] = sorted(p.capa().keys())
if mode == "apop":
    out["login"] = p.apop("alice", "secret").decode()
else:
    p.user("alice")
    out["login"] = p.pass_("secret").decode()
out["stat"] = list(p.stat())
_, lines, _ = p.list()
out["list"] = [l.decode() for l in lines]
_, lines, _ = p.uidl()
out["uidl"] = [l.decode() for l in lines]
out["uidl2"] = p.uidl(2).decode()
_, lines, octets = p.retr(1)
out["retr1"] = [l.decode() for l in lines]
_, lines, octets = p.retr(2)
out["retr2"] = [l.decode() for l in lines]
_, lines, _ = p.top(2, 1)
out["top2"] = [l.decode() for l in lines]
p.dele(1)
out["stat_after_dele"] = list(p.stat())
try:
    p.retr(1)
    out["retr_deleted"] = "no error"
except poplib.error_proto as e:
    out["retr_deleted"] = e.args[0].decode()
out["noop"] = p.noop().decode()
out["quit"] = p.quit().decode()
print(json.dumps(out))
`

type poplibResult struct {
	Welcome       string   `json:"welcome"`
	CapaBefore    []string `json:"capa_before"`
	TLSVersion    string   `json:"tls_version"`
	CapaTLS       []string `json:"capa_tls"`
	Login         string   `json:"login"`
	Stat          []int    `json:"stat"`
	List          []string `json:"list"`
	UIDL          []string `json:"uidl"`
	UIDL2         string   `json:"uidl2"`
	Retr1         []string `json:"retr1"`
	Retr2         []string `json:"retr2"`
	Top2          []string `json:"top2"`
	StatAfterDele []int    `json:"stat_after_dele"`
	RetrDeleted   string   `json:"retr_deleted"`
	Noop          string   `json:"noop"`
	Quit          string   `json:"quit"`
}

func runPoplib(t *testing.T, ts *testServer, mode string) poplibResult {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	host, port, _ := strings.Cut(ts.addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-c", poplibScript, host, port, mode)
	out, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("poplib (%s): %v\n%s", mode, err, stderr)
	}
	var res poplibResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("poplib output %q: %v", out, err)
	}
	return res
}

func checkPoplib(t *testing.T, ts *testServer, res poplibResult) {
	t.Helper()
	total := len(msgHello) + len(msgDots)
	check := func(what string, got, want any) {
		t.Helper()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %q, want %q", what, got, want)
		}
	}
	check("stat", res.Stat, []int{2, total})
	check("list", res.List, []string{fmt.Sprintf("1 %d", len(msgHello)), fmt.Sprintf("2 %d", len(msgDots))})
	check("uidl", res.UIDL, []string{"1 alice-1", "2 alice-2"})
	check("uidl 2", res.UIDL2, "+OK 2 alice-2")
	check("retr 1", res.Retr1, strings.Split(strings.TrimSuffix(msgHello, "\r\n"), "\r\n"))
	// poplib undoes the byte-stuffing; bare LF arrives as a line break.
	check("retr 2", res.Retr2, []string{"Subject: dots", "", ".", "..", ".leading", "bare", "lf", "no final newline"})
	check("top 2 1", res.Top2, []string{"Subject: dots", "", "."})
	check("stat after dele", res.StatAfterDele, []int{1, len(msgDots)})
	check("retr deleted", res.RetrDeleted, "-ERR message 1 already deleted")
	check("noop", res.Noop, "+OK")
	if !strings.HasPrefix(res.Quit, "+OK") {
		t.Errorf("quit: %q", res.Quit)
	}
	if got := ts.backend.messages("alice"); !slices.Equal(got, []string{"alice-2"}) {
		t.Errorf("after QUIT the maildrop holds %q", got)
	}
}

func TestPoplib(t *testing.T) {
	ts := newTestServer(t, nil)
	res := runPoplib(t, ts, "plain")
	if !slices.Contains(res.CapaBefore, "USER") || !slices.Contains(res.CapaBefore, "STLS") {
		t.Errorf("CAPA: %q", res.CapaBefore)
	}
	checkPoplib(t, ts, res)
}

func TestPoplibAPOP(t *testing.T) {
	ts := newTestServer(t, nil)
	checkPoplib(t, ts, runPoplib(t, ts, "apop"))
}

func TestPoplibSTLS(t *testing.T) {
	// Loopback counts as insecure here, so the login needs the STLS.
	ts := newTestServer(t, func(s *Server, _ *memBackend) { s.noLoopbackExemption = true })
	res := runPoplib(t, ts, "stls")
	if slices.Contains(res.CapaBefore, "USER") || !slices.Contains(res.CapaBefore, "STLS") {
		t.Errorf("CAPA before STLS: %q", res.CapaBefore)
	}
	if !slices.Contains(res.CapaTLS, "USER") || slices.Contains(res.CapaTLS, "STLS") {
		t.Errorf("CAPA after STLS: %q", res.CapaTLS)
	}
	if !strings.HasPrefix(res.TLSVersion, "TLSv1.") {
		t.Errorf("TLS version %q", res.TLSVersion)
	}
	checkPoplib(t, ts, res)
}
