package auth

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/smtp"
	"regexp"
	"slices"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/xdg-go/scram"
)

// RFC 7677 section 3.
const (
	rfc7677ClientNonce = "rOprNGfwEbeRWgbNEkqO"
	rfc7677ServerNonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfc7677Salt        = "W22ZaJ0SNY7soEsUEjb6gQ=="
	rfc7677ClientFirst = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfc7677ServerFirst = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfc7677ClientFinal = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfc7677ServerFinal = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
)

// RFC 2195 section 2.
const (
	rfc2195Challenge = "<1896.697170952@postoffice.reston.mci.net>"
	rfc2195Response  = "tim b913a602c7eda7a495b4e6e7334d3890"
)

var errBackend = errors.New("backend unavailable")

// testAccounts: user/pencil (RFC 7677, with CRAM-MD5), tim/tanstaaftanstaaf
// (RFC 2195 and 4616, with CRAM-MD5), nocram@example.com/secret (without),
// and broken@example.com, whose lookup fails.
func testAccounts() map[string]string {
	return map[string]string{"user": "pencil", "tim": "tanstaaftanstaaf", "nocram@example.com": "secret"}
}

func newTestMechanisms(tb testing.TB) *Mechanisms {
	tb.Helper()
	secrets := map[string]Secrets{}
	for user, pw := range testAccounts() {
		p := TestParams()
		p.CRAMMD5 = user != "nocram@example.com"
		s, err := Derive(pw, p)
		if err != nil {
			tb.Fatal(err)
		}
		if user == "user" {
			s.ScramSalt, _ = base64.StdEncoding.DecodeString(rfc7677Salt)
			if s.ScramStoredKey, s.ScramServerKey, err = scramKeys(pw, s.ScramSalt, s.ScramIter); err != nil {
				tb.Fatal(err)
			}
		}
		secrets[user] = s
	}
	return &Mechanisms{
		Lookup: func(ctx context.Context, user string) (Secrets, error) {
			if user == "broken@example.com" {
				return Secrets{}, errBackend
			}
			s, ok := secrets[user]
			if !ok {
				return Secrets{}, fmt.Errorf("%w: %q", ErrUnknownUser, user)
			}
			return s, nil
		},
		AllowCRAMMD5: true,
		Hostname:     "mx.example.com",
		DecoyParams:  TestParams(),
	}
}

// run drives srv with cli the way a protocol session does. With useIR the
// client's initial response goes with the first call; otherwise the server
// is first asked for a challenge.
func run(srv sasl.Server, cli sasl.Client, useIR bool) error {
	_, ir, err := cli.Start()
	if err != nil {
		return fmt.Errorf("client start: %w", err)
	}
	resp := ir
	if !useIR && ir != nil {
		ch, done, err := srv.Next(nil)
		if err != nil || done || len(ch) != 0 {
			return fmt.Errorf("asking for the initial response: %q %v %w", ch, done, err)
		}
	}
	for range 10 {
		ch, done, err := srv.Next(resp)
		if err != nil {
			return err
		}
		if done {
			if ch != nil {
				return fmt.Errorf("challenge %q returned with done", ch)
			}
			return nil
		}
		if resp, err = cli.Next(ch); err != nil {
			return fmt.Errorf("client: %w", err)
		}
		if resp == nil {
			resp = []byte{} // protocols send an empty line
		}
	}
	return errors.New("exchange does not end")
}

// scramClient is xdg-go/scram's client as a sasl.Client.
type scramClient struct{ conv *scram.ClientConversation }

func newScramClient(t testing.TB, user, pw, authz string) *scramClient {
	c, err := scram.SHA256.NewClient(user, pw, authz)
	if err != nil {
		t.Fatal(err)
	}
	return &scramClient{c.NewConversation()}
}

func (c *scramClient) Start() (string, []byte, error) {
	s, err := c.conv.Step("")
	return ScramSHA256, []byte(s), err
}

func (c *scramClient) Next(ch []byte) ([]byte, error) {
	s, err := c.conv.Step(string(ch))
	if err != nil {
		return nil, err
	}
	if c.conv.Done() {
		if !c.conv.Valid() {
			return nil, errors.New("server not verified")
		}
		return []byte{}, nil // the empty response that ends the exchange
	}
	return []byte(s), nil
}

// smtpAuthClient is net/smtp's CRAM-MD5 client as a sasl.Client.
type smtpAuthClient struct{ a smtp.Auth }

func (c smtpAuthClient) Start() (string, []byte, error) {
	return c.a.Start(&smtp.ServerInfo{Name: "mx.example.com", TLS: true, Auth: []string{CramMD5}})
}

func (c smtpAuthClient) Next(ch []byte) ([]byte, error) { return c.a.Next(ch, true) }

// loginNoIR answers LOGIN's prompts without an initial response.
type loginNoIR struct{ user, pw string }

func (c loginNoIR) Start() (string, []byte, error) { return Login, nil, nil }

func (c loginNoIR) Next(ch []byte) ([]byte, error) {
	switch string(ch) {
	case "Username:":
		return []byte(c.user), nil
	case "Password:":
		return []byte(c.pw), nil
	}
	return nil, fmt.Errorf("unexpected challenge %q", ch)
}

type clientCase struct {
	name  string
	mech  string
	useIR bool
	new   func(t testing.TB, user, pw string) sasl.Client
}

var clientCases = []clientCase{
	{"PLAIN/go-sasl/IR", Plain, true, func(_ testing.TB, u, p string) sasl.Client { return sasl.NewPlainClient("", u, p) }},
	{"PLAIN/go-sasl/noIR", Plain, false, func(_ testing.TB, u, p string) sasl.Client { return sasl.NewPlainClient("", u, p) }},
	{"PLAIN/go-sasl/authz=authc", Plain, true, func(_ testing.TB, u, p string) sasl.Client { return sasl.NewPlainClient(u, u, p) }},
	{"LOGIN/go-sasl/IR", Login, true, func(_ testing.TB, u, p string) sasl.Client { return sasl.NewLoginClient(u, p) }},
	{"LOGIN/prompts", Login, true, func(_ testing.TB, u, p string) sasl.Client { return loginNoIR{u, p} }},
	{"CRAM-MD5/net/smtp", CramMD5, true, func(_ testing.TB, u, p string) sasl.Client { return smtpAuthClient{smtp.CRAMMD5Auth(u, p)} }},
	{"SCRAM-SHA-256/xdg-go/IR", ScramSHA256, true, func(t testing.TB, u, p string) sasl.Client { return newScramClient(t, u, p, "") }},
	{"SCRAM-SHA-256/xdg-go/noIR", ScramSHA256, false, func(t testing.TB, u, p string) sasl.Client { return newScramClient(t, u, p, "") }},
}

func TestExchanges(t *testing.T) {
	m := newTestMechanisms(t)
	for _, cc := range clientCases {
		t.Run(cc.name, func(t *testing.T) {
			for user, pw := range testAccounts() {
				if cc.mech == CramMD5 && user == "nocram@example.com" {
					continue
				}
				srv, res, err := m.New(t.Context(), cc.mech, true)
				if err != nil {
					t.Fatal(err)
				}
				if err := run(srv, cc.new(t, user, pw), cc.useIR); err != nil {
					t.Fatalf("%s: %v", user, err)
				}
				if res.Username != user || res.Mechanism != cc.mech {
					t.Errorf("result %+v, want %s by %s", res, user, cc.mech)
				}
				if _, _, err := srv.Next([]byte("more")); !errors.Is(err, ErrMalformed) {
					t.Errorf("Next after success: %v", err)
				}
			}

			// Wrong password and unknown user must be indistinguishable.
			var msgs []string
			for _, up := range [][2]string{{"user", "pencil!"}, {"nobody@example.com", "pencil"}, {"tim", "pencil"}} {
				srv, res, err := m.New(t.Context(), cc.mech, true)
				if err != nil {
					t.Fatal(err)
				}
				err = run(srv, cc.new(t, up[0], up[1]), cc.useIR)
				if !errors.Is(err, ErrBadCredentials) {
					t.Fatalf("%s/%s: error %v, want ErrBadCredentials", up[0], up[1], err)
				}
				if res.Username != "" {
					t.Errorf("failed exchange filled in %+v", res)
				}
				msgs = append(msgs, err.Error())
			}
			if len(slices.Compact(slices.Clone(msgs))) != 1 {
				t.Errorf("failure messages differ: %q", msgs)
			}

			// A failing backend is not a credentials problem.
			srv, _, _ := m.New(t.Context(), cc.mech, true)
			if err := run(srv, cc.new(t, "broken@example.com", "x"), cc.useIR); !errors.Is(err, errBackend) || errors.Is(err, ErrBadCredentials) {
				t.Errorf("backend failure: %v", err)
			}
		})
	}
}

func TestCRAMMD5RFC2195(t *testing.T) {
	m := newTestMechanisms(t)
	m.cramChallenge = func() string { return rfc2195Challenge }
	srv, res, err := m.New(t.Context(), "cram-md5", false)
	if err != nil {
		t.Fatal(err)
	}
	ch, done, err := srv.Next(nil)
	if err != nil || done || string(ch) != rfc2195Challenge {
		t.Fatalf("challenge %q %v %v", ch, done, err)
	}
	ch, done, err = srv.Next([]byte(rfc2195Response))
	if err != nil || !done || ch != nil {
		t.Fatalf("response: %q %v %v", ch, done, err)
	}
	if res.Username != "tim" {
		t.Errorf("user %q", res.Username)
	}

	for _, tc := range []struct {
		resp string
		want error
	}{
		{"tim b913a602c7eda7a495b4e6e7334d3891", ErrBadCredentials},
		{"tom b913a602c7eda7a495b4e6e7334d3890", ErrBadCredentials},
		{"nocram@example.com b913a602c7eda7a495b4e6e7334d3890", ErrBadCredentials},
		{"tim B913A602C7EDA7A495B4E6E7334D3890", nil}, // hex case does not matter
		{"tim b913a602c7eda7a495b4e6e7334d389", ErrMalformed},
		{"tim b913a602c7eda7a495b4e6e7334d389x", ErrMalformed},
		{"timb913a602c7eda7a495b4e6e7334d3890", ErrMalformed},
		{" b913a602c7eda7a495b4e6e7334d3890", ErrMalformed},
		{"", ErrMalformed},
	} {
		srv, _, _ := m.New(t.Context(), CramMD5, false)
		srv.Next(nil)
		if _, _, err := srv.Next([]byte(tc.resp)); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%q: %v, want %v", tc.resp, err, tc.want)
		}
	}

	// The default challenge is unique and names the host.
	m.cramChallenge = nil
	a, _, _ := mustNew(t, m, CramMD5).Next(nil)
	b, _, _ := mustNew(t, m, CramMD5).Next(nil)
	if string(a) == string(b) || !regexpMatch(`^<[0-9]+\.[0-9]+@mx\.example\.com>$`, a) {
		t.Errorf("challenges %q %q", a, b)
	}
}

func TestScramRFC7677(t *testing.T) {
	m := newTestMechanisms(t)
	m.scramNonce = func() string { return rfc7677ServerNonce }
	srv, res, err := m.New(t.Context(), ScramSHA256, false)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct{ in, out string }{
		{rfc7677ClientFirst, rfc7677ServerFirst},
		{rfc7677ClientFinal, rfc7677ServerFinal},
	}
	for _, s := range steps {
		ch, done, err := srv.Next([]byte(s.in))
		if err != nil || done || string(ch) != s.out {
			t.Fatalf("after %q: %q %v %v, want %q", s.in, ch, done, err, s.out)
		}
	}
	if res.Username != "" {
		t.Error("authenticated before the client acknowledged server-final")
	}
	ch, done, err := srv.Next([]byte{})
	if err != nil || !done || ch != nil || res.Username != "user" {
		t.Fatalf("final: %q %v %v %+v", ch, done, err, res)
	}

	// The independent client, given the RFC's nonce, says the same.
	c, _ := scram.SHA256.NewClient("user", "pencil", "")
	conv := c.WithNonceGenerator(func() string { return rfc7677ClientNonce }).NewConversation()
	first, _ := conv.Step("")
	final, err := conv.Step(rfc7677ServerFirst)
	if err != nil || first != rfc7677ClientFirst || final != rfc7677ClientFinal {
		t.Errorf("xdg-go client: %q %q %v", first, final, err)
	}
}

func TestScramErrors(t *testing.T) {
	m := newTestMechanisms(t)
	m.scramNonce = func() string { return rfc7677ServerNonce }
	for _, tc := range []struct {
		name  string
		steps []string
		want  error
	}{
		{"channel binding", []string{"p=tls-server-end-point,,n=user,r=abc"}, ErrUnsupported},
		{"authzid", []string{"n,a=tim,n=user,r=abc"}, ErrAuthzDenied},
		{"garbage", []string{"hello"}, ErrMalformed},
		{"empty first", []string{""}, ErrMalformed},
		{"not utf-8", []string{"n,,n=\xff,r=abc"}, ErrMalformed},
		{"empty user", []string{"n,,n=,r=abc"}, ErrMalformed},
		{"extension", []string{"n,,m=x,n=user,r=abc"}, ErrMalformed},
		{"wrong nonce", []string{rfc7677ClientFirst, "c=biws,r=other,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="}, ErrMalformed},
		{"wrong proof", []string{rfc7677ClientFirst, rfc7677ClientFinal[:len(rfc7677ClientFinal)-5] + "AAAA="}, ErrBadCredentials},
		{"short proof", []string{rfc7677ClientFirst, "c=biws,r=" + rfc7677ClientNonce + rfc7677ServerNonce + ",p=AAAA"}, ErrMalformed},
		{"wrong cbind", []string{rfc7677ClientFirst, "c=eSws," + rfc7677ClientFinal[len("c=biws,"):]}, ErrMalformed},
		{"non-empty ack", []string{rfc7677ClientFirst, rfc7677ClientFinal, "v=abc"}, ErrMalformed},
		{"backend", []string{"n,,n=broken@example.com,r=abc"}, errBackend},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := mustNew(t, m, ScramSHA256)
			var err error
			for _, s := range tc.steps {
				if _, _, err = srv.Next([]byte(s)); err != nil {
					break
				}
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}

	// "y" (client could bind, thinks we cannot) is fine since we do not
	// offer -PLUS.
	srv := mustNew(t, m, ScramSHA256)
	if _, _, err := srv.Next([]byte("y,,n=user,r=abc")); err != nil {
		t.Errorf("gs2 flag y: %v", err)
	}
}

// An unknown user must get the same kind of server-first as a real one,
// stable across exchanges, nodes and restarts that share DecoyKey.
func TestScramDecoy(t *testing.T) {
	first := func(m *Mechanisms, user string) string {
		ch, _, err := mustNew(t, m, ScramSHA256).Next([]byte("n,,n=" + user + ",r=abc"))
		if err != nil {
			t.Fatal(err)
		}
		return string(ch)
	}
	m1, m2, m3 := newTestMechanisms(t), newTestMechanisms(t), newTestMechanisms(t)
	m1.DecoyKey, m2.DecoyKey = []byte("cluster key"), []byte("cluster key")
	for _, m := range []*Mechanisms{m1, m2, m3} {
		m.scramNonce = func() string { return "N" }
	}
	ghost := first(m1, "ghost@example.com")
	if !regexpMatch(`^r=abcN,s=[A-Za-z0-9+/]{22}==,i=4096$`, []byte(ghost)) {
		t.Errorf("decoy server-first %q", ghost)
	}
	if first(m1, "ghost@example.com") != ghost || first(m2, "ghost@example.com") != ghost {
		t.Error("decoy salt changes between exchanges or nodes")
	}
	if first(m1, "other@example.com") == ghost || first(m3, "ghost@example.com") == ghost {
		t.Error("decoy salt does not depend on user and key")
	}
	if first(m3, "ghost@example.com") != first(m3, "ghost@example.com") {
		t.Error("random decoy key changes within one Mechanisms")
	}
}

func TestPlainRFC4616(t *testing.T) {
	m := newTestMechanisms(t)
	for _, tc := range []struct {
		msg  string
		want error
	}{
		{"\x00tim\x00tanstaaftanstaaf", nil},
		{"tim\x00tim\x00tanstaaftanstaaf", nil},
		{"Ursel\x00Kurt\x00xipj3plmq", ErrAuthzDenied},
		{"user\x00tim\x00tanstaaftanstaaf", ErrAuthzDenied},
		{"\x00tim\x00tanstaaftanstaaX", ErrBadCredentials},
		{"\x00tim\x00", ErrBadCredentials},
		{"\x00\x00tanstaaftanstaaf", ErrMalformed},
		{"\x00tim", ErrMalformed},
		{"\x00tim\x00tanstaaf\x00tanstaaf", ErrMalformed},
		{"", ErrMalformed},
	} {
		srv, res, _ := m.New(t.Context(), Plain, true)
		_, done, err := srv.Next([]byte(tc.msg))
		if !done || !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("%q: done %v err %v, want %v", tc.msg, done, err, tc.want)
		}
		if (err == nil) != (res.Username == "tim") {
			t.Errorf("%q: result %+v", tc.msg, res)
		}
	}
}

func TestLoginErrors(t *testing.T) {
	m := newTestMechanisms(t)
	srv := mustNew(t, m, Login)
	if ch, _, err := srv.Next([]byte{}); err != nil || string(ch) != "Username:" {
		t.Errorf("empty initial response: %q %v", ch, err)
	}
	if _, _, err := srv.Next([]byte("")); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty user name: %v", err)
	}
	srv = mustNew(t, m, Login)
	srv.Next([]byte("tim"))
	if _, _, err := srv.Next(nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("nil password: %v", err)
	}
}

func TestNamesAndNew(t *testing.T) {
	m := newTestMechanisms(t)
	if got := m.Names(true); !slices.Equal(got, []string{ScramSHA256, Plain, Login, CramMD5}) {
		t.Errorf("Names(true) = %q", got)
	}
	if got := m.Names(false); !slices.Equal(got, []string{ScramSHA256, CramMD5}) {
		t.Errorf("Names(false) = %q", got)
	}
	m.AllowCRAMMD5 = false
	if got := m.Names(false); !slices.Equal(got, []string{ScramSHA256}) {
		t.Errorf("Names(false) without CRAM-MD5 = %q", got)
	}
	for _, tc := range []struct {
		name string
		tls  bool
		want error
	}{
		{"scram-sha-256", false, nil},
		{"Plain", true, nil},
		{"PLAIN", false, ErrEncryptionRequired},
		{"LOGIN", false, ErrEncryptionRequired},
		{"CRAM-MD5", true, ErrUnsupported},
		{"SCRAM-SHA-256-PLUS", true, ErrUnsupported},
		{"XOAUTH2", true, ErrUnsupported},
	} {
		srv, res, err := m.New(t.Context(), tc.name, tc.tls)
		if !errors.Is(err, tc.want) || (err == nil) != (srv != nil && res != nil) {
			t.Errorf("New(%q, %v): %v, want %v", tc.name, tc.tls, err, tc.want)
		}
	}
	if _, _, err := (&Mechanisms{}).New(t.Context(), Plain, true); err == nil {
		t.Error("New without Lookup succeeded")
	}
}

func TestCancelled(t *testing.T) {
	m := newTestMechanisms(t)
	for _, mech := range []string{Plain, Login, CramMD5, ScramSHA256} {
		ctx, cancel := context.WithCancel(t.Context())
		srv, res, err := m.New(ctx, mech, true)
		if err != nil {
			t.Fatal(err)
		}
		srv.Next(nil)
		cancel()
		if _, _, err := srv.Next([]byte("\x00tim\x00tanstaaftanstaaf")); !errors.Is(err, context.Canceled) {
			t.Errorf("%s: %v, want context.Canceled", mech, err)
		}
		if _, _, err := srv.Next(nil); !errors.Is(err, ErrMalformed) || res.Username != "" {
			t.Errorf("%s after cancel: %v %+v", mech, err, res)
		}
	}
}

func regexpMatch(pattern string, b []byte) bool {
	return regexp.MustCompile(pattern).Match(b)
}

func mustNew(t testing.TB, m *Mechanisms, mech string) sasl.Server {
	t.Helper()
	srv, _, err := m.New(t.Context(), mech, true)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}
