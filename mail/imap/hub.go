package imap

import (
	"sync"

	"github.com/flotilla-mail/flotilla/storage"
)

// hub fans the store's change events out to the sessions of each user. The
// store calls publish after every commit on this node, whichever node the
// write came through, in commit order; publish never blocks.
type hub struct {
	mu    sync.Mutex
	users map[uint64]map[*session]struct{}
	next  chan struct{} // closed at the next publish
}

func newHub() *hub {
	return &hub{users: map[uint64]map[*session]struct{}{}, next: make(chan struct{})}
}

// committed returns a channel closed when the store next publishes.
func (h *hub) committed() <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.next
}

func (h *hub) add(userID uint64, s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.users[userID]
	if m == nil {
		m = map[*session]struct{}{}
		h.users[userID] = m
	}
	m[s] = struct{}{}
}

func (h *hub) remove(userID uint64, s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m := h.users[userID]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(h.users, userID)
		}
	}
}

func (h *hub) publish(events []storage.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	close(h.next)
	h.next = make(chan struct{})
	if len(h.users) == 0 {
		return
	}
	for i := 0; i < len(events); {
		j := i + 1
		for j < len(events) && events[j].UserID == events[i].UserID {
			j++
		}
		for s := range h.users[events[i].UserID] {
			s.ev.notify(events[i:j])
		}
		i = j
	}
}

// maxPendingExpunges bounds what a session keeps between polls; past it the
// session compares its whole view with the store instead.
const maxPendingExpunges = 100_000

// expunged is one expunge event for the session's selected mailbox.
type expunged struct {
	seq uint64 // the change's sequence (MODSEQ)
	uid uint32
}

// eventBox is the part of a session the hub writes to. Its lock is only
// ever held for a few assignments, never during I/O.
type eventBox struct {
	wake chan struct{} // capacity 1: "something changed"

	mu        sync.Mutex
	mailbox   uint64 // the selected mailbox, 0 for none
	expunges  []expunged
	overflow  bool
	listDirty bool // the folder list changed
}

func (b *eventBox) notify(events []storage.Event) {
	b.mu.Lock()
	relevant := false
	for _, e := range events {
		switch e.Kind {
		case storage.MessageExpunged:
			if e.MailboxID == b.mailbox {
				if len(b.expunges) < maxPendingExpunges {
					b.expunges = append(b.expunges, expunged{seq: e.Seq, uid: e.UID})
				} else {
					b.overflow = true
				}
				relevant = true
			}
		case storage.MessageAdded, storage.MessageFlags:
			relevant = relevant || e.MailboxID == b.mailbox
		case storage.MailboxCreated, storage.MailboxDeleted, storage.MailboxRenamed:
			b.listDirty = true
			relevant = relevant || e.MailboxID == b.mailbox
		}
	}
	b.mu.Unlock()
	if relevant {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
}

// selectMailbox switches the box to mailbox id, dropping what was pending
// for another one.
func (b *eventBox) selectMailbox(id uint64) {
	b.mu.Lock()
	b.mailbox = id
	b.expunges = nil
	b.overflow = false
	b.mu.Unlock()
}

// takeExpunges returns the pending expunges up to sequence upTo and keeps
// the later ones; overflow says the session must compare its whole view.
func (b *eventBox) takeExpunges(upTo uint64) (out []uint32, overflow bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	keep := b.expunges[:0]
	for _, e := range b.expunges {
		if e.seq <= upTo {
			out = append(out, e.uid)
		} else {
			keep = append(keep, e)
		}
	}
	b.expunges = keep
	overflow, b.overflow = b.overflow, false
	return out, overflow
}
