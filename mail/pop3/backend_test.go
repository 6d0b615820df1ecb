package pop3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
)

// memBackend is an in-memory Backend that records every misuse of the
// Maildrop contract, checked by check.
type memBackend struct {
	mu         sync.Mutex
	boxes      map[string]*memBox
	violations []string

	// Hooks for failure tests; read without the lock, set before use.
	loginErr  error                           // returned by Login when set
	loginWait func(ctx context.Context) error // called by Login when set
	deleteErr error                           // returned by Delete when set
	badList   []Message                       // returned by Messages when set
}

type memBox struct {
	pass     string
	msgs     []memMsg
	locked   *memDrop
	opened   int
	closed   int
	deletes  int
	closedCh chan struct{} // one value per Maildrop.Close
}

type memMsg struct {
	uidl string
	data []byte
}

func newMemBackend() *memBackend {
	return &memBackend{boxes: make(map[string]*memBox)}
}

// add creates a user whose messages are the given texts, in order, with
// unique-ids user-1, user-2, ...
func (b *memBackend) add(user, pass string, msgs ...string) *memBox {
	box := &memBox{pass: pass, closedCh: make(chan struct{}, 1000)}
	for i, m := range msgs {
		box.msgs = append(box.msgs, memMsg{uidl: fmt.Sprintf("%s-%d", user, i+1), data: []byte(m)})
	}
	b.mu.Lock()
	b.boxes[user] = box
	b.mu.Unlock()
	return box
}

func (b *memBackend) violate(format string, args ...any) {
	b.mu.Lock()
	b.violations = append(b.violations, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

func (b *memBackend) open(user string) *memDrop {
	b.mu.Lock()
	defer b.mu.Unlock()
	box := b.boxes[user]
	box.opened++
	return &memDrop{b: b, box: box, user: user}
}

func (b *memBackend) Login(ctx context.Context, c ConnInfo, user, pass string) (Maildrop, error) {
	if b.loginWait != nil {
		if err := b.loginWait(ctx); err != nil {
			return nil, err
		}
	}
	if b.loginErr != nil {
		return nil, b.loginErr
	}
	b.mu.Lock()
	box := b.boxes[user]
	b.mu.Unlock()
	if box == nil || box.pass != pass {
		return nil, fmt.Errorf("user %q: %w", user, ErrAuthFailed)
	}
	return b.open(user), nil
}

func (b *memBackend) Open(ctx context.Context, c ConnInfo, identity string) (Maildrop, error) {
	b.mu.Lock()
	box := b.boxes[identity]
	b.mu.Unlock()
	if box == nil {
		return nil, ErrAuthFailed
	}
	return b.open(identity), nil
}

// password returns a user's password, for the SASL mechanisms.
func (b *memBackend) password(user string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	box := b.boxes[user]
	if box == nil {
		return "", false
	}
	return box.pass, true
}

// messages returns the unique-ids left in a user's maildrop.
func (b *memBackend) messages(user string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var ids []string
	for _, m := range b.boxes[user].msgs {
		ids = append(ids, m.uidl)
	}
	return ids
}

// check fails t for any misuse of the Maildrop contract and for maildrops
// left open or locked. Call it once no session runs.
func (b *memBackend) check(t testing.TB) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, v := range b.violations {
		t.Errorf("backend contract violated: %s", v)
	}
	for user, box := range b.boxes {
		if box.locked != nil {
			t.Errorf("maildrop %s still locked", user)
		}
		if box.opened != box.closed {
			t.Errorf("maildrop %s: opened %d times, closed %d times", user, box.opened, box.closed)
		}
	}
}

// apopBackend adds APOP to memBackend.
type apopBackend struct{ *memBackend }

func (b apopBackend) APOP(ctx context.Context, c ConnInfo, user, banner, digest string) (Maildrop, error) {
	pass, ok := b.password(user)
	if !ok || !CheckAPOP(banner, pass, digest) {
		return nil, ErrAuthFailed
	}
	return b.open(user), nil
}

type memDrop struct {
	b       *memBackend
	box     *memBox
	user    string
	locked  bool
	listed  bool
	deleted bool
	closed  bool
}

func (d *memDrop) Lock(ctx context.Context) error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if d.closed || d.locked {
		d.b.violations = append(d.b.violations, "Lock on closed or locked maildrop")
	}
	if d.box.locked != nil {
		return ErrLocked
	}
	d.box.locked = d
	d.locked = true
	return nil
}

func (d *memDrop) Messages(ctx context.Context) ([]Message, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if !d.locked || d.closed || d.listed {
		d.b.violations = append(d.b.violations, "Messages without lock, after Close or twice")
	}
	d.listed = true
	if d.b.badList != nil {
		return d.b.badList, nil
	}
	var list []Message
	for _, m := range d.box.msgs {
		list = append(list, Message{UIDL: m.uidl, Size: int64(len(m.data))})
	}
	return list, nil
}

func (d *memDrop) Open(ctx context.Context, uidl string) (io.ReadCloser, error) {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if !d.locked || d.closed {
		d.b.violations = append(d.b.violations, "Open without lock or after Close")
	}
	for _, m := range d.box.msgs {
		if m.uidl == uidl {
			return io.NopCloser(bytes.NewReader(slices.Clone(m.data))), nil
		}
	}
	return nil, errors.New("no such message " + uidl)
}

func (d *memDrop) Delete(ctx context.Context, uidls []string) error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if !d.locked || d.closed || d.deleted || len(uidls) == 0 {
		d.b.violations = append(d.b.violations, "Delete without lock, after Close, twice or empty")
	}
	d.deleted = true
	d.box.deletes++
	if d.b.deleteErr != nil {
		return d.b.deleteErr
	}
	d.box.msgs = slices.DeleteFunc(d.box.msgs, func(m memMsg) bool { return slices.Contains(uidls, m.uidl) })
	return nil
}

func (d *memDrop) Close() error {
	d.b.mu.Lock()
	defer d.b.mu.Unlock()
	if d.closed {
		d.b.violations = append(d.b.violations, "Close twice")
		return nil
	}
	d.closed = true
	if d.locked {
		d.box.locked = nil
	}
	d.box.closed++
	d.box.closedCh <- struct{}{}
	return nil
}
