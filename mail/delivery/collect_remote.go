package delivery

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// pop3Box is a POP3 session (RFC 1939, STLS of RFC 2595). Messages are
// named by UIDL; deletions take effect at QUIT.
type pop3Box struct {
	conn    net.Conn
	tp      *textproto.Conn
	timeout time.Duration
	num     map[string]int // uid -> message number
}

func openPOP3(conn net.Conn, a Account, c *Collector) (remoteBox, error) {
	b := &pop3Box{timeout: c.opt.Timeout}
	b.set(conn)
	fail := func(err error) (remoteBox, error) {
		b.conn.Close()
		return nil, fmt.Errorf("POP3 %s: %w", a.Host, err)
	}
	if _, err := b.status(); err != nil {
		return fail(err)
	}
	if a.TLS == TLSRequire || a.TLS == TLSVerify {
		if _, err := b.cmd("STLS"); err != nil {
			return fail(fmt.Errorf("STLS: %w", err))
		}
		cfg, err := c.tlsConfig(a)
		if err != nil {
			return fail(err)
		}
		tc := tls.Client(b.conn, cfg)
		_ = tc.SetDeadline(time.Now().Add(b.timeout))
		if err := tc.Handshake(); err != nil {
			return fail(fmt.Errorf("TLS: %w", err))
		}
		b.set(tc)
	}
	if _, err := b.cmd("USER %s", a.Username); err != nil {
		return fail(err)
	}
	if _, err := b.cmd("PASS %s", a.Password); err != nil {
		return fail(fmt.Errorf("login as %s: %w", a.Username, err))
	}
	return b, nil
}

func (b *pop3Box) set(conn net.Conn) {
	b.conn = conn
	b.tp = textproto.NewConn(conn)
}

func (b *pop3Box) status() (string, error) {
	_ = b.conn.SetDeadline(time.Now().Add(b.timeout))
	line, err := b.tp.ReadLine()
	if err != nil {
		return "", err
	}
	if rest, ok := strings.CutPrefix(line, "+OK"); ok {
		return strings.TrimSpace(rest), nil
	}
	return "", fmt.Errorf("server said %q", line)
}

func (b *pop3Box) cmd(format string, args ...any) (string, error) {
	_ = b.conn.SetDeadline(time.Now().Add(b.timeout))
	if err := b.tp.PrintfLine(format, args...); err != nil {
		return "", err
	}
	return b.status()
}

func (b *pop3Box) List() ([]string, error) {
	if _, err := b.cmd("UIDL"); err != nil {
		return nil, fmt.Errorf("UIDL: %w", err)
	}
	lines, err := b.tp.ReadDotLines()
	if err != nil {
		return nil, err
	}
	b.num = map[string]int{}
	var out []string
	for _, l := range lines {
		f := strings.Fields(l)
		if len(f) != 2 {
			continue
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			continue
		}
		b.num[f[1]] = n
		out = append(out, f[1])
	}
	return out, nil
}

func (b *pop3Box) Fetch(uid string) ([]byte, error) {
	n, ok := b.num[uid]
	if !ok {
		return nil, errors.New("unknown uid " + uid)
	}
	if _, err := b.cmd("RETR %d", n); err != nil {
		return nil, fmt.Errorf("RETR: %w", err)
	}
	_ = b.conn.SetDeadline(time.Now().Add(b.timeout))
	return b.tp.ReadDotBytes()
}

func (b *pop3Box) Delete(uid string) error {
	n, ok := b.num[uid]
	if !ok {
		return errors.New("unknown uid " + uid)
	}
	_, err := b.cmd("DELE %d", n)
	return err
}

func (b *pop3Box) Close() error {
	defer b.conn.Close()
	_, err := b.cmd("QUIT")
	return err
}

// imapBox is an IMAP session on one folder. Messages are named
// UIDVALIDITY:UID; deletions take effect at EXPUNGE, before LOGOUT.
type imapBox struct {
	c        *imapclient.Client
	validity uint32
	deleted  imap.UIDSet
}

func openIMAP(conn net.Conn, a Account, col *Collector) (remoteBox, error) {
	var c *imapclient.Client
	var err error
	if a.TLS == TLSRequire || a.TLS == TLSVerify {
		cfg, terr := col.tlsConfig(a)
		if terr != nil {
			conn.Close()
			return nil, terr
		}
		c, err = imapclient.NewStartTLS(conn, &imapclient.Options{TLSConfig: cfg})
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("IMAP %s: STARTTLS: %w", a.Host, err)
		}
	} else {
		c = imapclient.New(conn, nil)
	}
	fail := func(err error) (remoteBox, error) {
		c.Close()
		return nil, fmt.Errorf("IMAP %s: %w", a.Host, err)
	}
	if err := c.WaitGreeting(); err != nil {
		return fail(err)
	}
	if err := c.Login(a.Username, a.Password).Wait(); err != nil {
		return fail(fmt.Errorf("login as %s: %w", a.Username, err))
	}
	folder := a.Folder
	if folder == "" {
		folder = "INBOX"
	}
	sel, err := c.Select(folder, nil).Wait()
	if err != nil {
		return fail(fmt.Errorf("select %s: %w", folder, err))
	}
	return &imapBox{c: c, validity: sel.UIDValidity}, nil
}

func (b *imapBox) List() ([]string, error) {
	data, err := b.c.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, u := range data.AllUIDs() {
		out = append(out, fmt.Sprintf("%d:%d", b.validity, u))
	}
	return out, nil
}

func (b *imapBox) uid(s string) (imap.UID, error) {
	v, u, ok := strings.Cut(s, ":")
	if !ok || v != strconv.FormatUint(uint64(b.validity), 10) {
		return 0, errors.New("uid of another UIDVALIDITY: " + s)
	}
	n, err := strconv.ParseUint(u, 10, 32)
	return imap.UID(n), err
}

func (b *imapBox) Fetch(s string) ([]byte, error) {
	u, err := b.uid(s)
	if err != nil {
		return nil, err
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := b.c.Fetch(imap.UIDSetNum(u), &imap.FetchOptions{UID: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 || len(msgs[0].BodySection) == 0 {
		return nil, fmt.Errorf("message %s is gone", s)
	}
	return msgs[0].BodySection[0].Bytes, nil
}

func (b *imapBox) Delete(s string) error {
	u, err := b.uid(s)
	if err != nil {
		return err
	}
	b.deleted.AddNum(u)
	return b.c.Store(imap.UIDSetNum(u), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close()
}

func (b *imapBox) Close() error {
	defer b.c.Close()
	if len(b.deleted) > 0 {
		var err error
		if b.c.Caps().Has(imap.CapUIDPlus) {
			err = b.c.UIDExpunge(b.deleted).Close()
		} else {
			err = b.c.Expunge().Close()
		}
		if err != nil {
			return fmt.Errorf("expunge: %w", err)
		}
	}
	// The deletions are committed; a LOGOUT the server answers by
	// closing the connection is no failure.
	_ = b.c.Logout().Wait()
	return nil
}
