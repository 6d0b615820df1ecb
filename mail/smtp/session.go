package smtp

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/mail/delivery"
	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
	"github.com/flotilla-mail/flotilla/storage"
)

// maxTargets bounds the mailboxes and remote addresses of one message after
// alias expansion.
const maxTargets = 1000

type backend struct {
	srv  *Server
	kind Kind
}

// NewSession runs at HELO/EHLO (again after STARTTLS).
func (b *backend) NewSession(gc *gosmtp.Conn) (gosmtp.Session, error) {
	nc := gc.Conn()
	var c *conn
	var state *tls.ConnectionState
	switch x := nc.(type) {
	case *conn:
		c = x
	case *tls.Conn:
		st := x.ConnectionState()
		state = &st
		c, _ = x.NetConn().(*conn)
	}
	if c == nil {
		return nil, replyLocalError.smtpError()
	}
	if b.srv.closing.Load() {
		c.closeAfterReply()
		return nil, replyShuttingDown.smtpError()
	}
	c.setTop(nc)
	s := &session{srv: b.srv, c: c, kind: b.kind, helo: gc.Hostname(), tls: state}
	s.secure = state != nil || b.srv.cfg.AllowInsecureAuth || (c.ip.IsLoopback() && !b.srv.cfg.noLoopbackExemption)
	s.log = b.srv.log.With("conn", c.id, "kind", b.kind.String(), "remote", c.RemoteAddr().String())
	s.log.Debug("smtp session", "helo", s.helo, "tls", state != nil)
	return s, nil
}

// session is one go-smtp session: from HELO/EHLO to QUIT, STARTTLS or the
// end of the connection. With BDAT, Data runs in a goroutine of its own
// while the connection's goroutine may call Reset: mu guards the fields
// below it.
type session struct {
	srv    *Server
	c      *conn
	kind   Kind
	log    *slog.Logger
	helo   string
	tls    *tls.ConnectionState
	secure bool // TLS or loopback: AUTH may be offered

	mu   sync.Mutex
	user *storage.User // authenticated
	tx   txn
	// written is the log index of this session's last accepted message,
	// which its next transaction waits for before reading the store.
	written uint64
}

// txn is one mail transaction, MAIL to the end of DATA (or RSET).
type txn struct {
	active     bool
	from       string // "" is the null sender
	size       int64  // declared with SIZE
	utf8       bool
	envID, ret string
	local      []target
	localIdx   map[uint64]bool
	remote     []storage.QueueRecipient
	remoteIdx  map[string]bool
}

// target is a local account the message goes to, and the recipient it was
// given as (for the Received header's "for").
type target struct {
	userID uint64
	rcpt   string
}

// fail turns an outcome into go-smtp's reply, the one way session methods
// return errors: it logs the cause, counts the error against the
// connection's limit and arranges for 421 replies to close it.
func (s *session) fail(r *Reply) error {
	if r == nil {
		return nil
	}
	if r.Err != nil && r.Code/100 == 4 && !r.Close {
		s.log.Warn("smtp: temporary failure", "reply", r.Code, "err", r.Err)
	} else if r.Err != nil {
		s.log.Debug("smtp: refused", "reply", r.Code, "err", r.Err)
	}
	if r.Code >= 400 && !r.Close && s.c.countError() {
		s.log.Info("smtp: too many errors; closing")
		r = &replyTooManyErrors
	}
	if r.Close {
		s.c.closeAfterReply()
	}
	return r.smtpError()
}

func (s *session) authenticated() *storage.User {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.user
}

// Mail starts a transaction. On submission the sender must be an address
// the user may send as. On the MX port an authenticated client is held to
// that only when it relays (see Rcpt): mail for local users may come from
// anyone, a peer site's link account included.
func (s *session) Mail(from string, opts *gosmtp.MailOptions) error {
	if s.srv.closing.Load() {
		return s.fail(&replyShuttingDown)
	}
	s.mu.Lock()
	active := s.tx.active
	user := s.user
	s.mu.Unlock()
	if active {
		r := replyNoTransaction
		r.Text = "Nested MAIL command"
		return s.fail(&r)
	}
	if s.kind.submission() && user == nil {
		return s.fail(&replyAuthRequired)
	}
	if from != "" {
		if !opts.UTF8 && !isASCII(from) {
			return s.fail(&replyNonASCII)
		}
		if !checkAddress(from) {
			return s.fail(&replyBadSender)
		}
	}
	if user != nil && s.kind.submission() {
		if err := s.checkSender(user, from); err != nil {
			return err
		}
	}
	if s.srv.cfg.DiskLow != nil && s.srv.cfg.DiskLow() {
		return s.fail(&replyDiskFull)
	}
	t := txn{active: true, from: from, size: opts.Size, utf8: opts.UTF8, envID: opts.EnvelopeID, ret: string(opts.Return),
		localIdx: map[uint64]bool{}, remoteIdx: map[string]bool{}}
	s.mu.Lock()
	s.tx = t
	s.mu.Unlock()
	s.c.setTx(true)
	return nil
}

// Rcpt resolves a recipient: a local address must lead to an account (550
// 5.1.1 otherwise) with room for the message; any other needs relay rights.
func (s *session) Rcpt(to string, opts *gosmtp.RcptOptions) error {
	if err := s.caughtUp(); err != nil {
		return err
	}
	s.mu.Lock()
	active, utf8, size, user := s.tx.active, s.tx.utf8, s.tx.size, s.user
	n := len(s.tx.local) + len(s.tx.remote)
	s.mu.Unlock()
	if !active {
		return s.fail(&replyNoTransaction)
	}
	if !utf8 && !isASCII(to) {
		return s.fail(&replyNonASCII)
	}
	if !checkAddress(to) {
		return s.fail(&replyBadRcpt)
	}
	var (
		res  storage.Resolved
		rs   relay.Settings
		used = map[uint64]int64{}
	)
	err := s.srv.store().View(func(tx *storage.Tx) error {
		var err error
		if res, err = tx.Resolve(to); errors.Is(err, storage.ErrNotFound) {
			// A user of a local domain who lives at another site: routed
			// there with the address unchanged (no relay rights needed,
			// the route is the administrator's).
			if cfg, cerr := delivery.LoadConfig(tx); cerr == nil {
				if _, routed := cfg.RouteFor(to); routed {
					res, err = storage.Resolved{Local: true, Remote: []string{strings.ToLower(to)}}, nil
				}
			}
		}
		if err != nil {
			return err
		}
		rs = s.srv.relaySettings(tx)
		for _, u := range res.Users {
			if u.QuotaBytes > 0 {
				if used[u.ID], err = tx.UsedBytes(u.ID); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return s.fail(rcptReply(err))
	}
	if !res.Local && !s.mayRelay(rs, user) {
		s.log.Info("smtp: relay denied", "to", to, "user", userAddr(user), "mode", string(rs.Mode))
		return s.fail(&replyRelayDenied)
	}
	if !res.Local && user != nil && !s.kind.submission() {
		// Relaying on the MX port as a user: the sender must be theirs.
		s.mu.Lock()
		from := s.tx.from
		s.mu.Unlock()
		if err := s.checkSender(user, from); err != nil {
			return err
		}
	}
	if n+len(res.Users)+len(res.Remote) > maxTargets {
		return s.fail(&replyTooManyRcpts)
	}

	// Quota (RFC 5321 4.5.3.1.10, RFC 3463 X.2.2): a recipient that is one
	// account is refused when it is full; an alias to several keeps the
	// accounts with room, and is refused only when none has.
	var users []storage.User
	var worst *Reply
	for _, u := range res.Users {
		if r := quotaReply(u, used[u.ID], size); r != nil {
			if worst == nil || r.Temporary() {
				worst = r
			}
			s.log.Info("smtp: recipient over quota", "to", to, "user", u.Address)
			continue
		}
		users = append(users, u)
	}
	if worst != nil && (len(res.Users) == 1 || len(users) == 0 && len(res.Remote) == 0) {
		return s.fail(worst)
	}

	notify := make([]string, len(opts.Notify))
	for i, v := range opts.Notify {
		notify[i] = string(v)
	}
	orcpt := ""
	if opts.OriginalRecipient != "" {
		orcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.tx.active { // reset meanwhile (cannot happen outside BDAT races)
		return s.fail(&replyNoTransaction)
	}
	for _, u := range users {
		if !s.tx.localIdx[u.ID] {
			s.tx.localIdx[u.ID] = true
			s.tx.local = append(s.tx.local, target{userID: u.ID, rcpt: to})
		}
	}
	for _, a := range res.Remote {
		if s.tx.remoteIdx[a] {
			continue
		}
		s.tx.remoteIdx[a] = true
		o := orcpt
		if o == "" && res.Local { // reached through an alias: keep who it was sent to
			o = "rfc822;" + to
		}
		s.tx.remote = append(s.tx.remote, storage.QueueRecipient{Address: a, Notify: strings.Join(notify, ","), ORcpt: o})
	}
	return nil
}

func quotaReply(u storage.User, used, size int64) *Reply {
	switch q := u.QuotaBytes; {
	case q == 0:
		return nil
	case size > q:
		return &replyQuotaTooBig
	case used >= q, used+size > q:
		return &replyQuotaFull
	}
	return nil
}

// mayRelay applies the relay policy to this client.
func (s *session) mayRelay(rs relay.Settings, user *storage.User) bool {
	if user != nil && rs.UsersMayRelay() {
		return true
	}
	if !rs.HostsMayRelay() || !s.c.ip.IsValid() {
		return false
	}
	key := strings.Join(rs.Trusted, ",")
	s.c.mu.Lock()
	v, ok := s.c.trusted[key]
	s.c.mu.Unlock()
	if !ok {
		v = s.srv.checker.Trusted(s.srv.ctx, rs, s.c.ip)
		s.c.mu.Lock()
		if s.c.trusted == nil {
			s.c.trusted = map[string]bool{}
		}
		s.c.trusted[key] = v
		s.c.mu.Unlock()
	}
	return v
}

func userAddr(u *storage.User) string {
	if u == nil {
		return ""
	}
	return u.Address
}

// Reset ends the transaction (RSET, EHLO, after DATA).
func (s *session) Reset() {
	s.mu.Lock()
	s.tx = txn{}
	s.mu.Unlock()
	s.c.setTx(false)
}

// Logout ends the session (connection closed, or STARTTLS).
func (s *session) Logout() error {
	s.Reset()
	s.c.setTop(nil)
	return nil
}

var errNoTarget = errors.New("no recipient was stored")

// checkSender refuses an envelope sender the user may not send as.
func (s *session) checkSender(user *storage.User, from string) error {
	ok := false
	if from != "" {
		err := s.srv.store().View(func(tx *storage.Tx) error {
			var err error
			ok, err = tx.CanSendAs(user.ID, from)
			return err
		})
		if err != nil {
			return s.fail(asReply(err))
		}
	}
	if !ok {
		s.log.Info("smtp: sender refused: not the user's address", "user", user.Address, "from", from)
		return s.fail(&replyNotOwner)
	}
	return nil
}

// caughtUp waits until this node has applied the session's last message,
// so that what the session reads (quota, above all) includes it.
func (s *session) caughtUp() error {
	s.mu.Lock()
	idx := s.written
	s.mu.Unlock()
	if idx == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, 30*time.Second)
	defer cancel()
	if err := s.srv.cfg.Backend.WaitApplied(ctx, idx); err != nil {
		return asReply(err)
	}
	return nil
}
