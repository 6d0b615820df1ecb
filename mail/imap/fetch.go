package imap

import (
	"bufio"
	"bytes"
	"errors"
	"sort"
	"strconv"
	"strings"
	"time"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
func sortStrings(s []string)             { sort.Strings(s) }

// section is one BODY[...], BINARY[...] or BINARY.SIZE[...] item.
type section struct {
	kind    byte // 'b' BODY, 'B' BINARY, 's' BINARY.SIZE
	peek    bool
	part    []int
	spec    string // "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
	fields  []string
	partial bool
	offset  int64
	size    int64
	label   string // how the response names it, without <offset>
}

type fetchSpec struct {
	uid, flags, internalDate, size, envelope, bodyStructure, body, modseq bool
	sections                                                              []section
	changedSince                                                          uint64
	headerFields                                                          bool // a top-level HEADER.FIELDS section
	hasChangedSince                                                       bool
}

func (f *fetchSpec) needMessage() bool {
	return f.envelope || f.bodyStructure || f.body || len(f.sections) > 0
}

// headerOnly: everything asked for comes from the header section (ENVELOPE,
// top-level BODY[HEADER], BODY[HEADER.FIELDS ...]), which the header cache
// can serve without reading the body.
func (f *fetchSpec) headerOnly() bool {
	if f.bodyStructure || f.body {
		return false
	}
	for _, sec := range f.sections {
		if sec.kind != 'b' || len(sec.part) > 0 || !strings.HasPrefix(sec.spec, "HEADER") {
			return false
		}
	}
	return true
}

func (f *fetchSpec) setsSeen() bool {
	for _, s := range f.sections {
		if !s.peek && s.kind != 's' {
			return true
		}
	}
	return false
}

func parseFetchSpec(p *parser) fetchSpec {
	var f fetchSpec
	if p.peek() == '(' {
		p.list(func() { parseFetchAtt(p, &f, false) })
	} else {
		parseFetchAtt(p, &f, true)
	}
	if p.take(' ') {
		p.list(func() {
			switch {
			case p.takeWord("CHANGEDSINCE"):
				p.sp()
				f.changedSince = p.number64()
				f.hasChangedSince = true
				f.modseq = true
			default:
				p.fail("unknown FETCH modifier")
			}
		})
	}
	for _, sec := range f.sections {
		if len(sec.part) == 0 && strings.HasPrefix(sec.spec, "HEADER.FIELDS") {
			f.headerFields = true
		}
	}
	if len(f.sections) > 100 {
		p.fail("too many FETCH items")
	}
	return f
}

func parseFetchAtt(p *parser, f *fetchSpec, macros bool) {
	name := strings.ToUpper(p.word(func(c byte) bool { return isAtomChar(c) && c != '[' && c != '<' }, "FETCH item"))
	switch name {
	case "ALL", "FAST", "FULL":
		if !macros {
			p.fail("FETCH macros cannot be in a list")
			return
		}
		f.flags, f.internalDate, f.size = true, true, true
		if name != "FAST" {
			f.envelope = true
		}
		if name == "FULL" {
			f.body = true
		}
	case "UID":
		f.uid = true
	case "FLAGS":
		f.flags = true
	case "INTERNALDATE":
		f.internalDate = true
	case "RFC822.SIZE":
		f.size = true
	case "ENVELOPE":
		f.envelope = true
	case "BODYSTRUCTURE":
		f.bodyStructure = true
	case "MODSEQ":
		f.modseq = true
	case "RFC822":
		f.sections = append(f.sections, section{kind: 'b', label: "RFC822"})
	case "RFC822.HEADER":
		f.sections = append(f.sections, section{kind: 'b', peek: true, spec: "HEADER", label: "RFC822.HEADER"})
	case "RFC822.TEXT":
		f.sections = append(f.sections, section{kind: 'b', spec: "TEXT", label: "RFC822.TEXT"})
	case "BODY":
		if p.peek() != '[' {
			f.body = true
			return
		}
		f.sections = append(f.sections, parseSection(p, 'b', false))
	case "BODY.PEEK":
		f.sections = append(f.sections, parseSection(p, 'b', true))
	case "BINARY":
		f.sections = append(f.sections, parseSection(p, 'B', false))
	case "BINARY.PEEK":
		f.sections = append(f.sections, parseSection(p, 'B', true))
	case "BINARY.SIZE":
		f.sections = append(f.sections, parseSection(p, 's', true))
	default:
		if p.err == nil {
			p.fail("unknown FETCH item %q", cleanText(name))
		}
	}
}

// parseSection reads "[section]" and an optional "<offset.size>".
func parseSection(p *parser, kind byte, peek bool) section {
	s := section{kind: kind, peek: peek}
	p.expect('[')
	start := p.pos
	for p.ok() && p.peek() >= '0' && p.peek() <= '9' {
		s.part = append(s.part, int(p.nzNumber()))
		if len(s.part) > 50 {
			p.fail("section part too deep")
		}
		if !p.take('.') {
			break
		}
	}
	if p.ok() && p.peek() != ']' {
		if kind != 'b' {
			p.fail("BINARY takes a part number only")
			return s
		}
		w := strings.ToUpper(p.word(func(c byte) bool { return isAtomChar(c) && c != '[' }, "section text"))
		switch w {
		case "HEADER", "TEXT":
			s.spec = w
		case "MIME":
			if len(s.part) == 0 {
				p.fail("MIME needs a part number")
			}
			s.spec = w
		case "HEADER.FIELDS", "HEADER.FIELDS.NOT":
			s.spec = w
			p.sp()
			p.list(func() { s.fields = append(s.fields, p.astring()) })
			if len(s.fields) == 0 && p.err == nil {
				p.fail("empty header list")
			}
		default:
			p.fail("unknown section %q", cleanText(w))
		}
	}
	end := p.pos
	p.expect(']')
	if p.err != nil {
		return s
	}
	name := map[byte]string{'b': "BODY", 'B': "BINARY", 's': "BINARY.SIZE"}[kind]
	s.label = name + "[" + canonicalSection(p.b[start:end], s) + "]"
	if p.take('<') {
		if kind == 's' {
			p.fail("BINARY.SIZE takes no partial")
		}
		s.partial = true
		s.offset = int64(p.number())
		p.expect('.')
		s.size = int64(p.nzNumber())
		p.expect('>')
	}
	return s
}

// canonicalSection spells a section for the response: upper-case keywords,
// header field names as the client gave them.
func canonicalSection(raw []byte, s section) string {
	var b strings.Builder
	for i, n := range s.part {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(strconv.Itoa(n))
	}
	if s.spec != "" {
		if len(s.part) > 0 {
			b.WriteByte('.')
		}
		b.WriteString(s.spec)
	}
	if len(s.fields) > 0 {
		b.WriteString(" (")
		for i, f := range s.fields {
			if i > 0 {
				b.WriteByte(' ')
			}
			r := resp{}
			r.astr(strings.ToUpper(f))
			b.Write(r.b)
		}
		b.WriteByte(')')
	}
	return b.String()
}

// fetchBatch bounds the messages answered per read transaction, so that
// the transaction is never open while the session writes to the client.
const (
	fetchBatch      = 200
	fetchBatchBytes = 4 << 20
)

func cmdFetch(s *session, tag string, p *parser, uid bool) (string, string, error) {
	set := p.numSet()
	p.sp()
	f := parseFetchSpec(p)
	p.end()
	if p.err != nil {
		return "", "", p.err
	}
	if uid {
		f.uid = true
	}
	if f.modseq {
		s.enableCondstore()
	}
	if s.condstore {
		f.uid = true
	}
	sel := s.sel
	refs, err := s.refs(set, uid)
	if err != nil {
		return "", "", err
	}
	if f.hasChangedSince && len(refs) > 0 {
		if refs, err = s.filterChanged(refs, f.changedSince); err != nil {
			return "", "", err
		}
	}
	// Fetching a body section without PEEK sets \Seen, first.
	seenNow := map[uint32]bool{}
	if f.setsSeen() && !sel.readOnly && len(refs) > 0 {
		var unseen []uint32
		if err := s.view(func(tx *storage.Tx) error {
			for _, r := range refs {
				m, err := tx.Message(sel.id, r.uid)
				if err == nil && !m.HasFlag(`\Seen`) {
					unseen = append(unseen, r.uid)
				}
			}
			return nil
		}); err != nil {
			return "", "", err
		}
		if len(unseen) > 0 {
			resp, err := s.propose(&command.SetFlags{UserID: s.user.ID, MailboxID: sel.id, UIDs: unseen, Op: storage.FlagsAdd, Flags: []string{`\Seen`}})
			if err != nil {
				return "", "", err
			}
			for _, id := range resp.IDs {
				seenNow[uint32(id)] = true
			}
		}
	}
	for len(refs) > 0 {
		batch := refs[:min(len(refs), fetchBatch)]
		n := len(batch)
		uids := refUIDs(batch)
		err := s.view(func(tx *storage.Tx) error {
			start := len(s.out.b)
			i := 0
			return tx.MessagesByUID(sel.id, uids, func(m storage.Message) error {
				for batch[i].uid != m.UID {
					i++
				}
				r := batch[i]
				var msg []byte
				var parts *msgParts
				switch {
				case f.needMessage() && f.headerOnly():
					hdr, fields, err := s.messageHeader(tx, &m)
					if err != nil {
						return err
					}
					parts = &msgParts{hdr: hdr, fields: fields}
				case f.needMessage():
					var err error
					if s.msgBuf, err = tx.MessageBytes(m, s.msgBuf); err != nil {
						return err
					}
					msg = s.msgBuf
				}
				if seenNow[r.uid] {
					sel.own(r.uid, m.ModSeq)
				}
				s.writeFetch(r, &m, msg, parts, &f, seenNow[r.uid])
				if len(s.out.b)-start >= fetchBatchBytes {
					n = i + 1
					return errBatchFull
				}
				return nil
			})
		})
		if err != nil && !errors.Is(err, errBatchFull) {
			return "", "", err
		}
		if cap(s.msgBuf) > 1<<20 {
			s.msgBuf = nil
		}
		refs = refs[n:]
		if err := s.writeOut(); err != nil {
			return "", "", err
		}
	}
	return "", "", nil
}

// filterChanged keeps the messages whose MODSEQ is above modseq, from the
// MODSEQ index (so a CHANGEDSINCE on a big mailbox reads only changes).
func (s *session) filterChanged(refs []msgRef, modseq uint64) ([]msgRef, error) {
	changed := map[uint32]bool{}
	err := s.view(func(tx *storage.Tx) error {
		return tx.ChangedSince(s.sel.id, modseq, func(uid uint32, _ uint64) bool {
			changed[uid] = true
			return true
		})
	})
	out := refs[:0]
	for _, r := range refs {
		if changed[r.uid] {
			out = append(out, r)
		}
	}
	return out, err
}

// errBatchFull ends a batch that has produced enough output.
var errBatchFull = errors.New("batch full")

const internalDateLayout = "02-Jan-2006 15:04:05 -0700"

// msgParts is a message's header when only the header was read.
type msgParts struct {
	hdr    []byte
	fields []headerField
}

func (s *session) writeFetch(ref msgRef, m *storage.Message, msg []byte, parts *msgParts, f *fetchSpec, flagsChanged bool) {
	r := &s.out
	r.raw("* ").num(ref.seq).raw(" FETCH (")
	first := true
	item := func(name string) *resp {
		if !first {
			r.sp()
		}
		first = false
		return r.raw(name)
	}
	if f.uid {
		item("UID ").num(m.UID)
	}
	if f.flags || flagsChanged {
		item("FLAGS ").flags(m.Flags, !s.rev2 && s.sel.recent(m.UID))
	}
	if f.modseq || (s.condstore && flagsChanged) {
		item("MODSEQ (").num64(m.ModSeq).byte(')')
	}
	if f.internalDate {
		item("INTERNALDATE \"").raw(time.Unix(0, m.InternalDate).UTC().Format(internalDateLayout)).byte('"')
	}
	if f.size {
		item("RFC822.SIZE ").int64(m.Size)
	}
	var hdr, body []byte
	var fields []headerField
	switch {
	case parts != nil:
		hdr, fields = parts.hdr, parts.fields
	case msg != nil:
		hdr, body = splitHeader(msg)
		if f.envelope || f.headerFields {
			fields = headerFields(hdr)
		}
	}
	if f.envelope {
		item("ENVELOPE ")
		writeEnvelopeFields(r, fields)
	}
	if f.bodyStructure {
		item("BODYSTRUCTURE ")
		writeBodyStructure(r, msg, true)
	}
	if f.body {
		item("BODY ")
		writeBodyStructure(r, msg, false)
	}
	for i := range f.sections {
		sec := &f.sections[i]
		if sec.kind == 's' {
			item(sec.label).sp().int64(int64(len(binarySection(msg, sec))))
			continue
		}
		var data []byte
		if sec.kind == 'B' {
			data = binarySection(msg, sec)
		} else {
			data = bodySection(msg, hdr, body, fields, sec)
		}
		item(sec.label)
		if sec.partial {
			r.byte('<').int64(sec.offset).byte('>')
			data = partial(data, sec.offset, sec.size)
		}
		r.sp()
		if sec.kind == 'B' && bytes.IndexByte(data, 0) >= 0 {
			r.byte('~')
		}
		r.literal(data)
	}
	r.raw(")\r\n")
}

func partial(b []byte, offset, size int64) []byte {
	if offset >= int64(len(b)) {
		return nil
	}
	end := min(offset+size, int64(len(b)))
	return b[offset:end]
}

// bodySection extracts BODY[section] from a message.
func bodySection(msg, hdr, body []byte, fields []headerField, sec *section) []byte {
	if len(sec.part) == 0 {
		switch sec.spec {
		case "":
			return msg
		case "HEADER":
			return hdr
		case "TEXT":
			return body
		case "HEADER.FIELDS":
			return filterFields(fields, hdr, sec.fields, false)
		case "HEADER.FIELDS.NOT":
			return filterFields(fields, hdr, sec.fields, true)
		}
	}
	item := &goimap.FetchItemBodySection{Part: sec.part}
	switch sec.spec {
	case "HEADER":
		item.Specifier = goimap.PartSpecifierHeader
	case "HEADER.FIELDS":
		item.Specifier, item.HeaderFields = goimap.PartSpecifierHeader, sec.fields
	case "HEADER.FIELDS.NOT":
		item.Specifier, item.HeaderFieldsNot = goimap.PartSpecifierHeader, sec.fields
	case "TEXT":
		item.Specifier = goimap.PartSpecifierText
	case "MIME":
		item.Specifier = goimap.PartSpecifierMIME
	}
	return imapserver.ExtractBodySection(bytes.NewReader(msg), item)
}

// binarySection extracts BINARY[part]: the part with its transfer encoding
// undone (RFC 3516).
func binarySection(msg []byte, sec *section) []byte {
	return imapserver.ExtractBinarySection(bytes.NewReader(msg), &goimap.FetchItemBinarySection{Part: sec.part})
}
