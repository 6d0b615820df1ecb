package pop3store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/pop3"
	"github.com/flotilla-mail/flotilla/storage"
)

// errLeaseLost is the cause of a maildrop's lease loss, wrapped with what
// happened; Delete refuses to run after it.
var errLeaseLost = errors.New("pop3store: maildrop lease lost")

// maildrop is one session's view of a user's INBOX. The session calls its
// methods from one goroutine; the lease renewal runs in another.
type maildrop struct {
	b      *Backend
	log    *slog.Logger
	userID uint64

	// Set by Lock, read-only afterwards.
	ctx   context.Context // the session's values, never cancelled
	token uint64
	taken bool          // a PopLock was proposed: Close must release it
	stop  chan struct{} // closed by Close to stop the renewal
	done  chan struct{} // closed when the renewal has stopped

	// Set by Messages.
	mailboxID uint64
	uids      map[string]uint32 // unique-id -> UID

	closed bool

	// proposeMu serialises the lease writes of this session (the renewal
	// and Delete's confirmation), so they never race each other.
	proposeMu sync.Mutex

	mu    sync.Mutex
	until time.Time // by the local clock, the lease surely holds before this
	lost  error     // sticky; wraps errLeaseLost
}

var _ pop3.Maildrop = (*maildrop)(nil)

// Lock takes the user's cluster-wide maildrop lease and starts renewing it.
func (d *maildrop) Lock(ctx context.Context) error {
	if d.closed || d.taken {
		return errors.New("pop3store: Lock on a closed or locked maildrop")
	}
	d.ctx = context.WithoutCancel(ctx)
	d.token = newToken()
	start := time.Now()
	// From here on Close releases, even when the answer is lost: the lock
	// may have been taken all the same.
	d.taken = true
	pctx, cancel := context.WithTimeout(ctx, d.b.proposeTimeout)
	defer cancel()
	_, _, err := d.b.node.Propose(pctx, d.lockCommand(start))
	if err != nil {
		if errors.Is(err, storage.ErrLocked) {
			d.taken = false // somebody else's
		}
		return clusterError(err)
	}
	d.mu.Lock()
	d.until = start.Add(d.b.lease)
	d.mu.Unlock()
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go d.renewLoop()
	d.log.Debug("pop3store: maildrop locked", "token", d.token)
	return nil
}

func (d *maildrop) lockCommand(start time.Time) *command.PopLock {
	return &command.PopLock{UserID: d.userID, Node: d.b.node.ID(), Token: d.token, Until: start.Add(d.b.lease).UnixNano()}
}

func newToken() uint64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if t := binary.BigEndian.Uint64(b[:]); t != 0 {
			return t
		}
	}
}

// renewLoop renews the lease every RenewEvery, retrying sooner after a
// failure, until Close or until the lease is lost.
func (d *maildrop) renewLoop() {
	defer close(d.done)
	retry := min(time.Second, d.b.renew)
	t := time.NewTimer(d.b.renew)
	defer t.Stop()
	for {
		select {
		case <-d.stop:
			return
		case <-t.C:
		}
		next := d.b.renew
		if err := d.renewLease(); err != nil {
			if errors.Is(err, errLeaseLost) {
				d.log.Warn("pop3store: maildrop lease lost; the session will delete nothing", "err", err)
				return
			}
			d.log.Warn("pop3store: renewing maildrop lease failed; retrying", "err", err, "in", retry)
			next = retry
		}
		t.Reset(next)
	}
}

// renewLease extends the lease by a full term from now. Once the lease has
// run out without a renewal, or another session holds the lock, the lease
// is lost for good: a renewal that succeeds afterwards cannot tell whether
// another session had the maildrop in between.
func (d *maildrop) renewLease() error {
	d.proposeMu.Lock()
	defer d.proposeMu.Unlock()
	start := time.Now()
	d.mu.Lock()
	lost, until := d.lost, d.until
	if lost == nil && !start.Before(until) {
		d.lost = fmt.Errorf("%w: expired at %s before it was renewed", errLeaseLost, until.Format(time.RFC3339Nano))
		lost = d.lost
	}
	d.mu.Unlock()
	if lost != nil {
		return lost
	}

	ctx, cancel := context.WithTimeout(d.ctx, min(d.b.proposeTimeout, until.Sub(start)))
	defer cancel()
	_, _, err := d.b.node.Propose(ctx, d.lockCommand(start))

	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.lost != nil:
		return d.lost
	case err == nil:
		d.until = start.Add(d.b.lease)
		return nil
	case errors.Is(err, storage.ErrLocked):
		d.lost = fmt.Errorf("%w: taken over: %w", errLeaseLost, err)
		return d.lost
	case !time.Now().Before(d.until):
		d.lost = fmt.Errorf("%w: expired before it was renewed: %w", errLeaseLost, err)
		return d.lost
	}
	return err
}

// Messages lists the INBOX as it is now on this node, which has applied
// the lock and so everything committed before it.
func (d *maildrop) Messages(ctx context.Context) ([]pop3.Message, error) {
	if !d.taken || d.closed {
		return nil, errors.New("pop3store: Messages without the lock")
	}
	var list []pop3.Message
	err := d.b.node.Store().View(func(tx *storage.Tx) error {
		mb, err := tx.Mailbox(d.userID, "INBOX")
		if err != nil {
			return err
		}
		d.mailboxID = mb.ID
		d.uids = make(map[string]uint32, mb.Messages)
		list = make([]pop3.Message, 0, mb.Messages)
		prefix := strconv.FormatUint(uint64(mb.UIDValidity), 10) + "."
		return tx.Messages(mb.ID, 1, func(m storage.Message) bool {
			uidl := prefix + strconv.FormatUint(uint64(m.UID), 10)
			d.uids[uidl] = m.UID
			list = append(list, pop3.Message{UIDL: uidl, Size: m.Size})
			return true
		})
	})
	if err != nil {
		return nil, fmt.Errorf("pop3store: listing INBOX: %w", err)
	}
	return list, nil
}

// Open returns a message's bytes: its trace prefix, then its body.
func (d *maildrop) Open(ctx context.Context, uidl string) (io.ReadCloser, error) {
	uid, ok := d.uids[uidl]
	if !ok || d.closed {
		return nil, fmt.Errorf("pop3store: no message %q in this session", uidl)
	}
	var (
		prefix, body []byte
		found        bool
	)
	err := d.b.node.Store().View(func(tx *storage.Tx) error {
		m, err := tx.Message(d.mailboxID, uid)
		if err != nil {
			return err
		}
		found, prefix = true, m.Prefix
		body, err = tx.Body(m.Blob)
		return err
	})
	switch {
	case errors.Is(err, storage.ErrNotFound) && !found:
		// The record is gone: another client (IMAP) removed it.
		return nil, &pop3.Error{Text: "message was removed by another client", Err: err}
	case errors.Is(err, storage.ErrNotFound):
		// The record is here but this node lacks the body (it is being
		// fetched from a peer after a snapshot install).
		return nil, &pop3.Error{Code: "SYS/TEMP", Text: "message not available on this server yet, try again later", Err: err}
	case err != nil:
		return nil, fmt.Errorf("pop3store: reading message %s: %w", uidl, err)
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(prefix), bytes.NewReader(body))), nil
}

// Delete removes exactly the given messages with one Expunge, after
// confirming the lease so that it holds for a full term while the Expunge
// commits. A lost lease deletes nothing.
func (d *maildrop) Delete(ctx context.Context, uidls []string) error {
	if !d.taken || d.closed || d.uids == nil {
		return errors.New("pop3store: Delete without the lock")
	}
	uids := make([]uint32, 0, len(uidls))
	for _, u := range uidls {
		uid, ok := d.uids[u]
		if !ok {
			return fmt.Errorf("pop3store: no message %q in this session", u)
		}
		uids = append(uids, uid)
	}
	if err := d.renewLease(); err != nil {
		return fmt.Errorf("pop3store: not deleting %d messages: %w", len(uids), err)
	}
	pctx, cancel := context.WithTimeout(ctx, d.b.proposeTimeout)
	defer cancel()
	resp, _, err := d.b.node.Propose(pctx, &command.Expunge{UserID: d.userID, MailboxID: d.mailboxID, UIDs: uids})
	if err != nil {
		return fmt.Errorf("pop3store: deleting %d messages: %w", len(uids), err)
	}
	d.log.Info("pop3store: messages deleted", "marked", len(uids), "removed", len(resp.IDs))
	return nil
}

// Close stops the renewal and releases the lease. If the release fails, the
// lease lapses by itself.
func (d *maildrop) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	if d.stop != nil {
		// Wait for a renewal in flight: a renewal committed after the
		// release would lock the maildrop again until it lapses.
		close(d.stop)
		<-d.done
	}
	if !d.taken {
		return nil
	}
	ctx, cancel := context.WithTimeout(d.ctx, d.b.proposeTimeout)
	defer cancel()
	if _, _, err := d.b.node.Propose(ctx, &command.PopUnlock{UserID: d.userID, Token: d.token}); err != nil {
		return fmt.Errorf("pop3store: releasing maildrop lock (it lapses by itself within %s): %w", d.b.lease, err)
	}
	d.log.Debug("pop3store: maildrop unlocked", "token", d.token)
	return nil
}
