package imap

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

const sep = storage.Separator

// applyWait bounds the wait for this node to apply a committed write.
const applyWait = 30 * time.Second

// view runs fn in a read transaction of the local store.
func (s *session) view(fn func(tx *storage.Tx) error) error {
	return s.srv.Cluster.Store().View(fn)
}

// propose commits a write through the cluster and returns once this
// node's store holds it, so the session reads its own write afterwards.
func (s *session) propose(c command.Command) (command.Response, error) {
	resp, idx, err := s.srv.Cluster.Propose(s.ctx, c)
	if idx > 0 && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		// Committed, so it will take effect; only this session, ending,
		// did not see it applied. "Try again" would make it twice.
		return resp, &Error{Status: "NO", Code: "UNAVAILABLE", Text: "interrupted after the change was saved: reconnect to see it, do not repeat it", Err: err}
	}
	if idx > 0 {
		ctx, cancel := context.WithTimeout(s.ctx, applyWait)
		defer cancel()
		werr := s.srv.waitApplied(ctx, idx)
		if werr != nil && err == nil {
			err = werr
		}
		if werr == nil && idx >= s.pending {
			s.settled() // the blind writes came before this one
		}
	}
	return resp, err
}

// proposeBlind commits a write whose answer needs nothing from the state
// machine and returns at commit: the entry is durable on a majority, and
// the store applies it in its own time, many to a transaction. The next
// command that reads waits for it (settle), so the session still reads
// its own writes.
func (s *session) proposeBlind(c command.Command) (uint64, error) {
	idx, err := s.srv.Cluster.ProposeCommitted(s.ctx, c)
	if err != nil {
		return 0, err
	}
	s.pending = max(s.pending, idx)
	return idx, nil
}

// settle waits until this node has applied the session's blind writes.
func (s *session) settle() error {
	if s.pending == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.ctx, applyWait)
	defer cancel()
	// WaitApplied tells the applier someone waits, so it does not gather
	// for longer; waitApplied then waits for the store's own index.
	err := s.srv.Cluster.WaitApplied(ctx, s.pending)
	if err == nil {
		err = s.srv.waitApplied(ctx, s.pending)
	}
	if err != nil {
		return &Error{Status: "NO", Code: "UNAVAILABLE", Text: "your last change is saved but not yet readable here: try again", Err: err}
	}
	s.settled()
	return nil
}

// settled forgets the blind writes once this node has applied them.
func (s *session) settled() {
	s.pending, s.blind = 0, nil
}

func cmdNamespace(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	s.out.raw(`* NAMESPACE (("" "/")) NIL NIL` + "\r\n")
	return "", "", nil
}

var specialUses = map[string]string{
	`\all`: `\All`, `\archive`: `\Archive`, `\drafts`: `\Drafts`, `\flagged`: `\Flagged`,
	`\junk`: `\Junk`, `\sent`: `\Sent`, `\trash`: `\Trash`,
}

func cmdCreate(s *session, tag string, p *parser, uid bool) (string, string, error) {
	name := p.mailbox()
	use := ""
	if p.take(' ') {
		// CREATE-SPECIAL-USE (RFC 6154): (USE (\Sent))
		p.list(func() {
			if !p.takeWord("USE") {
				p.fail("unknown CREATE parameter")
				return
			}
			p.sp()
			p.list(func() {
				f := p.flag()
				canon, ok := specialUses[strings.ToLower(f)]
				if !ok && p.err == nil {
					p.failErr(no("USEATTR", "unsupported special-use attribute "+cleanText(f)))
				}
				if use != "" && p.err == nil {
					p.failErr(no("USEATTR", "one special-use attribute per mailbox"))
				}
				use = canon
			})
		})
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	name = strings.TrimSuffix(name, sep)
	if name == "INBOX" {
		return "", "", no("ALREADYEXISTS", "INBOX always exists")
	}
	if _, err := storage.NormalizeMailboxName(name); err != nil {
		return "", "", err
	}
	// Superior levels that do not exist are created first (RFC 3501
	// section 6.3.3), so that the tree can be renamed or deleted by level.
	parts := strings.Split(name, sep)
	for i := 1; i < len(parts); i++ {
		parent := strings.Join(parts[:i], sep)
		if _, err := s.propose(&command.CreateMailbox{UserID: s.user.ID, Name: parent}); err != nil && !errors.Is(err, storage.ErrExists) {
			return "", "", err
		}
	}
	_, err := s.propose(&command.CreateMailbox{UserID: s.user.ID, Name: name, SpecialUse: use})
	return "", "", err
}

func cmdDelete(s *session, tag string, p *parser, uid bool) (string, string, error) {
	name := p.mailbox()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if name == "INBOX" {
		return "", "", no("CANNOT", "INBOX cannot be deleted")
	}
	_, err := s.propose(&command.DeleteMailbox{UserID: s.user.ID, Name: name})
	return "", "", err
}

func cmdRename(s *session, tag string, p *parser, uid bool) (string, string, error) {
	from := p.mailbox()
	p.sp()
	to := p.mailbox()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	to = strings.TrimSuffix(to, sep)
	if _, err := storage.NormalizeMailboxName(to); err != nil {
		return "", "", err
	}
	_, err := s.propose(&command.RenameMailbox{UserID: s.user.ID, From: from, To: to})
	return "", "", err
}

func cmdSubscribe(s *session, tag string, p *parser, uid bool) (string, string, error) {
	return s.subscribe(p, true)
}

func cmdUnsubscribe(s *session, tag string, p *parser, uid bool) (string, string, error) {
	return s.subscribe(p, false)
}

func (s *session) subscribe(p *parser, on bool) (string, string, error) {
	name := p.mailbox()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	_, err := s.propose(&command.Subscribe{UserID: s.user.ID, Name: name, On: on})
	return "", "", err
}

// listEntry is one line of a LIST answer.
type listEntry struct {
	name     string
	mb       *storage.Mailbox // nil for a level that exists only as a parent
	children bool
	subChild bool // a subscribed descendant (RECURSIVEMATCH, LSUB)
}

// folderTree lists the user's mailboxes with the parent levels they imply.
func folderTree(mbs []storage.Mailbox) map[string]*listEntry {
	all := map[string]*listEntry{}
	for i := range mbs {
		mb := &mbs[i]
		e := all[mb.Name]
		if e == nil {
			e = &listEntry{name: mb.Name}
			all[mb.Name] = e
		}
		e.mb = mb
		parts := strings.Split(mb.Name, sep)
		for j := len(parts) - 1; j > 0; j-- {
			parent := strings.Join(parts[:j], sep)
			pe := all[parent]
			if pe == nil {
				pe = &listEntry{name: parent}
				all[parent] = pe
			}
			pe.children = true
			if mb.Subscribed {
				pe.subChild = true
			}
		}
	}
	return all
}

// matchPattern matches a LIST pattern: "*" matches anything, "%" anything
// but the hierarchy separator.
func matchPattern(pattern, name string) bool {
	for len(pattern) > 0 {
		c := pattern[0]
		switch c {
		case '*', '%':
			rest := pattern[1:]
			for i := 0; i <= len(name); i++ {
				if c == '%' && i > 0 && name[i-1] == sep[0] {
					return false
				}
				if matchPattern(rest, name[i:]) {
					return true
				}
			}
			return false
		default:
			if len(name) == 0 || name[0] != c {
				return false
			}
			pattern, name = pattern[1:], name[1:]
		}
	}
	return len(name) == 0
}

// canonicalPattern joins reference and pattern and spells INBOX in capitals.
func canonicalPattern(ref, pattern string) string {
	full := pattern
	if ref != "" && !strings.HasPrefix(pattern, sep) {
		full = ref + pattern
	} else if ref != "" {
		full = strings.TrimSuffix(ref, sep) + pattern
	}
	head, rest, found := strings.Cut(full, sep)
	if strings.EqualFold(head, "INBOX") {
		full = "INBOX"
		if found {
			full += sep + rest
		}
	}
	return full
}

type listOpts struct {
	selSubscribed, recursive, selSpecial   bool
	retSubscribed, retChildren, retSpecial bool
	status                                 *statusItems
	lsub                                   bool
}

func cmdList(s *session, tag string, p *parser, uid bool) (string, string, error) {
	var o listOpts
	extended := false
	if p.peek() == '(' {
		extended = true
		p.list(func() {
			switch strings.ToUpper(p.atom()) {
			case "SUBSCRIBED":
				o.selSubscribed = true
			case "RECURSIVEMATCH":
				o.recursive = true
			case "SPECIAL-USE":
				o.selSpecial = true
			case "REMOTE":
			default:
				p.fail("unknown LIST selection option")
			}
		})
		p.sp()
		if o.recursive && !o.selSubscribed && !o.selSpecial {
			p.fail("RECURSIVEMATCH needs another selection option")
		}
	}
	ref := p.mailbox()
	if p.err != nil {
		// The reference may be any string, e.g. "" which decodes fine.
		return "", "", p.err
	}
	p.sp()
	var patterns []string
	if p.peek() == '(' {
		extended = true
		p.list(func() { patterns = append(patterns, p.listMailbox()) })
	} else {
		patterns = append(patterns, p.listMailbox())
	}
	if p.take(' ') {
		extended = true
		if !p.takeWord("RETURN") {
			p.fail("expected RETURN")
		}
		p.sp()
		p.list(func() {
			switch strings.ToUpper(p.atom()) {
			case "SUBSCRIBED":
				o.retSubscribed = true
			case "CHILDREN":
				o.retChildren = true
			case "SPECIAL-USE":
				o.retSpecial = true
			case "STATUS":
				p.sp()
				items := p.statusItems()
				o.status = &items
			default:
				p.fail("unknown LIST return option")
			}
		})
	}
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if !extended {
		o.retChildren, o.retSpecial = true, true
	}
	if o.selSubscribed {
		o.retSubscribed = true
	}
	return "", "", s.list(ref, patterns, o)
}

func cmdLsub(s *session, tag string, p *parser, uid bool) (string, string, error) {
	ref := p.mailbox()
	p.sp()
	pattern := p.listMailbox()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	return "", "", s.list(ref, []string{pattern}, listOpts{lsub: true, selSubscribed: true})
}

func (s *session) list(ref string, patterns []string, o listOpts) error {
	if len(patterns) == 1 && patterns[0] == "" && !o.lsub {
		// The hierarchy delimiter and root (RFC 3501 section 6.3.8).
		s.out.raw(`* LIST (\Noselect) "/" ""` + "\r\n")
		return nil
	}
	var mbs []storage.Mailbox
	if err := s.view(func(tx *storage.Tx) error {
		var err error
		mbs, err = tx.Mailboxes(s.user.ID)
		return err
	}); err != nil {
		return err
	}
	tree := folderTree(mbs)
	names := make([]string, 0, len(tree))
	for n := range tree {
		names = append(names, n)
	}
	sort.Strings(names)
	full := make([]string, len(patterns))
	for i, pat := range patterns {
		full[i] = canonicalPattern(ref, pat)
	}
	for _, n := range names {
		e := tree[n]
		matched := false
		for _, pat := range full {
			if matchPattern(pat, n) {
				matched = true
				break
			}
		}
		if !matched {
			continue
		}
		subscribed := e.mb != nil && e.mb.Subscribed
		special := e.mb != nil && e.mb.SpecialUse != ""
		var attrs []string
		switch {
		case o.lsub:
			if !subscribed {
				// A parent of a subscribed mailbox shows when "%" stops at it.
				if !e.subChild || !percentStops(full, n) {
					continue
				}
				attrs = append(attrs, `\Noselect`)
			}
		case o.selSubscribed || o.selSpecial:
			ok := (!o.selSubscribed || subscribed) && (!o.selSpecial || special)
			if !ok {
				if o.recursive && o.selSubscribed && e.subChild {
					s.out.raw("* LIST () \"/\" ").mailbox(n).raw(` ("CHILDINFO" ("SUBSCRIBED"))` + "\r\n")
				}
				continue
			}
		default:
			if e.mb == nil {
				// A level implied by its children: shown where "%" stops.
				if !percentStops(full, n) {
					continue
				}
				attrs = append(attrs, `\Noselect`)
			}
		}
		if e.mb == nil && !o.lsub && (o.selSubscribed || o.selSpecial) {
			attrs = append(attrs, `\NonExistent`)
		}
		if !o.lsub && (o.retChildren || !o.selSubscribed) {
			if e.children {
				attrs = append(attrs, `\HasChildren`)
			} else {
				attrs = append(attrs, `\HasNoChildren`)
			}
		}
		if o.retSubscribed && subscribed && !o.lsub {
			attrs = append(attrs, `\Subscribed`)
		}
		if (o.retSpecial || o.selSpecial) && special && !o.lsub {
			attrs = append(attrs, e.mb.SpecialUse)
		}
		if o.lsub {
			s.out.raw("* LSUB (")
		} else {
			s.out.raw("* LIST (")
		}
		s.out.raw(strings.Join(attrs, " ")).raw(`) "/" `).mailbox(n)
		if o.recursive && e.subChild && !o.lsub {
			s.out.raw(` ("CHILDINFO" ("SUBSCRIBED"))`)
		}
		s.out.crlf()
		if o.status != nil && e.mb != nil {
			s.writeStatus(e.mb, *o.status)
		}
	}
	return nil
}

// percentStops reports whether some pattern matches name through a "%"
// that stopped at a hierarchy level (so the level is listed).
func percentStops(patterns []string, name string) bool {
	for _, p := range patterns {
		if strings.Contains(p, "%") && matchPattern(p, name) {
			return true
		}
	}
	return false
}

// statusItems are the attributes STATUS asks for.
type statusItems struct {
	messages, recent, uidnext, uidvalidity, unseen, highestModSeq, size, deleted, appendLimit bool
}

func (p *parser) statusItems() statusItems {
	var it statusItems
	p.list(func() {
		switch strings.ToUpper(p.atom()) {
		case "MESSAGES":
			it.messages = true
		case "RECENT":
			it.recent = true
		case "UIDNEXT":
			it.uidnext = true
		case "UIDVALIDITY":
			it.uidvalidity = true
		case "UNSEEN":
			it.unseen = true
		case "HIGHESTMODSEQ":
			it.highestModSeq = true
		case "SIZE":
			it.size = true
		case "DELETED":
			it.deleted = true
		case "APPENDLIMIT":
			it.appendLimit = true
		default:
			p.fail("unknown STATUS item")
		}
	})
	return it
}

func cmdStatus(s *session, tag string, p *parser, uid bool) (string, string, error) {
	name := p.mailbox()
	p.sp()
	items := p.statusItems()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if items.highestModSeq {
		s.enableCondstore()
	}
	var mb storage.Mailbox
	var deleted int
	err := s.view(func(tx *storage.Tx) error {
		var err error
		if mb, err = tx.Mailbox(s.user.ID, name); err != nil {
			return err
		}
		if items.deleted {
			d, err := tx.UIDsWithFlag(mb.ID, `\Deleted`)
			deleted = len(d)
			return err
		}
		return nil
	})
	if err != nil {
		return "", "", err
	}
	s.writeStatusDeleted(&mb, items, deleted)
	return "", "", nil
}

func (s *session) writeStatus(mb *storage.Mailbox, it statusItems) {
	deleted := 0
	if it.deleted {
		_ = s.view(func(tx *storage.Tx) error {
			d, err := tx.UIDsWithFlag(mb.ID, `\Deleted`)
			deleted = len(d)
			return err
		})
	}
	s.writeStatusDeleted(mb, it, deleted)
}

func (s *session) writeStatusDeleted(mb *storage.Mailbox, it statusItems, deleted int) {
	r := &s.out
	r.raw("* STATUS ").mailbox(mb.Name).raw(" (")
	first := true
	item := func(name string) *resp {
		if !first {
			r.sp()
		}
		first = false
		return r.raw(name).sp()
	}
	if it.messages {
		item("MESSAGES").num(mb.Messages)
	}
	if it.recent {
		item("RECENT").num(0)
	}
	if it.uidnext {
		item("UIDNEXT").num(mb.UIDNext)
	}
	if it.uidvalidity {
		item("UIDVALIDITY").num(mb.UIDValidity)
	}
	if it.unseen {
		item("UNSEEN").num(mb.Unseen)
	}
	if it.highestModSeq {
		item("HIGHESTMODSEQ").num64(mb.HighestModSeq)
	}
	if it.size {
		item("SIZE").int64(mb.Size)
	}
	if it.deleted {
		item("DELETED").int64(int64(deleted))
	}
	if it.appendLimit {
		item("APPENDLIMIT").int64(s.srv.appendLimit())
	}
	r.raw(")\r\n")
}

// Quota (RFC 9208): one root, "", holding all the user's mailboxes, with
// the STORAGE resource in KiB. An account without a limit has no root.

func cmdGetQuotaRoot(s *session, tag string, p *parser, uid bool) (string, string, error) {
	name := p.mailbox()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	limit, used, err := s.quota(func(tx *storage.Tx) error {
		_, err := tx.Mailbox(s.user.ID, name)
		return err
	})
	if err != nil {
		return "", "", err
	}
	s.out.raw("* QUOTAROOT ").mailbox(name)
	if limit > 0 {
		s.out.raw(` ""`)
	}
	s.out.crlf()
	if limit > 0 {
		s.writeQuota(used, limit)
	}
	return "", "", nil
}

// quota reads the user's limit (0: none) and bytes used, after check.
func (s *session) quota(check func(*storage.Tx) error) (limit, used int64, err error) {
	err = s.view(func(tx *storage.Tx) error {
		if check != nil {
			if err := check(tx); err != nil {
				return err
			}
		}
		u, err := tx.UserByID(s.user.ID)
		if err != nil {
			return err
		}
		limit = u.QuotaBytes
		used, err = tx.UsedBytes(s.user.ID)
		return err
	})
	return limit, used, err
}

func (s *session) writeQuota(used, limit int64) {
	s.out.raw(`* QUOTA "" (STORAGE `).int64((used + 1023) / 1024).sp().int64(limit / 1024).raw(")\r\n")
}

func cmdGetQuota(s *session, tag string, p *parser, uid bool) (string, string, error) {
	root := p.astring()
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	limit, used, err := s.quota(nil)
	if err != nil {
		return "", "", err
	}
	if root != "" || limit == 0 {
		return "", "", no("NONEXISTENT", "no such quota root")
	}
	s.writeQuota(used, limit)
	return "", "", nil
}

func cmdSetQuota(s *session, tag string, p *parser, uid bool) (string, string, error) {
	p.astring()
	p.sp()
	p.list(func() {
		p.atom()
		p.sp()
		p.number64()
	})
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	return "", "", no("NOPERM", "quotas are set by the administrator")
}
