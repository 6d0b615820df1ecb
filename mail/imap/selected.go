package imap

import (
	"errors"
	"sort"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
)

// selected is the state of the selected mailbox.
type selected struct {
	id          uint64
	name        string
	uidValidity uint32
	readOnly    bool
	uids        *uidMap
	// modseq is the MODSEQ up to which flag changes have been announced.
	modseq uint64
	// recentFrom: messages from this UID on arrived during the session and
	// are \Recent to it (\Recent is not stored cluster-wide).
	recentFrom uint32
	// reported holds flag changes (UID to MODSEQ) the session need not be
	// told of: announced by the last STORE or FETCH, or its own silent
	// STOREs. A poll forgets those it has seen applied.
	reported map[uint32]uint64
}

// own records changes the session made and need not be told of.
func (sel *selected) own(uid uint32, modseq uint64) {
	if sel.reported == nil {
		sel.reported = map[uint32]uint64{}
	}
	sel.reported[uid] = modseq
}

func (sel *selected) recent(uid uint32) bool { return uid >= sel.recentFrom }

// systemFlags are the flags every mailbox offers; keywords are free (\*).
const systemFlags = `\Answered \Flagged \Deleted \Seen \Draft $Forwarded $MDNSent $Junk $NotJunk $Phishing`

// firstUnseenBudget bounds the scan for [UNSEEN n] at SELECT: past it the
// code is left out (RFC 3501 allows that; IMAP4rev2 dropped it).
const firstUnseenBudget = 2000

func cmdSelect(s *session, tag string, p *parser, uid bool) (string, string, error) {
	return s.selectMailbox(tag, p, false)
}

func cmdExamine(s *session, tag string, p *parser, uid bool) (string, string, error) {
	return s.selectMailbox(tag, p, true)
}

func (s *session) selectMailbox(tag string, p *parser, readOnly bool) (string, string, error) {
	name := p.mailbox()
	condstore := false
	if p.take(' ') {
		p.list(func() {
			switch {
			case p.takeWord("CONDSTORE"):
				condstore = true
			default:
				p.fail("unknown SELECT parameter")
			}
		})
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if s.sel != nil {
		s.unselect()
		if s.rev2 || s.condstore {
			s.out.raw("* OK [CLOSED] previous mailbox closed\r\n")
		}
	}
	if condstore {
		s.condstore = true
	}
	var mb storage.Mailbox
	var runs []storage.UIDRun
	var firstUnseen uint32
	err := s.view(func(tx *storage.Tx) error {
		var err error
		if mb, err = tx.Mailbox(s.user.ID, name); err != nil {
			return err
		}
		// Listen before reading, so that no change between the two is lost.
		s.ev.selectMailbox(mb.ID)
		if runs, err = tx.UIDRuns(mb.ID); err != nil {
			return err
		}
		if !s.rev2 && mb.Unseen > 0 {
			uid, found, err := tx.FirstUnseen(mb.ID, firstUnseenBudget)
			if err != nil {
				return err
			}
			if found {
				firstUnseen = uid
			}
		}
		return nil
	})
	if err != nil {
		s.ev.selectMailbox(0)
		return "", "", err
	}
	sel := &selected{
		id: mb.ID, name: mb.Name, uidValidity: mb.UIDValidity, readOnly: readOnly,
		uids: newUIDMap(runs), modseq: mb.HighestModSeq, recentFrom: mb.UIDNext,
	}
	s.sel = sel
	s.state = stateSelected
	r := &s.out
	r.raw("* FLAGS (" + systemFlags + ")\r\n")
	r.raw("* ").num(sel.uids.len()).raw(" EXISTS\r\n")
	if !s.rev2 {
		r.raw("* 0 RECENT\r\n")
		if firstUnseen != 0 {
			if seq := sel.uids.seq(firstUnseen); seq != 0 {
				r.raw("* OK [UNSEEN ").num(seq).raw("] first unseen\r\n")
			}
		}
	}
	if readOnly {
		r.raw("* OK [PERMANENTFLAGS ()] read-only\r\n")
	} else {
		r.raw("* OK [PERMANENTFLAGS (" + systemFlags + ` \*)] flags permitted` + "\r\n")
	}
	r.raw("* OK [UIDVALIDITY ").num(mb.UIDValidity).raw("] UIDs valid\r\n")
	r.raw("* OK [UIDNEXT ").num(mb.UIDNext).raw("] predicted next UID\r\n")
	r.raw("* OK [HIGHESTMODSEQ ").num64(mb.HighestModSeq).raw("] highest\r\n")
	if s.rev2 {
		r.raw("* LIST () \"/\" ").mailbox(mb.Name).crlf()
	}
	if readOnly {
		return "READ-ONLY", "EXAMINE completed", nil
	}
	return "READ-WRITE", "SELECT completed", nil
}

func (s *session) unselect() {
	s.sel = nil
	s.state = stateAuth
	s.ev.selectMailbox(0)
}

func cmdUnselect(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	s.unselect()
	return "", "", nil
}

// cmdClose expunges \Deleted messages silently (read-write only) and
// leaves the selected state.
func cmdClose(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	sel := s.sel
	s.unselect()
	if sel.readOnly {
		return "", "", nil
	}
	uids, err := s.deletedInView(sel)
	if err != nil {
		return "", "", err
	}
	if len(uids) > 0 {
		if _, err := s.expungeDeleted(sel.id, uids); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return "", "", err
		}
	}
	return "", "", nil
}

// deletedInView returns the UIDs of sel's view that this node holds
// \Deleted, ascending.
func (s *session) deletedInView(sel *selected) ([]uint32, error) {
	var uids []uint32
	err := s.view(func(tx *storage.Tx) error {
		var err error
		uids, err = tx.UIDsWithFlag(sel.id, `\Deleted`)
		return err
	})
	return inMap(sel.uids, uids), err
}

// inMap keeps the UIDs the session's view holds.
func inMap(m *uidMap, uids []uint32) []uint32 {
	out := uids[:0]
	for _, u := range uids {
		if m.seq(u) != 0 {
			out = append(out, u)
		}
	}
	return out
}

// poll brings the session's view of the selected mailbox up to date with
// the local store and writes the untagged responses: EXPUNGE (only when
// allowExpunge), EXISTS and FETCH of changed flags. gone lists UIDs this
// session itself just expunged (it knows them without waiting for events).
func (s *session) poll(allowExpunge bool, gone ...uint32) error {
	sel := s.sel
	if sel == nil {
		return nil
	}
	var (
		mb       storage.Mailbox
		removed  []uint32
		added    []uint32
		changed  []storage.Message
		vanished bool
		applied  uint64
	)
	err := s.view(func(tx *storage.Tx) error {
		var err error
		mb, err = tx.MailboxByID(sel.id)
		if errors.Is(err, storage.ErrNotFound) {
			vanished = true
			return nil
		}
		if err != nil {
			return err
		}
		applied = tx.Applied()
		if allowExpunge {
			exp, overflow := s.ev.takeExpunges(applied)
			exp = append(exp, gone...)
			sort.Slice(exp, func(i, j int) bool { return exp[i] < exp[j] })
			removed = inMap(sel.uids, dedupe(exp))
			if err := tx.UIDsFrom(sel.id, sel.uids.maxUID()+1, func(u uint32) bool {
				added = append(added, u)
				return true
			}); err != nil {
				return err
			}
			if overflow || int64(sel.uids.len())-int64(len(removed))+int64(len(added)) != int64(mb.Messages) {
				// Missed events (or a race with their delivery): compare
				// the whole view with the store.
				if removed, err = diffGone(tx, sel); err != nil {
					return err
				}
			}
		} else if err := tx.UIDsFrom(sel.id, sel.uids.maxUID()+1, func(u uint32) bool {
			added = append(added, u)
			return true
		}); err != nil {
			return err
		}
		if mb.HighestModSeq > sel.modseq {
			var uids []uint32
			if err := tx.ChangedSince(sel.id, sel.modseq, func(uid uint32, modseq uint64) bool {
				if m, ok := sel.reported[uid]; ok && m == modseq {
					return true
				}
				if uid <= sel.uids.maxUID() {
					uids = append(uids, uid)
				}
				return true
			}); err != nil {
				return err
			}
			sort.Slice(uids, func(i, j int) bool { return uids[i] < uids[j] })
			for _, u := range uids {
				m, err := tx.Message(sel.id, u)
				if errors.Is(err, storage.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				changed = append(changed, m)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if vanished {
		s.out.raw("* BYE the selected mailbox was deleted\r\n")
		s.closeNow = true
		return nil
	}
	for uid, m := range sel.reported {
		if m <= applied {
			delete(sel.reported, uid)
		}
	}
	if len(removed) > 0 {
		seqs := sel.uids.remove(removed)
		for i := len(seqs) - 1; i >= 0; i-- {
			s.out.raw("* ").num(seqs[i]).raw(" EXPUNGE\r\n")
		}
	}
	if len(added) > 0 {
		for _, u := range added {
			sel.uids.add(u)
		}
		s.out.raw("* ").num(sel.uids.len()).raw(" EXISTS\r\n")
		if !s.rev2 {
			n := uint32(0)
			sel.uids.eachUID(sel.recentFrom, 0xffffffff, func(_, _ uint32) bool { n++; return true })
			s.out.raw("* ").num(n).raw(" RECENT\r\n")
		}
	}
	for i := range changed {
		m := &changed[i]
		seq := sel.uids.seq(m.UID)
		if seq == 0 {
			continue
		}
		s.out.raw("* ").num(seq).raw(" FETCH (UID ").num(m.UID).raw(" FLAGS ").flags(m.Flags, !s.rev2 && sel.recent(m.UID))
		if s.condstore {
			s.out.raw(" MODSEQ (").num64(m.ModSeq).raw(")")
		}
		s.out.raw(")\r\n")
	}
	if mb.HighestModSeq > sel.modseq {
		sel.modseq = mb.HighestModSeq
	}
	return nil
}

func dedupe(u []uint32) []uint32 {
	out := u[:0]
	for i, x := range u {
		if i == 0 || u[i-1] != x {
			out = append(out, x)
		}
	}
	return out
}

// diffGone returns the UIDs of the session's view that the store no longer
// holds, by walking both in order.
func diffGone(tx *storage.Tx, sel *selected) ([]uint32, error) {
	runs, err := tx.UIDRuns(sel.id)
	if err != nil {
		return nil, err
	}
	store := newUIDMap(runs)
	var gone []uint32
	sel.uids.eachUID(1, 0xffffffff, func(_, u uint32) bool {
		if store.seq(u) == 0 {
			gone = append(gone, u)
		}
		return true
	})
	return gone, nil
}

// cmdIdle waits for changes and reports them as they happen (RFC 2177)
// until the client sends DONE.
func cmdIdle(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	s.out.raw("+ idling\r\n")
	if err := s.poll(true); err != nil {
		return "", "", err
	}
	if err := s.flushOut(); err != nil {
		s.closeNow = true
		return "", "", errHandled
	}
	type lineResult struct {
		line []byte
		err  error
	}
	lines := make(chan lineResult, 1)
	s.readTimeout = orDur(s.srv.IdleTimeout, DefaultIdleTimeout)
	go func() {
		l, _, err := s.readLine(1024)
		lines <- lineResult{l, err}
	}()
	timeout := time.NewTimer(orDur(s.srv.IdleTimeout, DefaultIdleTimeout))
	defer timeout.Stop()
	for {
		select {
		case <-s.ev.wake:
			if err := s.poll(true); err != nil {
				s.log.Warn("IMAP poll failed", "err", err)
			}
			if err := s.flushOut(); err != nil || s.closeNow {
				s.closeNow = true
				return "", "", errHandled
			}
		case r := <-lines:
			if r.err != nil {
				s.closeNow = true
				if s.srv.closing.Load() {
					s.bye("server shutting down")
				}
				return "", "", errHandled
			}
			if !equalFoldBytes(trimEOL(r.line), "DONE") {
				return "", "", bad("CLIENTBUG", "expected DONE")
			}
			return "", "IDLE terminated", nil
		case <-s.srv.done:
			s.bye("server shutting down")
			s.closeNow = true
			return "", "", errHandled
		case <-timeout.C:
			s.bye("autologout: idle for too long")
			s.closeNow = true
			return "", "", errHandled
		}
	}
}

func equalFoldBytes(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if b[i]|0x20 != s[i]|0x20 {
			return false
		}
	}
	return true
}
