package auth

import (
	"context"
	"errors"
	"io"
	"log"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// These tests run the real go-smtp and go-imap servers and clients over
// loopback, to show that every mechanism, SCRAM's server-final included,
// survives the protocol loops the way the sessions will use them.

type smtpBackend struct {
	m      *Mechanisms
	authed chan string // the identity, sent by MAIL FROM
}

func (b *smtpBackend) NewSession(*smtp.Conn) (smtp.Session, error) {
	return &smtpSession{b: b}, nil
}

type smtpSession struct {
	b   *smtpBackend
	res *Result
}

func (s *smtpSession) AuthMechanisms() []string { return s.b.m.Names(true) }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	srv, res, err := s.b.m.New(context.Background(), mech, true)
	if err != nil {
		return nil, err
	}
	s.res = res
	return smtpErrors{srv}, nil
}

// smtpErrors maps errors to replies, as the real session will.
type smtpErrors struct{ sasl.Server }

func (x smtpErrors) Next(resp []byte) ([]byte, bool, error) {
	ch, done, err := x.Server.Next(resp)
	if errors.Is(err, ErrBadCredentials) {
		err = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	}
	return ch, done, err
}

func (s *smtpSession) Mail(string, *smtp.MailOptions) error {
	user := ""
	if s.res != nil {
		user = s.res.Username
	}
	s.b.authed <- user
	return nil
}

func (s *smtpSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *smtpSession) Data(io.Reader) error                 { return nil }
func (s *smtpSession) Reset()                               {}
func (s *smtpSession) Logout() error                        { return nil }

func listen(t *testing.T) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// dial connects with a deadline, so that a protocol mix-up fails the test
// instead of hanging it.
func dial(t *testing.T, l net.Listener) net.Conn {
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn
}

// identity waits for the session to report who logged in.
func identity(t *testing.T, ch <-chan string) string {
	select {
	case u := <-ch:
		return u
	case <-time.After(10 * time.Second):
		t.Fatal("session did not report an identity")
		return ""
	}
}

func TestSMTP(t *testing.T) {
	be := &smtpBackend{m: newTestMechanisms(t), authed: make(chan string, 1)}
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	l := listen(t)
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })

	for _, cc := range clientCases {
		if !cc.useIR {
			continue // the go-smtp client always sends what it has
		}
		t.Run(cc.name, func(t *testing.T) {
			c := smtp.NewClient(dial(t, l))
			defer c.Close()
			if err := c.Auth(cc.new(t, "tim", "tanstaaftanstaaf")); err != nil {
				t.Fatalf("AUTH: %v", err)
			}
			if err := c.Mail("tim@example.com", nil); err != nil {
				t.Fatal(err)
			}
			if got := identity(t, be.authed); got != "tim" {
				t.Errorf("session identity %q", got)
			}

			c2 := smtp.NewClient(dial(t, l))
			defer c2.Close()
			var serr *smtp.SMTPError
			if err := c2.Auth(cc.new(t, "tim", "wrong")); !errors.As(err, &serr) || serr.Code != 535 {
				t.Errorf("wrong password: %v", err)
			}
		})
	}
}

// imapSession implements only what an unauthenticated IMAP session and
// this test need; the embedded nil interface is never reached.
type imapSession struct {
	imapserver.Session
	m      *Mechanisms
	res    *Result
	authed chan string
}

func (s *imapSession) Close() error                          { return nil }
func (s *imapSession) Login(username, password string) error { return errors.New("use AUTHENTICATE") }
func (s *imapSession) AuthenticateMechanisms() []string      { return s.m.Names(true) }

func (s *imapSession) Authenticate(mech string) (sasl.Server, error) {
	srv, res, err := s.m.New(context.Background(), mech, true)
	if err != nil {
		return nil, err
	}
	s.res = res
	return imapErrors{srv}, nil
}

// imapErrors maps errors to responses, as the real session will.
type imapErrors struct{ sasl.Server }

func (x imapErrors) Next(resp []byte) ([]byte, bool, error) {
	ch, done, err := x.Server.Next(resp)
	if errors.Is(err, ErrBadCredentials) {
		err = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "Invalid credentials"}
	}
	return ch, done, err
}

// Poll runs before every command once authenticated.
func (s *imapSession) Poll(*imapserver.UpdateWriter, bool) error { return nil }

func (s *imapSession) Create(string, *imap.CreateOptions) error {
	s.authed <- s.res.Username
	return nil
}

func TestIMAP(t *testing.T) {
	for _, saslIR := range []bool{true, false} {
		m := newTestMechanisms(t)
		authed := make(chan string, 1)
		caps := imap.CapSet{imap.CapIMAP4rev1: {}}
		if saslIR {
			caps[imap.CapSASLIR] = struct{}{}
		}
		srv := imapserver.New(&imapserver.Options{
			NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
				return &imapSession{m: m, authed: authed}, nil, nil
			},
			Caps:         caps,
			InsecureAuth: true,
			Logger:       log.New(io.Discard, "", 0),
		})
		l := listen(t)
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })

		for _, cc := range clientCases {
			if !cc.useIR {
				continue // the client decides from SASL-IR
			}
			name := cc.name + "/SASL-IR=false"
			if saslIR {
				name = cc.name + "/SASL-IR=true"
			}
			t.Run(name, func(t *testing.T) {
				c := imapclient.New(dial(t, l), nil)
				defer c.Close()
				if err := c.Authenticate(cc.new(t, "user", "pencil")); err != nil {
					t.Fatalf("AUTHENTICATE: %v", err)
				}
				if err := c.Create("x", nil).Wait(); err != nil {
					t.Fatal(err)
				}
				if got := identity(t, authed); got != "user" {
					t.Errorf("session identity %q", got)
				}

				c2 := imapclient.New(dial(t, l), nil)
				defer c2.Close()
				var ierr *imap.Error
				if err := c2.Authenticate(cc.new(t, "user", "wrong")); !errors.As(err, &ierr) || ierr.Code != imap.ResponseCodeAuthenticationFailed {
					t.Errorf("wrong password: %v", err)
				}
			})
		}
	}
}
