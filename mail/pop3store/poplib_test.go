package pop3store

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// poplibScript drives Python's poplib. Arguments: host, port, mode
// ("plain", "stls" or "pop3s"), user, password, and the message numbers to
// DELE before QUIT, comma-separated. It prints a JSON object; messages as
// poplib returns them, lines joined with CRLF, in base64.
const poplibScript = `
import base64, json, poplib, ssl, sys

host, port, mode, user, pw, dele = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if mode == "pop3s":
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=20)
else:
    p = poplib.POP3(host, port, timeout=20)
out = {"welcome": p.getwelcome().decode(), "capa": sorted(p.capa().keys())}
if mode == "stls":
    p.stls(context=ctx)
    out["capa_tls"] = sorted(p.capa().keys())
if mode != "plain":
    out["tls"] = p.sock.version()
p.user(user)
out["login"] = p.pass_(pw).decode()
out["stat"] = list(p.stat())
_, lines, _ = p.list()
out["list"] = [l.decode() for l in lines]
_, lines, _ = p.uidl()
out["uidl"] = [l.decode() for l in lines]
joined = lambda lines: base64.b64encode(b"".join(l + b"\r\n" for l in lines)).decode()
out["retr"] = []
for i in range(1, out["stat"][0] + 1):
    _, lines, octets = p.retr(i)
    out["retr"].append(joined(lines))
if out["stat"][0] >= 2:
    _, lines, _ = p.top(2, 1)
    out["top2"] = joined(lines)
for n in dele.split(","):
    if n:
        p.dele(int(n))
out["quit"] = p.quit().decode()
print(json.dumps(out))
`

type poplibResult struct {
	Welcome string   `json:"welcome"`
	Capa    []string `json:"capa"`
	CapaTLS []string `json:"capa_tls"`
	TLS     string   `json:"tls"`
	Login   string   `json:"login"`
	Stat    []int64  `json:"stat"`
	List    []string `json:"list"`
	UIDL    []string `json:"uidl"`
	Retr    []string `json:"retr"`
	Top2    string   `json:"top2"`
	Quit    string   `json:"quit"`
}

func runPoplib(t *testing.T, addr, mode, dele string) poplibResult {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	host, port, _ := strings.Cut(addr, ":")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, python, "-c", poplibScript, host, port, mode, testUser, testPassword, dele).Output()
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

func unbase64(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPoplib retrieves the maildrop with Python's poplib over cleartext
// (loopback), STLS and implicit TLS: listings, unique-ids, byte-identical
// messages, TOP; and checks that QUIT removes exactly the DELE'd messages.
func TestPoplib(t *testing.T) {
	e := newEnv(t)
	s := e.serve("n1", nil)
	mb, stored := e.inbox()
	var total int64
	var wantList, wantUIDL []string
	for i, uid := range e.uids() {
		total += int64(len(stored[uid]))
		wantList = append(wantList, fmt.Sprintf("%d %d", i+1, len(stored[uid])))
		wantUIDL = append(wantUIDL, fmt.Sprintf("%d %d.%d", i+1, mb.UIDValidity, uid))
	}

	for _, tc := range []struct{ mode, addr string }{{"plain", s.addr}, {"stls", s.addr}, {"pop3s", s.tlsAddr}} {
		t.Run(tc.mode, func(t *testing.T) {
			res := runPoplib(t, tc.addr, tc.mode, "")
			if strings.Contains(res.Welcome, "<") {
				t.Errorf("greeting %q offers APOP", res.Welcome)
			}
			for _, c := range []string{"TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING", "SASL"} {
				if !slices.Contains(res.Capa, c) {
					t.Errorf("CAPA %q lacks %s", res.Capa, c)
				}
			}
			if got := slices.Contains(res.Capa, "STLS"); got != (tc.mode != "pop3s") {
				t.Errorf("CAPA %q: STLS offered %v", res.Capa, got)
			}
			if tc.mode != "plain" && !strings.HasPrefix(res.TLS, "TLSv1.") {
				t.Errorf("TLS version %q", res.TLS)
			}
			if fmt.Sprint(res.Stat) != fmt.Sprint([]int64{int64(len(stored)), total}) {
				t.Errorf("STAT %v, want %d messages, %d octets", res.Stat, len(stored), total)
			}
			if !slices.Equal(res.List, wantList) {
				t.Errorf("LIST %q, want %q", res.List, wantList)
			}
			if !slices.Equal(res.UIDL, wantUIDL) {
				t.Errorf("UIDL %q, want %q", res.UIDL, wantUIDL)
			}
			for i, uid := range e.uids() {
				if got := unbase64(t, res.Retr[i]); got != stored[uid] {
					t.Errorf("RETR %d: got %q, want %q", i+1, got, stored[uid])
				}
			}
			if got, want := unbase64(t, res.Top2), "Subject: dots\r\n\r\n.\r\n"; got != want {
				t.Errorf("TOP 2 1: got %q, want %q", got, want)
			}
		})
	}

	// Delete messages 1 and 3; QUIT removes exactly those.
	uids := e.uids()
	res := runPoplib(t, s.addr, "plain", "1,3")
	if !strings.HasPrefix(res.Quit, "+OK") {
		t.Fatalf("QUIT: %q", res.Quit)
	}
	if got := e.uids(); !slices.Equal(got, []uint32{uids[1]}) {
		t.Fatalf("after DELE 1, DELE 3, QUIT the INBOX holds UIDs %v, want [%d]", got, uids[1])
	}
	// The unique-id of the message left did not change.
	res = runPoplib(t, s.addr, "plain", "")
	if want := fmt.Sprintf("1 %d.%d", mb.UIDValidity, uids[1]); !slices.Equal(res.UIDL, []string{want}) {
		t.Errorf("UIDL after deletion %q, want %q", res.UIDL, want)
	}
}
