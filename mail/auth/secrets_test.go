package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/md5"
	"errors"
	"strings"
	"testing"

	"github.com/xdg-go/scram"
)

func TestDeriveVerify(t *testing.T) {
	const pw = "correct horse battery staple"
	s, err := Derive(pw, TestParams())
	if err != nil {
		t.Fatal(err)
	}
	if want := "$argon2id$v=19$m=64,t=1,p=1$"; !strings.HasPrefix(s.Argon2id, want) {
		t.Errorf("Argon2id = %q, want prefix %q", s.Argon2id, want)
	}
	if !s.Verify(pw) {
		t.Error("Verify(right password) = false")
	}
	for _, wrong := range []string{"", "correct horse battery stapl", "Correct horse battery staple", pw + "\x00", "\xff"} {
		if s.Verify(wrong) {
			t.Errorf("Verify(%q) = true", wrong)
		}
	}
	if s.CRAMMD5 != nil {
		t.Error("CRAMMD5 set without Params.CRAMMD5")
	}
	if s.ScramIter != 4096 || len(s.ScramSalt) != saltLen {
		t.Errorf("SCRAM iter %d salt %d bytes", s.ScramIter, len(s.ScramSalt))
	}

	// Fresh salts each time.
	s2, err := Derive(pw, TestParams())
	if err != nil {
		t.Fatal(err)
	}
	if s2.Argon2id == s.Argon2id || bytes.Equal(s2.ScramSalt, s.ScramSalt) || bytes.Equal(s2.ScramStoredKey, s.ScramStoredKey) {
		t.Error("two derivations share salts")
	}
	if !s2.Verify(pw) || !s.Verify(pw) {
		t.Error("Verify fails on second derivation")
	}
}

// The SCRAM keys must be those an independent implementation computes.
func TestDeriveScramMatchesLibrary(t *testing.T) {
	for _, pw := range []string{"pencil", "I\u00ADX", "\u2168", "pass word"} {
		s, err := Derive(pw, TestParams())
		if err != nil {
			t.Fatal(err)
		}
		c, err := scram.SHA256.NewClient("user", pw, "")
		if err != nil {
			t.Fatal(err)
		}
		want := c.GetStoredCredentials(scram.KeyFactors{Salt: string(s.ScramSalt), Iters: s.ScramIter})
		if !bytes.Equal(want.StoredKey, s.ScramStoredKey) || !bytes.Equal(want.ServerKey, s.ScramServerKey) {
			t.Errorf("%q: SCRAM keys differ from xdg-go/scram's", pw)
		}
	}
}

func TestDeriveCRAMMD5(t *testing.T) {
	p := TestParams()
	p.CRAMMD5 = true
	for _, pw := range []string{"tanstaaftanstaaf", strings.Repeat("long", 40), strings.Repeat("x", md5.BlockSize)} {
		s, err := Derive(pw, p)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(s.CRAMMD5, []byte(pw)) {
			t.Errorf("CRAM-MD5 state contains the password")
		}
		msg := []byte("<1896.697170952@postoffice.reston.mci.net>")
		got, err := cramDigest(s.CRAMMD5, msg)
		if err != nil {
			t.Fatal(err)
		}
		mac := hmac.New(md5.New, []byte(pw))
		mac.Write(msg)
		if want := mac.Sum(nil); !bytes.Equal(got, want) {
			t.Errorf("%q: digest from state %x, HMAC-MD5 %x", pw, got, want)
		}
	}
}

func TestDeriveRejects(t *testing.T) {
	for _, pw := range []string{"", "a\x00b", "\xffabc"} {
		if _, err := Derive(pw, TestParams()); !errors.Is(err, ErrInvalidPassword) {
			t.Errorf("Derive(%q) error %v, want ErrInvalidPassword", pw, err)
		}
	}
	bad := []Params{
		{},
		{Memory: 64, Time: 0, Threads: 1, ScramIter: 4096},
		{Memory: 64, Time: 1, Threads: 0, ScramIter: 4096},
		{Memory: 4, Time: 1, Threads: 1, ScramIter: 4096},
		{Memory: 64, Time: 1, Threads: 1, ScramIter: 1000},
	}
	for _, p := range bad {
		if _, err := Derive("pw", p); err == nil {
			t.Errorf("Derive with %+v succeeded", p)
		}
	}
}

func TestDefaultParams(t *testing.T) {
	if testing.Short() {
		t.Skip("19 MiB argon2id")
	}
	s, err := Derive("pw", DefaultParams())
	if err != nil {
		t.Fatal(err)
	}
	if want := "$argon2id$v=19$m=19456,t=2,p=1$"; !strings.HasPrefix(s.Argon2id, want) {
		t.Errorf("Argon2id = %q, want prefix %q", s.Argon2id, want)
	}
	if !s.Verify("pw") || s.Verify("pW") {
		t.Error("Verify wrong with default params")
	}
}

// Verify must say no, not panic or allocate wildly, on corrupt records.
func TestVerifyMalformed(t *testing.T) {
	s, err := Derive("pw", TestParams())
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Split(s.Argon2id, "$")
	join := func(i int, v string) string {
		g := append([]string(nil), f...)
		g[i] = v
		return strings.Join(g, "$")
	}
	for _, h := range []string{
		"",
		"$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
		join(1, "argon2i"),
		join(2, "v=16"),
		join(3, "m=64,t=0,p=1"),
		join(3, "m=64,t=1,p=0"),
		join(3, "m=64,t=1,p=256"),
		join(3, "m=4294967295,t=1,p=1"),
		join(3, "m=64,t=1"),
		join(3, "t=1,m=64,p=1"),
		join(3, "m=+64,t=1,p=1"),
		join(4, "!!"),
		join(4, ""),
		join(5, "AAAA"),
		join(5, f[5]+"=="),
		s.Argon2id + "$",
	} {
		if (Secrets{Argon2id: h}).Verify("pw") {
			t.Errorf("Verify with %q = true", h)
		}
	}
	if !(Secrets{Argon2id: join(0, "")}).Verify("pw") {
		t.Error("control case fails")
	}
}
