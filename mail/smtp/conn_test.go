package smtp

import (
	"net"
	"strings"
	"testing"
	"time"
)

// writes records each Write that reaches the socket.
type writes struct {
	net.Conn
	got []string
}

func (w *writes) Write(b []byte) (int, error) {
	w.got = append(w.got, string(b))
	return len(b), nil
}
func (w *writes) SetWriteDeadline(time.Time) error { return nil }

func TestMultiLineReplyIsOneWrite(t *testing.T) {
	w := &writes{}
	c := &conn{Conn: w, srv: &Server{cfg: Config{WriteTimeout: time.Second}}}
	c.top = c
	ehlo := []string{"250-mx.example.org\r\n", "250-PIPELINING\r\n", "250-8BITMIME\r\n", "250 SMTPUTF8\r\n"}
	for _, l := range ehlo {
		if n, err := c.Write([]byte(l)); n != len(l) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", l, n, err)
		}
	}
	if _, err := c.Write([]byte("354 Go ahead\r\n")); err != nil {
		t.Fatal(err)
	}
	want := []string{strings.Join(ehlo, ""), "354 Go ahead\r\n"}
	if strings.Join(w.got, "|") != strings.Join(want, "|") {
		t.Fatalf("socket writes %q, want %q", w.got, want)
	}

	// Under TLS (top is not the socket) nothing is held: those are records.
	w.got = nil
	c.top = nil
	for _, l := range ehlo {
		_, _ = c.Write([]byte(l))
	}
	if len(w.got) != len(ehlo) {
		t.Fatalf("under TLS %d socket writes for %d, want one each", len(w.got), len(ehlo))
	}
}

func TestContinuesReply(t *testing.T) {
	for in, want := range map[string]bool{
		"250-PIPELINING\r\n":            true,
		"250 OK\r\n":                    false,
		"250-a\r\n250 b\r\n":            false,
		"250 a\r\n250-b\r\n":            true,
		"250-PIPELINING":                false, // not a whole line
		"25-x\r\n":                      false,
		"abc-x\r\n":                     false,
		"\x16\x03\x03\x00\x05-abc\r\n":  false, // not a reply
		"":                              false,
		"\r\n":                          false,
		"250-\r\n":                      true,
		"550-5.7.1 first\r\n":           true,
		"421 4.3.2 shutting down\r\n":   false,
		"220 mx ESMTP\r\n":              false,
		"334 \r\n":                      false,
		"250-SIZE 33554432\r\n":         true,
		"250-LIMITS RCPTMAX=100\r\n\n":  false,
		"999-\x00\x00\r\n":              true,
		"250-x\n":                       false,
		"ab":                            false,
		"250-a\r\n":                     true,
		"250-ab\r\n":                    true,
		"250-AUTH PLAIN LOGIN\r\n":      true,
		"250 AUTH PLAIN LOGIN\r\n":      false,
		"250-AUTH PLAIN LOGIN\r\nx\r\n": false,
	} {
		if got := continuesReply([]byte(in)); got != want {
			t.Errorf("continuesReply(%q) = %v, want %v", in, got, want)
		}
	}
}
