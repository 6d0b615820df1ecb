package delivery

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// A small SMTP client of our own: go-smtp's client cannot do opportunistic
// STARTTLS under a chosen EHLO name, nor PIPELINING (RFC 2920), which saves
// most round trips of a transaction.

// Reply is an SMTP reply that was not a success.
type Reply struct {
	Code     int
	Enhanced string // "5.1.1", or ""
	Msg      string
}

func (r *Reply) Error() string {
	if r.Enhanced != "" && !strings.HasPrefix(r.Msg, r.Enhanced) {
		return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Msg)
	}
	return fmt.Sprintf("%d %s", r.Code, r.Msg)
}

// Permanent reports a 5xx reply.
func (r *Reply) Permanent() bool { return r.Code >= 500 }

func newReply(code int, msg string) *Reply {
	msg = strings.ReplaceAll(msg, "\n", " ")
	r := &Reply{Code: code, Msg: msg}
	if f := strings.SplitN(msg, " ", 2); len(f) > 0 && isEnhanced(f[0]) {
		r.Enhanced = f[0]
	}
	return r
}

func isEnhanced(s string) bool {
	p := strings.Split(s, ".")
	if len(p) != 3 || (p[0] != "2" && p[0] != "4" && p[0] != "5") {
		return false
	}
	for _, x := range p[1:] {
		if _, err := strconv.Atoi(x); err != nil || len(x) > 3 {
			return false
		}
	}
	return true
}

type client struct {
	conn       net.Conn
	tp         *textproto.Conn
	ext        map[string]string
	tls        bool
	cmdTimeout time.Duration
	dataTime   time.Duration
	peer       string // for messages: "mx.example.org[127.0.0.1]:25"
	uses       int
}

func newClient(conn net.Conn, peer string, cmdTimeout, dataTimeout time.Duration) *client {
	c := &client{conn: conn, peer: peer, cmdTimeout: cmdTimeout, dataTime: dataTimeout}
	c.setConn(conn)
	return c
}

func (c *client) setConn(conn net.Conn) {
	c.conn = conn
	c.tp = textproto.NewConn(conn)
}

func (c *client) Close() error { return c.conn.Close() }

func (c *client) deadline(d time.Duration) { _ = c.conn.SetDeadline(time.Now().Add(d)) }

// read reads one reply; a non-2xx/3xx reply is a *Reply error.
func (c *client) read() (int, string, error) {
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			return te.Code, te.Msg, newReply(te.Code, te.Msg)
		}
		return 0, "", c.netErr(err)
	}
	if code >= 400 {
		return code, msg, newReply(code, msg)
	}
	return code, msg, nil
}

func (c *client) netErr(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &connError{peer: c.peer, err: fmt.Errorf("timed out waiting for the server: %w", err), timeout: true}
	}
	return &connError{peer: c.peer, err: err}
}

// connError is a failure of the connection itself (not an SMTP reply).
type connError struct {
	peer    string
	err     error
	timeout bool
}

func (e *connError) Error() string { return fmt.Sprintf("%s: %v", e.peer, e.err) }
func (e *connError) Unwrap() error { return e.err }

func (c *client) cmd(format string, args ...any) (int, string, error) {
	c.deadline(c.cmdTimeout)
	if err := c.tp.PrintfLine(format, args...); err != nil {
		return 0, "", c.netErr(err)
	}
	return c.read()
}

// greet reads the greeting and says EHLO (HELO if EHLO is refused).
func (c *client) greet(name string) error {
	c.deadline(c.cmdTimeout)
	if _, _, err := c.read(); err != nil {
		return err
	}
	return c.ehlo(name)
}

func (c *client) ehlo(name string) error {
	_, msg, err := c.cmd("EHLO %s", name)
	if err != nil {
		var r *Reply
		if errors.As(err, &r) && (r.Code == 500 || r.Code == 502) {
			c.ext = map[string]string{}
			_, _, err = c.cmd("HELO %s", name)
		}
		return err
	}
	c.ext = map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *client) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// maxSize is the server's SIZE limit, 0 if none.
func (c *client) maxSize() int64 {
	n, _ := strconv.ParseInt(strings.TrimSpace(c.ext["SIZE"]), 10, 64)
	return n
}

func (c *client) startTLS(cfg *tls.Config, name string) error {
	if _, _, err := c.cmd("STARTTLS"); err != nil {
		return err
	}
	tc := tls.Client(c.conn, cfg)
	c.deadline(c.cmdTimeout)
	if err := tc.Handshake(); err != nil {
		return &connError{peer: c.peer, err: fmt.Errorf("TLS handshake: %w", err)}
	}
	c.setConn(tc)
	c.tls = true
	return c.ehlo(name)
}

func (c *client) auth(user, pass string) error {
	mechs := strings.Fields(strings.ToUpper(c.ext["AUTH"]))
	has := func(m string) bool {
		for _, x := range mechs {
			if x == m {
				return true
			}
		}
		return false
	}
	switch {
	case has("PLAIN"):
		resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
		_, _, err := c.cmd("AUTH PLAIN %s", resp)
		return err
	case has("LOGIN"):
		if _, _, err := c.cmd("AUTH LOGIN"); err != nil {
			return err
		}
		if _, _, err := c.cmd("%s", base64.StdEncoding.EncodeToString([]byte(user))); err != nil {
			return err
		}
		_, _, err := c.cmd("%s", base64.StdEncoding.EncodeToString([]byte(pass)))
		return err
	}
	return &Reply{Code: 530, Enhanced: "5.7.0", Msg: fmt.Sprintf("5.7.0 %s offers no AUTH PLAIN or LOGIN (offers %q)", c.peer, c.ext["AUTH"])}
}

// txResult is what the server said to one transaction.
type txResult struct {
	mail  error   // MAIL FROM refused: every recipient has this error
	rcpts []error // per recipient: nil accepted
	data  error   // the DATA command or the message refused (accepted recipients only)
}

// send runs one transaction: MAIL, RCPT for each recipient, DATA and the
// message, pipelined when the server allows it. A connection failure is
// returned as the error (what happened to the message is then unknown if
// it came after the message was sent).
func (c *client) send(from string, mailParams string, rcpts []string, rcptParams []string, msg []byte) (txResult, error) {
	res := txResult{rcpts: make([]error, len(rcpts))}
	pipelining := c.has("PIPELINING")
	c.deadline(c.cmdTimeout)
	write := func(format string, args ...any) error {
		if err := c.tp.PrintfLine(format, args...); err != nil {
			return c.netErr(err)
		}
		return nil
	}
	if !pipelining {
		if _, _, err := c.cmd("MAIL FROM:<%s>%s", from, mailParams); err != nil {
			if isReply(err) {
				res.mail = err
				return res, nil
			}
			return res, err
		}
		ok := 0
		for i, r := range rcpts {
			_, _, err := c.cmd("RCPT TO:<%s>%s", r, rcptParams[i])
			if err != nil && !isReply(err) {
				return res, err
			}
			res.rcpts[i] = err
			if err == nil {
				ok++
			}
		}
		if ok == 0 {
			_, _, err := c.cmd("RSET")
			if err != nil && !isReply(err) {
				return res, err
			}
			return res, nil
		}
		if _, _, err := c.cmd("DATA"); err != nil {
			if isReply(err) {
				res.data = err
				if _, _, err := c.cmd("RSET"); err != nil && !isReply(err) {
					return res, err
				}
				return res, nil
			}
			return res, err
		}
	} else {
		// PrintfLine flushes each line; a buffered writer sends the group
		// in one segment.
		bw := bufio.NewWriterSize(c.conn, 4096)
		fmt.Fprintf(bw, "MAIL FROM:<%s>%s\r\n", from, mailParams)
		for i, r := range rcpts {
			fmt.Fprintf(bw, "RCPT TO:<%s>%s\r\n", r, rcptParams[i])
		}
		fmt.Fprintf(bw, "DATA\r\n")
		if err := bw.Flush(); err != nil {
			return res, c.netErr(err)
		}
		_, _, err := c.read()
		if err != nil && !isReply(err) {
			return res, err
		}
		res.mail = err
		ok := 0
		for i := range rcpts {
			_, _, err := c.read()
			if err != nil && !isReply(err) {
				return res, err
			}
			if res.mail != nil {
				res.rcpts[i] = res.mail
			} else {
				res.rcpts[i] = err
			}
			if err == nil {
				ok++
			}
		}
		code, _, err := c.read()
		if err != nil && !isReply(err) {
			return res, err
		}
		if code == 354 && (ok == 0 || res.mail != nil) {
			// The server wants a message we cannot send to anyone: an
			// empty one, then reset.
			if err := write("."); err != nil {
				return res, err
			}
			_, _, _ = c.read()
		}
		if res.mail != nil || ok == 0 || err != nil {
			if res.mail == nil && ok > 0 {
				res.data = err
			}
			// Some servers keep the transaction open after a refused
			// DATA: start the next one clean.
			if _, _, err := c.cmd("RSET"); err != nil && !isReply(err) {
				return res, err
			}
			return res, nil
		}
	}
	c.deadline(c.dataTime)
	dw := c.tp.DotWriter()
	if _, err := dw.Write(msg); err != nil {
		return res, c.netErr(err)
	}
	if err := dw.Close(); err != nil {
		return res, c.netErr(err)
	}
	_, _, err := c.read()
	if err != nil && !isReply(err) {
		return res, err
	}
	res.data = err
	return res, nil
}

func isReply(err error) bool {
	var r *Reply
	return errors.As(err, &r)
}

func (c *client) quit() {
	c.deadline(5 * time.Second)
	_ = c.tp.PrintfLine("QUIT")
	_, _, _ = c.read()
	c.Close()
}

var _ io.Closer = (*client)(nil)
