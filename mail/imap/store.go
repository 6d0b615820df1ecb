package imap

import (
	"errors"
	"sort"
	"strings"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

var errReadOnly = no("CANNOT", "the mailbox is open read-only (EXAMINE)")

// refs resolves a set for the selected mailbox, "$" included.
func (s *session) refs(set numSet, byUID bool) ([]msgRef, error) {
	if set.dollar {
		out := make([]msgRef, 0, len(s.searchRes))
		for _, u := range s.searchRes {
			if seq := s.sel.uids.seq(u); seq != 0 {
				out = append(out, msgRef{seq, u})
			}
		}
		return out, nil
	}
	return s.sel.uids.resolve(set, byUID)
}

func refUIDs(refs []msgRef) []uint32 {
	out := make([]uint32, len(refs))
	for i, r := range refs {
		out[i] = r.uid
	}
	return out
}

// maxBlindCandidates bounds the UIDs of unapplied silent STOREs an EXPUNGE
// names (after a STORE to a whole mailbox it waits for the apply instead).
const maxBlindCandidates = 1024

func cmdExpunge(s *session, tag string, p *parser, uid bool) (string, string, error) {
	var set numSet
	if uid {
		set = p.numSet()
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	sel := s.sel
	if sel.readOnly {
		return "", "", errReadOnly
	}
	var want map[uint32]bool // UID EXPUNGE's set
	if uid {
		refs, err := s.refs(set, true)
		if err != nil {
			return "", "", err
		}
		want = map[uint32]bool{}
		for _, r := range refs {
			want[r.uid] = true
		}
	}
	// candidates are the \Deleted messages of the session's view, and with
	// blind those its silent STOREs touched, which this node may not have
	// applied yet: expunge-deleted, after them in the log, removes only
	// what is \Deleted then, so the session need not wait for them.
	candidates := func(blind bool) ([]uint32, error) {
		out, err := s.deletedInView(sel)
		if err != nil {
			return nil, err
		}
		if blind && len(s.blind) > 0 {
			for u := range s.blind {
				if sel.uids.seq(u) != 0 {
					out = append(out, u)
				}
			}
			sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
			out = dedupe(out)
		}
		if want != nil {
			kept := out[:0]
			for _, u := range out {
				if want[u] {
					kept = append(kept, u)
				}
			}
			out = kept
		}
		return out, nil
	}
	blind := len(s.blind) <= maxBlindCandidates
	if !blind {
		if err := s.settle(); err != nil {
			return "", "", err
		}
	}
	deleted, err := candidates(blind)
	if err != nil || len(deleted) == 0 {
		return "", "", err
	}
	resp, err := s.propose(&command.ExpungeDeleted{UserID: s.user.ID, MailboxID: sel.id, UIDs: deleted})
	if errors.Is(err, cluster.ErrNotSupported) {
		// A voter of command version 1: expunge removes what it is given,
		// so only what this node holds \Deleted, after the session's own
		// writes.
		if err := s.settle(); err != nil {
			return "", "", err
		}
		if deleted, err = candidates(false); err != nil || len(deleted) == 0 {
			return "", "", err
		}
		resp, err = s.propose(&command.Expunge{UserID: s.user.ID, MailboxID: sel.id, UIDs: deleted})
	}
	if err != nil {
		return "", "", err
	}
	return "", "", s.poll(true, u32s(resp.IDs)...)
}

// expungeDeleted removes those of uids that are still \Deleted when the
// change is applied. While a voter knows only command version 1, it removes
// uids as the session saw them flagged.
func (s *session) expungeDeleted(mailboxID uint64, uids []uint32) (command.Response, error) {
	resp, err := s.propose(&command.ExpungeDeleted{UserID: s.user.ID, MailboxID: mailboxID, UIDs: uids})
	if errors.Is(err, cluster.ErrNotSupported) {
		resp, err = s.propose(&command.Expunge{UserID: s.user.ID, MailboxID: mailboxID, UIDs: uids})
	}
	return resp, err
}

func u32s(ids []uint64) []uint32 {
	out := make([]uint32, len(ids))
	for i, v := range ids {
		out[i] = uint32(v)
	}
	return out
}

// checkFlags refuses system flags that do not exist and drops \Recent.
func checkFlags(flags []string) ([]string, error) {
	out := flags[:0]
	for _, f := range flags {
		if strings.HasPrefix(f, `\`) {
			switch strings.ToLower(f) {
			case `\seen`, `\answered`, `\flagged`, `\deleted`, `\draft`:
			case `\recent`:
				continue
			default:
				return nil, bad("CLIENTBUG", "unknown system flag "+cleanText(f))
			}
		}
		out = append(out, f)
	}
	return out, nil
}

func cmdStore(s *session, tag string, p *parser, uid bool) (string, string, error) {
	set := p.numSet()
	p.sp()
	var unchangedSince uint64
	hasUnchanged := false
	if p.peek() == '(' {
		p.list(func() {
			if !p.takeWord("UNCHANGEDSINCE") {
				p.fail("unknown STORE modifier")
				return
			}
			p.sp()
			unchangedSince = p.number64()
			hasUnchanged = true
		})
		p.sp()
	}
	var op storage.FlagOp
	switch {
	case p.take('+'):
		op = storage.FlagsAdd
	case p.take('-'):
		op = storage.FlagsRemove
	default:
		op = storage.FlagsReplace
	}
	item := strings.ToUpper(p.atom())
	silent := false
	switch item {
	case "FLAGS":
	case "FLAGS.SILENT":
		silent = true
	default:
		if p.err == nil {
			p.fail("expected FLAGS or FLAGS.SILENT")
		}
	}
	p.sp()
	var flags []string
	if p.peek() == '(' {
		flags = p.flagList()
	} else {
		for p.ok() {
			flags = append(flags, p.flag())
			if !p.take(' ') {
				break
			}
		}
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	flags, err := checkFlags(flags)
	if err != nil {
		return "", "", err
	}
	if hasUnchanged {
		s.enableCondstore()
	}
	sel := s.sel
	if sel.readOnly {
		return "", "", errReadOnly
	}
	refs, err := s.refs(set, uid)
	if err != nil {
		return "", "", err
	}
	failed := map[uint32]bool{}
	changed := map[uint32]bool{}
	if hasUnchanged && unchangedSince == 0 {
		// UNCHANGEDSINCE 0 fails every message (RFC 7162 section 3.1.3).
		for _, r := range refs {
			failed[r.uid] = true
		}
	} else if len(refs) > 0 && silent && !s.condstore {
		// Nothing of the result is answered: the OK can go at commit.
		idx, err := s.proposeBlind(&command.SetFlags{UserID: s.user.ID, MailboxID: sel.id, UIDs: refUIDs(refs),
			Op: op, Flags: flags})
		if err != nil {
			return "", "", err
		}
		// MODSEQ is the log index of the change (storage.Tx.SetClock):
		// the session is not told of its own change when it is applied.
		if s.blind == nil {
			s.blind = map[uint32]bool{}
		}
		for _, r := range refs {
			sel.own(r.uid, idx)
			s.blind[r.uid] = true
		}
	} else if len(refs) > 0 {
		resp, err := s.propose(&command.SetFlags{UserID: s.user.ID, MailboxID: sel.id, UIDs: refUIDs(refs),
			Op: op, Flags: flags, UnchangedSince: unchangedSince})
		if err != nil {
			return "", "", err
		}
		for _, id := range resp.Failed {
			failed[uint32(id)] = true
		}
		for _, id := range resp.IDs {
			changed[uint32(id)] = true
		}
	}
	// Announce the result: FLAGS of each message (not for .SILENT), with
	// MODSEQ under CONDSTORE (then also for .SILENT, for changed ones).
	if !silent || s.condstore {
		err := s.view(func(tx *storage.Tx) error {
			for _, r := range refs {
				if failed[r.uid] || (silent && !changed[r.uid]) {
					continue
				}
				m, err := tx.Message(sel.id, r.uid)
				if errors.Is(err, storage.ErrNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				if changed[r.uid] {
					sel.own(r.uid, m.ModSeq)
				}
				s.out.raw("* ").num(r.seq).raw(" FETCH (")
				if uid || s.condstore {
					s.out.raw("UID ").num(r.uid).sp()
				}
				if silent {
					s.out.raw("MODSEQ (").num64(m.ModSeq).raw("))\r\n")
					continue
				}
				s.out.raw("FLAGS ").flags(m.Flags, !s.rev2 && sel.recent(r.uid))
				if s.condstore {
					s.out.raw(" MODSEQ (").num64(m.ModSeq).raw(")")
				}
				s.out.raw(")\r\n")
			}
			return nil
		})
		if err != nil {
			return "", "", err
		}
	}
	if len(failed) > 0 {
		var nums []uint32
		for _, r := range refs {
			if failed[r.uid] {
				if uid {
					nums = append(nums, r.uid)
				} else {
					nums = append(nums, r.seq)
				}
			}
		}
		return "MODIFIED " + uidSetText(nums), "conditional STORE failed for some messages", nil
	}
	return "", "", nil
}

func cmdCopy(s *session, tag string, p *parser, uid bool) (string, string, error) {
	return s.copyMove(p, uid, false)
}

func cmdMove(s *session, tag string, p *parser, uid bool) (string, string, error) {
	return s.copyMove(p, uid, true)
}

func (s *session) copyMove(p *parser, uid, move bool) (string, string, error) {
	set := p.numSet()
	p.sp()
	dest := p.mailbox()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	sel := s.sel
	if move && sel.readOnly {
		return "", "", errReadOnly
	}
	refs, err := s.refs(set, uid)
	if err != nil {
		return "", "", err
	}
	var dst storage.Mailbox
	if err := s.view(func(tx *storage.Tx) error {
		var err error
		dst, err = tx.Mailbox(s.user.ID, dest)
		return err
	}); err != nil {
		return "", "", tryCreate{err}
	}
	if move && dst.ID == sel.id {
		return "", "", no("CANNOT", "cannot move messages into the mailbox they are in")
	}
	if len(refs) == 0 {
		return "", "", nil
	}
	resp, err := s.propose(&command.Copy{UserID: s.user.ID, From: sel.id, To: dst.ID, UIDs: refUIDs(refs), Move: move})
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			return "", "", tryCreate{err}
		}
		return "", "", err
	}
	var src, out []uint32
	for i, id := range resp.IDs {
		if id != 0 && i < len(refs) {
			src = append(src, refs[i].uid)
			out = append(out, uint32(id))
		}
	}
	code := ""
	if len(out) > 0 {
		code = "COPYUID " + uitoa(dst.UIDValidity) + " " + uidSetText(src) + " " + uidSetText(out)
	}
	if !move {
		return code, "", nil
	}
	if code != "" {
		s.out.raw("* OK [").raw(code).raw("] moved\r\n")
	}
	return "", "", s.poll(true, src...)
}
