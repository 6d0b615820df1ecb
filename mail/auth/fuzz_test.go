package auth

import (
	"bytes"
	"errors"
	"testing"
)

// The fuzz targets drive whole exchanges. The input is split at '\n' into
// client responses; unless ir, the exchange starts with a nil response (no
// initial response). Whatever the input, an exchange must end in an error
// matching a sentinel or in success for a real account, never panic, and
// refuse to go on once finished.

func FuzzPLAIN(f *testing.F) {
	f.Add(true, []byte("\x00tim\x00tanstaaftanstaaf"))
	f.Add(false, []byte("\x00tim\x00tanstaaftanstaaf"))
	f.Add(true, []byte("tim\x00tim\x00tanstaaftanstaaf"))
	f.Add(true, []byte("Ursel\x00Kurt\x00xipj3plmq"))
	f.Add(true, []byte("\x00broken@example.com\x00x"))
	f.Add(false, []byte("\n\x00tim\x00x"))
	fuzzExchange(f, Plain)
}

func FuzzLOGIN(f *testing.F) {
	f.Add(true, []byte("tim\ntanstaaftanstaaf"))
	f.Add(false, []byte("tim\ntanstaaftanstaaf"))
	f.Add(false, []byte("\ntim\ntanstaaftanstaaf"))
	f.Add(true, []byte("nobody\nx\ny"))
	fuzzExchange(f, Login)
}

func FuzzCRAMMD5(f *testing.F) {
	f.Add(false, []byte(rfc2195Response))
	f.Add(true, []byte("\n"+rfc2195Response))
	f.Add(false, []byte("tim b913a602c7eda7a495b4e6e7334d389g"))
	f.Add(false, []byte("broken@example.com b913a602c7eda7a495b4e6e7334d3890\nx"))
	fuzzExchange(f, CramMD5)
}

func FuzzSCRAM(f *testing.F) {
	rfc := rfc7677ClientFirst + "\n" + rfc7677ClientFinal + "\n"
	f.Add(true, []byte(rfc))
	f.Add(false, []byte(rfc))
	f.Add(true, []byte("n,a=user,n=user,r=x\nc=biws,r=x,p=AAAA\n"))
	f.Add(true, []byte("y,,n=nobody,r=x\nc=eSws,r=x"+rfc7677ServerNonce+",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=\n"))
	f.Add(true, []byte("p=tls-unique,,n=user,r=x"))
	f.Add(true, []byte("n,,n=us=2Cer,r=x,ext=1\nc=biws,r=x,e=1,p=\n"))
	fuzzExchange(f, ScramSHA256)
}

func fuzzExchange(f *testing.F, mech string) {
	m := newTestMechanisms(f)
	m.scramNonce = func() string { return rfc7677ServerNonce }
	m.cramChallenge = func() string { return rfc2195Challenge }
	accounts := testAccounts()
	sentinels := []error{ErrBadCredentials, ErrAuthzDenied, ErrMalformed, ErrUnsupported, errBackend}

	f.Fuzz(func(t *testing.T, ir bool, data []byte) {
		srv, res, err := m.New(t.Context(), mech, true)
		if err != nil {
			t.Fatal(err)
		}
		var resps [][]byte
		if !ir {
			resps = append(resps, nil)
		}
		resps = append(resps, bytes.Split(data, []byte("\n"))...)
		for _, resp := range resps {
			ch, done, err := srv.Next(resp)
			if !done && err == nil {
				continue
			}
			switch {
			case err != nil && res.Username != "":
				t.Fatalf("error %v with identity %q", err, res.Username)
			case err != nil && !matchesAny(err, sentinels):
				t.Fatalf("error %v matches no sentinel", err)
			case err == nil && ch != nil:
				t.Fatalf("challenge %q with done", ch)
			case err == nil:
				pw, ok := accounts[res.Username]
				if !ok {
					t.Fatalf("authenticated unknown %q", res.Username)
				}
				if (mech == Plain || mech == Login) && !bytes.Contains(data, []byte(pw)) {
					t.Fatalf("authenticated %q without the password", res.Username)
				}
			}
			if _, _, err := srv.Next(resp); !errors.Is(err, ErrMalformed) {
				t.Fatalf("Next after the end: %v", err)
			}
			return
		}
	})
}

func matchesAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
