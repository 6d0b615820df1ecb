package imap

import (
	"bytes"
	"io"
	"mime"
	"net/mail"
	"strings"
	"time"
	"unicode/utf8"

	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"

	"github.com/flotilla-mail/flotilla/storage"
)

// searchKey is a node of a parsed SEARCH program.
type searchKey struct {
	op     string
	kids   []*searchKey
	set    numSet
	byUID  bool
	flag   string
	n      int64
	date   time.Time
	field  string
	value  string
	modseq uint64
}

const maxSearchDepth = 50

// parseSearch reads search keys up to the end of the command, ANDed.
func parseSearchKeys(p *parser, utf8OK bool) *searchKey {
	and := &searchKey{op: "AND"}
	for p.ok() {
		and.kids = append(and.kids, parseSearchKey(p, 0, utf8OK))
		if !p.take(' ') {
			break
		}
	}
	if len(and.kids) == 0 && p.err == nil {
		p.fail("missing search key")
	}
	return and
}

func (p *parser) searchString(utf8OK bool) string {
	var s string
	switch p.peek() {
	case '"', '{', '~':
		s = p.string()
	default:
		// 8-bit text in an atom is not IMAP, but clients (Python's imaplib
		// for one) send UTF-8 search words that way.
		s = p.word(func(c byte) bool { return isAstringChar(c) || c >= 0x80 }, "search string")
	}
	if p.err == nil && !utf8.ValidString(s) {
		p.failErr(bad("CLIENTBUG", "search string is not valid UTF-8"))
	}
	if p.err == nil && !utf8OK {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				p.failErr(bad("CLIENTBUG", "8-bit search string without CHARSET UTF-8"))
				break
			}
		}
	}
	return s
}

func parseSearchKey(p *parser, depth int, utf8OK bool) *searchKey {
	if depth > maxSearchDepth {
		p.fail("search program nested too deeply")
		return &searchKey{op: "ALL"}
	}
	if p.peek() == '(' {
		k := &searchKey{op: "AND"}
		p.list(func() { k.kids = append(k.kids, parseSearchKey(p, depth+1, utf8OK)) })
		if len(k.kids) == 0 && p.err == nil {
			p.fail("empty search key list")
		}
		return k
	}
	c := p.peek()
	if c == '*' || c == '$' || (c >= '0' && c <= '9') {
		return &searchKey{op: "SEQ", set: p.numSet()}
	}
	w := strings.ToUpper(p.atom())
	k := &searchKey{op: w}
	str := func() string { p.sp(); return p.searchString(utf8OK) }
	switch w {
	case "ALL", "NEW", "OLD", "RECENT":
	case "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN":
		k.op, k.flag = "FLAG", `\`+strings.ToUpper(w[:1])+strings.ToLower(w[1:])
	case "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN":
		k.op, k.flag = "NOFLAG", `\`+strings.ToUpper(w[2:3])+strings.ToLower(w[3:])
	case "KEYWORD", "UNKEYWORD":
		p.sp()
		k.flag = p.atom()
		k.op = map[string]string{"KEYWORD": "FLAG", "UNKEYWORD": "NOFLAG"}[w]
	case "BCC", "CC", "FROM", "SUBJECT", "TO":
		k.op, k.field, k.value = "HEADER", w, str()
	case "HEADER":
		p.sp()
		k.field = p.astring()
		k.value = str()
	case "BODY", "TEXT":
		k.value = str()
	case "BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE":
		p.sp()
		k.date = p.date()
	case "LARGER", "SMALLER":
		p.sp()
		k.n = int64(p.number64())
	case "UID":
		p.sp()
		k.set, k.byUID = p.numSet(), true
		k.op = "SEQ"
	case "NOT":
		p.sp()
		k.kids = []*searchKey{parseSearchKey(p, depth+1, utf8OK)}
	case "OR":
		p.sp()
		a := parseSearchKey(p, depth+1, utf8OK)
		p.sp()
		b := parseSearchKey(p, depth+1, utf8OK)
		k.kids = []*searchKey{a, b}
	case "MODSEQ":
		p.sp()
		if p.peek() == '"' {
			p.quoted() // entry name: flags are all alike here
			p.sp()
			t := strings.ToLower(p.atom())
			if t != "priv" && t != "shared" && t != "all" && p.err == nil {
				p.fail("bad MODSEQ entry type")
			}
			p.sp()
		}
		k.modseq = p.number64()
	default:
		if p.err == nil {
			p.fail("unknown search key %q", cleanText(w))
		}
	}
	return k
}

// usesModSeq reports whether the program has a MODSEQ key.
func (k *searchKey) usesModSeq() bool {
	if k.op == "MODSEQ" {
		return true
	}
	for _, c := range k.kids {
		if c.usesModSeq() {
			return true
		}
	}
	return false
}

// searchMsg is one message being tested, with its parts read on demand.
type searchMsg struct {
	tx  *storage.Tx
	ref msgRef
	m   *storage.Message
	sel *selected

	raw     []byte
	buf     *[]byte  // reused between messages
	s       *session // for the header cache; nil in fuzzing
	hdr     []headerField
	bodyTxt *string
	err     error
}

func (sm *searchMsg) message() []byte {
	if sm.raw == nil && sm.err == nil {
		var dst []byte
		if sm.buf != nil {
			dst = *sm.buf
		}
		raw, err := sm.tx.MessageBytes(*sm.m, dst)
		if err != nil {
			sm.err = err
			return nil
		}
		sm.raw = raw
		if sm.buf != nil {
			*sm.buf = raw
		}
	}
	return sm.raw
}

func (sm *searchMsg) fields() []headerField {
	if sm.hdr == nil {
		if sm.s != nil {
			_, f, err := sm.s.messageHeader(sm.tx, sm.m)
			if err != nil {
				sm.err = err
			}
			sm.hdr = f
		} else {
			h, _ := splitHeader(sm.message())
			sm.hdr = headerFields(h)
		}
		if sm.hdr == nil {
			sm.hdr = []headerField{}
		}
	}
	return sm.hdr
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// decodeHeader undoes RFC 2047 encoded words, keeping the text when that
// fails.
func decodeHeader(v string) string {
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		return d
	}
	return v
}

// bodyText is the decoded text of the message's text parts.
func (sm *searchMsg) bodyText() string {
	if sm.bodyTxt != nil {
		return *sm.bodyTxt
	}
	var b strings.Builder
	e, err := gomessage.Read(bytes.NewReader(sm.message()))
	if e != nil && (err == nil || gomessage.IsUnknownCharset(err) || gomessage.IsUnknownEncoding(err)) {
		_ = e.Walk(func(path []int, part *gomessage.Entity, err error) error {
			if err != nil {
				return nil
			}
			t, _, _ := part.Header.ContentType()
			if part.MultipartReader() != nil || (t != "" && !strings.HasPrefix(t, "text/") && t != "message/rfc822") {
				return nil
			}
			data, _ := io.ReadAll(io.LimitReader(part.Body, 64<<20))
			b.Write(data)
			b.WriteByte('\n')
			return nil
		})
	} else {
		_, body := splitHeader(sm.message())
		b.Write(body)
	}
	s := strings.ToLower(b.String())
	sm.bodyTxt = &s
	return s
}

func containsFold(haystack, needle string) bool {
	return strings.Contains(strings.ToLower(haystack), strings.ToLower(needle))
}

func sameDay(t time.Time) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func (sm *searchMsg) sentDate() (time.Time, bool) {
	v, ok := firstField(sm.fields(), "Date")
	if !ok {
		return time.Time{}, false
	}
	t, err := mail.ParseDate(v)
	if err != nil {
		return time.Time{}, false
	}
	return sameDay(t), true
}

func (s *session) match(k *searchKey, sm *searchMsg) bool {
	switch k.op {
	case "AND":
		for _, c := range k.kids {
			if !s.match(c, sm) {
				return false
			}
		}
		return true
	case "OR":
		return s.match(k.kids[0], sm) || s.match(k.kids[1], sm)
	case "NOT":
		return !s.match(k.kids[0], sm)
	case "ALL":
		return true
	case "SEQ":
		return s.inSet(k, sm.ref)
	case "FLAG":
		return sm.m.HasFlag(k.flag)
	case "NOFLAG":
		return !sm.m.HasFlag(k.flag)
	case "RECENT":
		return sm.sel.recent(sm.ref.uid)
	case "NEW":
		return sm.sel.recent(sm.ref.uid) && !sm.m.HasFlag(`\Seen`)
	case "OLD":
		return !sm.sel.recent(sm.ref.uid)
	case "LARGER":
		return sm.m.Size > k.n
	case "SMALLER":
		return sm.m.Size < k.n
	case "BEFORE", "ON", "SINCE":
		d := sameDay(time.Unix(0, sm.m.InternalDate).UTC())
		return cmpDate(k.op, d, k.date)
	case "SENTBEFORE", "SENTON", "SENTSINCE":
		d, ok := sm.sentDate()
		return ok && cmpDate(k.op[4:], d, k.date)
	case "HEADER":
		for _, f := range sm.fields() {
			if strings.EqualFold(f.name, k.field) {
				if k.value == "" {
					return true
				}
				v := f.value()
				if strings.Contains(v, "=?") {
					v = decodeHeader(v)
				}
				if containsFold(v, k.value) {
					return true
				}
			}
		}
		return false
	case "BODY":
		return strings.Contains(sm.bodyText(), strings.ToLower(k.value))
	case "TEXT":
		for _, f := range sm.fields() {
			if containsFold(decodeHeader(f.value()), k.value) || containsFold(f.name, k.value) {
				return true
			}
		}
		return strings.Contains(sm.bodyText(), strings.ToLower(k.value))
	case "MODSEQ":
		return sm.m.ModSeq >= k.modseq
	}
	return false
}

func cmpDate(op string, d, want time.Time) bool {
	switch op {
	case "BEFORE":
		return d.Before(want)
	case "ON":
		return d.Equal(want)
	default: // SINCE
		return !d.Before(want)
	}
}

// inSet tests a message against a sequence or UID set key; resolved sets
// are cached on the key.
func (s *session) inSet(k *searchKey, ref msgRef) bool {
	if k.set.dollar {
		for _, u := range s.searchRes {
			if u == ref.uid {
				return true
			}
		}
		return false
	}
	n := ref.seq
	star := s.sel.uids.len()
	if k.byUID {
		n, star = ref.uid, s.sel.uids.maxUID()
	}
	for _, r := range k.set.ranges {
		lo, hi := r.lo, r.hi
		if lo == 0 {
			lo = star
		}
		if hi == 0 {
			hi = star
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		if n >= lo && n <= hi {
			return true
		}
	}
	return false
}

type searchReturn struct {
	min, max, all, count, save, esearch bool
}

func cmdSearch(s *session, tag string, p *parser, uid bool) (string, string, error) {
	var ret searchReturn
	if p.takeWord("RETURN") {
		ret.esearch = true
		p.sp()
		p.list(func() {
			switch strings.ToUpper(p.atom()) {
			case "MIN":
				ret.min = true
			case "MAX":
				ret.max = true
			case "ALL":
				ret.all = true
			case "COUNT":
				ret.count = true
			case "SAVE":
				ret.save = true
			default:
				p.fail("unknown SEARCH return option")
			}
		})
		p.sp()
		if !ret.min && !ret.max && !ret.count && !ret.save {
			ret.all = true
		}
	}
	if s.rev2 && !ret.esearch {
		// IMAP4rev2 answers every SEARCH with ESEARCH.
		ret.esearch, ret.all = true, true
	}
	utf8OK := s.utf8
	if p.takeWord("CHARSET") {
		p.sp()
		cs := strings.ToUpper(p.astring())
		p.sp()
		switch cs {
		case "UTF-8", "UTF8":
			utf8OK = true
		case "US-ASCII":
		default:
			if p.err == nil {
				return "", "", no("BADCHARSET (UTF-8 US-ASCII)", "unsupported charset")
			}
		}
	}
	prog := parseSearchKeys(p, utf8OK)
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if prog.usesModSeq() {
		s.enableCondstore()
	}
	sel := s.sel
	// Check sequence sets against the mailbox before running.
	if err := s.checkSets(prog); err != nil {
		return "", "", err
	}
	var matched []msgRef
	var highest uint64
	all := make([]msgRef, 0, min(sel.uids.len(), 1<<16))
	sel.uids.eachSeq(1, sel.uids.len(), func(seq, u uint32) bool {
		all = append(all, msgRef{seq, u})
		return true
	})
	for len(all) > 0 {
		batch := all[:min(len(all), 2000)]
		uids := refUIDs(batch)
		err := s.view(func(tx *storage.Tx) error {
			i := 0
			return tx.MessagesByUID(sel.id, uids, func(m storage.Message) error {
				for batch[i].uid != m.UID {
					i++
				}
				ref := batch[i]
				sm := &searchMsg{tx: tx, ref: ref, m: &m, sel: sel, buf: &s.bodyBuf, s: s}
				ok := s.match(prog, sm)
				if sm.err != nil {
					return sm.err
				}
				if ok {
					matched = append(matched, ref)
					highest = max(highest, m.ModSeq)
				}
				return nil
			})
		})
		if err != nil {
			return "", "", err
		}
		all = all[len(batch):]
	}
	nums := make([]uint32, len(matched))
	for i, r := range matched {
		if uid {
			nums[i] = r.uid
		} else {
			nums[i] = r.seq
		}
	}
	if ret.save {
		s.searchRes = refUIDs(matched)
	}
	if !ret.esearch {
		s.out.raw("* SEARCH")
		for _, n := range nums {
			s.out.sp().num(n)
		}
		if prog.usesModSeq() && len(nums) > 0 {
			s.out.raw(" (MODSEQ ").num64(highest).byte(')')
		}
		s.out.crlf()
		return "", "", nil
	}
	if ret.save && !ret.min && !ret.max && !ret.count && !ret.all {
		return "", "", nil
	}
	s.out.raw("* ESEARCH (TAG ").str(tagText(tag)).byte(')')
	if uid {
		s.out.raw(" UID")
	}
	if len(nums) > 0 {
		if ret.min {
			s.out.raw(" MIN ").num(nums[0])
		}
		if ret.max {
			s.out.raw(" MAX ").num(nums[len(nums)-1])
		}
		if ret.all {
			s.out.raw(" ALL ").raw(uidSetText(nums))
		}
	}
	if ret.count {
		s.out.raw(" COUNT ").num(uint32(len(nums)))
	}
	if prog.usesModSeq() && len(nums) > 0 {
		s.out.raw(" MODSEQ ").num64(highest)
	}
	s.out.crlf()
	return "", "", nil
}

func tagText(t string) string { return t }

// checkSets refuses sequence numbers beyond the mailbox in a SEARCH.
func (s *session) checkSets(k *searchKey) error {
	if k.op == "SEQ" && !k.byUID && !k.set.dollar {
		for _, r := range k.set.ranges {
			if r.lo > s.sel.uids.len() || r.hi > s.sel.uids.len() {
				return errSeqRange
			}
		}
	}
	for _, c := range k.kids {
		if err := s.checkSets(c); err != nil {
			return err
		}
	}
	return nil
}
