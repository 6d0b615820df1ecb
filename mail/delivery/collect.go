package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Collection: mail waiting in ISP mailboxes (POP3 or IMAP) is fetched on a
// schedule and stored for local users. One node polls an account at a time:
// the account's rendezvous owner, holding the account's lease (a
// CollectLease command) while it polls. A fetched message is stored by a
// CollectDeliver command that also remembers the message's remote identity
// (POP3 UIDL, or IMAP UIDVALIDITY:UID), and Apply refuses an identity it
// has seen: a message is stored once whichever node fetched it, however
// often, across restarts. Only then is it deleted from the remote (unless
// the account keeps mail there); identities the remote no longer lists are
// forgotten.

// CollectorOptions configure a node's collector.
type CollectorOptions struct {
	Node     *cluster.Node
	Log      *slog.Logger
	Hostname string
	LocalIP  net.IP
	// Tick is how often accounts are looked at (default 1s).
	Tick time.Duration
	// Timeout bounds each network operation (default 60s).
	Timeout time.Duration
	// DiskLow reports that the node's disk is nearly full (see
	// cluster.DiskGuard): no account is polled then. nil checks nothing.
	DiskLow func() bool
}

// collectLease is how long a poll's lease lasts; renewed while it runs.
const collectLease = 30 * time.Second

// Collector polls this node's share of the collection accounts.
type Collector struct {
	opt  CollectorOptions
	log  *slog.Logger
	self string

	mu      sync.Mutex
	last    map[string]time.Time
	running map[string]bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// NewCollector makes a collector; Start starts it.
func NewCollector(opt CollectorOptions) *Collector {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Tick == 0 {
		opt.Tick = time.Second
	}
	if opt.Timeout == 0 {
		opt.Timeout = time.Minute
	}
	return &Collector{opt: opt, log: opt.Log.With("component", "collect"), self: opt.Node.ID(),
		last: map[string]time.Time{}, running: map[string]bool{}}
}

// Start polls until Stop.
func (c *Collector) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(c.opt.Tick)
		defer t.Stop()
		for {
			c.tick(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Stop ends polling and waits for polls under way.
func (c *Collector) Stop() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.wg.Wait()
}

func (c *Collector) tick(ctx context.Context) {
	var cfg Config
	_ = c.opt.Node.Store().View(func(tx *storage.Tx) error {
		cfg, _ = LoadConfig(tx)
		return nil
	})
	if len(cfg.Accounts) == 0 {
		return
	}
	if c.opt.DiskLow != nil && c.opt.DiskLow() {
		return // the guard has logged it; mail waits at the ISP
	}
	live := c.opt.Node.LiveNodes()
	now := time.Now()
	for _, a := range cfg.Accounts {
		if Owner("collect:"+a.Name, live) != c.self {
			continue
		}
		interval := a.Interval.D()
		if interval == 0 {
			interval = 5 * time.Minute
		}
		c.mu.Lock()
		due := !c.running[a.Name] && now.Sub(c.last[a.Name]) >= interval
		if due {
			c.running[a.Name] = true
		}
		c.mu.Unlock()
		if !due {
			continue
		}
		c.wg.Add(1)
		go func(a Account, cfg Config) {
			defer c.wg.Done()
			n, err := c.Poll(ctx, a, &cfg)
			c.mu.Lock()
			c.running[a.Name] = false
			c.last[a.Name] = time.Now()
			c.mu.Unlock()
			switch {
			case errors.Is(err, storage.ErrLocked):
				c.log.Debug("account being collected by another node", "account", a.Name)
			case err != nil:
				c.log.Warn("collection failed", "account", a.Name, "err", err)
			case n > 0:
				c.log.Info("collected", "account", a.Name, "messages", n)
			}
		}(a, cfg)
	}
}

// remoteBox is one session with an ISP mailbox.
type remoteBox interface {
	// List returns the identities of the messages there.
	List() ([]string, error)
	Fetch(uid string) ([]byte, error)
	Delete(uid string) error
	// Close ends the session, committing deletions.
	Close() error
}

// Poll collects an account once, holding its lease, and returns how many
// messages it stored.
func (c *Collector) Poll(ctx context.Context, a Account, cfg *Config) (int, error) {
	node := c.opt.Node
	lease := func() error {
		_, _, err := node.Propose(ctx, &command.CollectLease{Account: a.Name, Node: c.self, Until: time.Now().Add(collectLease).UnixNano()})
		return err
	}
	if err := lease(); err != nil {
		return 0, err
	}
	leased := time.Now()
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _, _ = node.Propose(rctx, &command.CollectLease{Account: a.Name, Node: c.self, Release: true})
	}()
	box, err := c.open(ctx, a)
	if err != nil {
		return 0, err
	}
	uids, err := box.List()
	if err != nil {
		box.Close()
		return 0, err
	}
	present, deleted := map[string]bool{}, map[string]bool{}
	stored := 0
	var firstErr error
	for _, uid := range uids {
		present[uid] = true
		if ctx.Err() != nil {
			break
		}
		if time.Since(leased) > collectLease/3 {
			if err := lease(); err != nil {
				firstErr = err
				break
			}
			leased = time.Now()
		}
		var seen bool
		_ = node.Store().View(func(tx *storage.Tx) error {
			seen, _ = tx.Collected(a.Name, uid)
			return nil
		})
		if !seen {
			msg, err := box.Fetch(uid)
			if err != nil {
				firstErr = err
				break
			}
			d, err := c.deliverCommand(a, cfg, uid, crlf(msg))
			if err != nil {
				c.log.Warn("collected message has nowhere to go; left on the server", "account", a.Name, "uid", uid, "err", err)
				continue
			}
			_, _, err = node.Propose(ctx, &command.CollectDeliver{Account: a.Name, UID: uid, Deliver: *d})
			switch {
			case errors.Is(err, storage.ErrExists):
			case err != nil:
				firstErr = err
			default:
				stored++
			}
			if err != nil && !errors.Is(err, storage.ErrExists) {
				break
			}
		}
		if !a.Keep {
			if err := box.Delete(uid); err != nil {
				firstErr = err
				break
			}
			deleted[uid] = true
		}
	}
	if err := box.Close(); err != nil && firstErr == nil {
		firstErr = err
	}
	// Forget what the remote no longer has: what it did not list, and what
	// this session deleted (committed by the close that just succeeded).
	if firstErr == nil {
		var gone []string
		_ = node.Store().View(func(tx *storage.Tx) error {
			return tx.CollectedUIDs(a.Name, func(u string) {
				if !present[u] || deleted[u] {
					gone = append(gone, u)
				}
			})
		})
		if len(gone) > 0 {
			_, _, _ = node.Propose(ctx, &command.CollectForget{Account: a.Name, UIDs: gone})
		}
	}
	return stored, firstErr
}

// deliverCommand decides where a collected message goes: the account's
// local address, or with multi-drop the local users its headers name.
func (c *Collector) deliverCommand(a Account, cfg *Config, uid string, msg []byte) (*command.Deliver, error) {
	var rcpts []string
	if a.MultiDrop {
		rcpts = multiDropRecipients(msg)
	}
	now := time.Now()
	proto := "POP3"
	if a.Protocol == "imap" {
		proto = "IMAP"
	}
	if len(a.Username) > 0 && strings.ContainsAny(a.Username, "\r\n") {
		return nil, fmt.Errorf("%w: username", storage.ErrInvalid)
	}
	prefix := fmt.Sprintf("Received: from %s by %s (Flotilla) with %s\r\n\tfor collection account %s id %s; %s\r\n",
		a.Host, c.opt.Hostname, proto, a.Name, sanitize(uid), now.UTC().Format(time.RFC1123Z))
	hash, z := c.opt.Node.Store().Compress(msg)
	d := &command.Deliver{Blob: hash, Body: z, BodySize: int64(len(msg)), InternalDate: now.UnixNano()}
	err := c.opt.Node.Store().View(func(tx *storage.Tx) error {
		seen := map[uint64]bool{}
		add := func(addr string, localOnly bool) {
			res, err := tx.Resolve(addr)
			if err != nil || (localOnly && !res.Local) {
				return
			}
			for _, u := range res.Users {
				if !seen[u.ID] {
					seen[u.ID] = true
					d.Targets = append(d.Targets, command.Target{UserID: u.ID, Prefix: []byte(prefix)})
				}
			}
			if !localOnly {
				for _, r := range res.Remote {
					d.Queue = append(d.Queue, storage.QueueRecipient{Address: r})
				}
			}
		}
		for _, r := range rcpts {
			add(r, true)
		}
		if len(d.Targets) == 0 && a.DeliverTo != "" {
			add(a.DeliverTo, false)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(d.Targets) == 0 && len(d.Queue) == 0 {
		return nil, fmt.Errorf("%w: no local recipient", storage.ErrNotFound)
	}
	if len(d.Queue) > 0 {
		d.QueuePrefix = []byte(prefix)
	}
	return d, nil
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 33 || r > 126 {
			return '_'
		}
		return r
	}, s)
}

// multiDropRecipients reads the recipients of a message from its header:
// the envelope copies an ISP leaves (Delivered-To, X-Original-To,
// Envelope-To) when present, else To and Cc.
func multiDropRecipients(msg []byte) []string {
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		return nil
	}
	var out []string
	for _, groups := range [][]string{{"Delivered-To", "X-Original-To", "Envelope-To"}, {"To", "Cc"}} {
		for _, h := range groups {
			for _, v := range m.Header[h] {
				list, err := mail.ParseAddressList(v)
				if err != nil {
					if a, err := mail.ParseAddress("<" + strings.TrimSpace(v) + ">"); err == nil {
						list = []*mail.Address{a}
					}
				}
				for _, a := range list {
					out = append(out, a.Address)
				}
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return out
}

func (c *Collector) tlsConfig(a Account) (*tls.Config, error) {
	host, _, _ := net.SplitHostPort(a.Host)
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if a.CAFile != "" {
		pem, err := os.ReadFile(a.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg.RootCAs = pool
	} else if a.TLS != TLSVerify {
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

func (c *Collector) dial(ctx context.Context, a Account) (net.Conn, error) {
	d := net.Dialer{Timeout: c.opt.Timeout}
	host, _, _ := net.SplitHostPort(a.Host)
	if ip := net.ParseIP(host); ip != nil && c.opt.LocalIP != nil && !c.opt.LocalIP.IsUnspecified() && ip.IsLoopback() == c.opt.LocalIP.IsLoopback() {
		d.LocalAddr = &net.TCPAddr{IP: c.opt.LocalIP}
	}
	conn, err := d.DialContext(ctx, "tcp", a.Host)
	if err != nil {
		return nil, err
	}
	if a.TLS == TLSImplicit {
		cfg, err := c.tlsConfig(a)
		if err != nil {
			conn.Close()
			return nil, err
		}
		tc := tls.Client(conn, cfg)
		_ = tc.SetDeadline(time.Now().Add(c.opt.Timeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("TLS with %s: %w", a.Host, err)
		}
		_ = tc.SetDeadline(time.Time{})
		conn = tc
	}
	return conn, nil
}

func (c *Collector) open(ctx context.Context, a Account) (remoteBox, error) {
	conn, err := c.dial(ctx, a)
	if err != nil {
		return nil, err
	}
	if a.Protocol == "imap" {
		return openIMAP(conn, a, c)
	}
	return openPOP3(conn, a, c)
}
