package imap

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// parser reads the arguments of one command from its raw bytes: the command
// line with every literal inline as it came on the wire ("{5}\r\nhello"),
// without the final CRLF. The reader has already read each literal whole,
// so a literal here is complete or the command is malformed.
//
// Errors are sticky: the first one is kept in err and every later call
// returns a zero value, so a handler parses all its arguments and checks
// err once.
type parser struct {
	b   []byte
	pos int
	err error
	// utf8 is set when mailbox names travel as UTF-8 (IMAP4rev2 or
	// UTF8=ACCEPT enabled) rather than modified UTF-7.
	utf8 bool
}

// syntaxError is a command the grammar does not allow: a BAD response.
type syntaxError struct{ msg string }

func (e *syntaxError) Error() string { return e.msg }

func (p *parser) fail(format string, args ...any) {
	if p.err == nil {
		p.err = &syntaxError{fmt.Sprintf(format, args...) + fmt.Sprintf(" (at octet %d)", p.pos)}
	}
}

func (p *parser) failErr(err error) {
	if p.err == nil {
		p.err = err
	}
}

func (p *parser) ok() bool    { return p.err == nil }
func (p *parser) atEnd() bool { return p.pos >= len(p.b) }

func (p *parser) peek() byte {
	if p.err != nil || p.pos >= len(p.b) {
		return 0
	}
	return p.b[p.pos]
}

// take consumes c if it is next and reports whether it did.
func (p *parser) take(c byte) bool {
	if p.err == nil && p.pos < len(p.b) && p.b[p.pos] == c {
		p.pos++
		return true
	}
	return false
}

// takeFold consumes s if it is next, ASCII case-insensitively, and not
// followed by another atom character.
func (p *parser) takeWord(s string) bool {
	if p.err != nil || len(p.b)-p.pos < len(s) || !strings.EqualFold(string(p.b[p.pos:p.pos+len(s)]), s) {
		return false
	}
	if e := p.pos + len(s); e < len(p.b) && isAtomChar(p.b[e]) {
		return false
	}
	p.pos += len(s)
	return true
}

func (p *parser) expect(c byte) {
	if !p.take(c) {
		if p.atEnd() {
			p.fail("expected %q, found end of command", c)
		} else {
			p.fail("expected %q", c)
		}
	}
}

func (p *parser) sp() { p.expect(' ') }

// end requires that nothing is left.
func (p *parser) end() {
	if p.err == nil && p.pos < len(p.b) {
		p.fail("unexpected text at end of command")
	}
}

func isCTL(c byte) bool { return c < 0x20 || c == 0x7f }

// isAtomChar: ATOM-CHAR of RFC 3501 (any CHAR except atom-specials).
func isAtomChar(c byte) bool {
	if c >= 0x80 || isCTL(c) {
		return false
	}
	switch c {
	case '(', ')', '{', ' ', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

func isAstringChar(c byte) bool { return isAtomChar(c) || c == ']' }

func isListChar(c byte) bool { return isAstringChar(c) || c == '%' || c == '*' }

// word reads a run of bytes accepted by ok; empty is an error.
func (p *parser) word(ok func(byte) bool, what string) string {
	if p.err != nil {
		return ""
	}
	start := p.pos
	for p.pos < len(p.b) && ok(p.b[p.pos]) {
		p.pos++
	}
	if p.pos == start {
		p.fail("expected %s", what)
		return ""
	}
	return string(p.b[start:p.pos])
}

func (p *parser) atom() string { return p.word(isAtomChar, "atom") }

// tag reads a command tag: ASTRING-CHARs except "+".
func (p *parser) tag() string {
	return p.word(func(c byte) bool { return isAstringChar(c) && c != '+' }, "tag")
}

// astring: atom-like text, a quoted string or a literal.
func (p *parser) astring() string {
	switch p.peek() {
	case '"', '{', '~':
		return p.string()
	}
	return p.word(isAstringChar, "string")
}

// string: a quoted string or a literal.
func (p *parser) string() string {
	b := p.stringBytes()
	return string(b)
}

func (p *parser) stringBytes() []byte {
	switch p.peek() {
	case '"':
		return p.quoted()
	case '{':
		return p.literal()
	}
	p.fail("expected string")
	return nil
}

func (p *parser) quoted() []byte {
	p.expect('"')
	var out []byte
	for p.err == nil {
		if p.pos >= len(p.b) {
			p.fail("unterminated quoted string")
			return nil
		}
		c := p.b[p.pos]
		p.pos++
		switch {
		case c == '"':
			return out
		case c == '\\':
			if p.pos >= len(p.b) || (p.b[p.pos] != '"' && p.b[p.pos] != '\\') {
				p.fail("bad escape in quoted string")
				return nil
			}
			out = append(out, p.b[p.pos])
			p.pos++
		case c == '\r' || c == '\n' || c == 0:
			p.fail("CR, LF or NUL in quoted string")
			return nil
		default:
			out = append(out, c)
		}
	}
	return nil
}

// literal reads {n}CRLF followed by n octets (also {n+}, LITERAL+).
func (p *parser) literal() []byte { return p.literalAny(false) }

// literal8 reads the octets of a literal8 (~{n}, RFC 3516) whose "~" has
// been read: NUL is allowed.
func (p *parser) literal8() []byte { return p.literalAny(true) }

func (p *parser) literalAny(allowNUL bool) []byte {
	p.expect('{')
	n := p.number64()
	p.take('+')
	p.expect('}')
	if !p.take('\r') {
		p.expect('\n')
	} else {
		p.expect('\n')
	}
	if p.err != nil {
		return nil
	}
	if uint64(len(p.b)-p.pos) < n {
		p.fail("literal longer than the command")
		return nil
	}
	out := p.b[p.pos : p.pos+int(n)]
	p.pos += int(n)
	if !allowNUL && bytesIndexByte(out, 0) >= 0 {
		p.fail("NUL in literal")
		return nil
	}
	return out
}

func bytesIndexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// nstring: a string or NIL (returned as nil, ok).
func (p *parser) nstring() (string, bool) {
	if p.takeWord("NIL") {
		return "", false
	}
	return p.string(), true
}

func (p *parser) number64() uint64 {
	if p.err != nil {
		return 0
	}
	start := p.pos
	for p.pos < len(p.b) && p.b[p.pos] >= '0' && p.b[p.pos] <= '9' {
		p.pos++
	}
	if p.pos == start {
		p.fail("expected number")
		return 0
	}
	n, err := strconv.ParseUint(string(p.b[start:p.pos]), 10, 63)
	if err != nil {
		p.fail("number out of range")
		return 0
	}
	return n
}

func (p *parser) number() uint32 {
	n := p.number64()
	if n > 0xffffffff {
		p.fail("number out of range")
		return 0
	}
	return uint32(n)
}

func (p *parser) nzNumber() uint32 {
	n := p.number()
	if p.err == nil && n == 0 {
		p.fail("expected a number above zero")
	}
	return n
}

// list reads "(" [item *(SP item)] ")", calling item for each element.
func (p *parser) list(item func()) {
	p.expect('(')
	if p.take(')') {
		return
	}
	for p.err == nil {
		before := p.pos
		item()
		if p.take(')') {
			return
		}
		p.sp()
		if p.pos == before {
			p.fail("malformed list")
		}
	}
}

// flag reads a flag: "\" atom or a keyword atom.
func (p *parser) flag() string {
	if p.take('\\') {
		if p.take('*') {
			return `\*`
		}
		return `\` + p.atom()
	}
	return p.atom()
}

func (p *parser) flagList() []string {
	var flags []string
	p.list(func() { flags = append(flags, p.flag()) })
	if len(flags) > 1000 {
		p.fail("too many flags")
	}
	return flags
}

// mailbox reads a mailbox name and returns it in UTF-8 ("INBOX" in any
// case is INBOX). A name that is not valid in the session's encoding is a
// badName error.
func (p *parser) mailbox() string {
	raw := p.astring()
	if p.err != nil {
		return ""
	}
	name, err := p.decodeName(raw)
	if err != nil {
		p.failErr(err)
		return ""
	}
	return name
}

// badNameError is a mailbox name that cannot be decoded: NO [CANNOT].
type badNameError struct{ name string }

func (e *badNameError) Error() string {
	return fmt.Sprintf("mailbox name %q is not valid modified UTF-7 or UTF-8", e.name)
}

func (p *parser) decodeName(raw string) (string, error) {
	if strings.EqualFold(raw, "INBOX") {
		return "INBOX", nil
	}
	if p.utf8 {
		if !utf8.ValidString(raw) {
			return "", &badNameError{raw}
		}
		return raw, nil
	}
	name, err := decodeUTF7(raw)
	if err != nil {
		return "", &badNameError{raw}
	}
	return name, nil
}

// listMailbox reads a LIST pattern (with % and *), decoded like a name.
func (p *parser) listMailbox() string {
	var raw string
	switch p.peek() {
	case '"', '{':
		raw = p.string()
	default:
		raw = p.word(isListChar, "mailbox pattern")
	}
	if p.err != nil {
		return ""
	}
	name, err := p.decodeName(raw)
	if err != nil {
		p.failErr(err)
		return ""
	}
	return name
}

// numRange is one element of a sequence set; 0 stands for "*".
type numRange struct{ lo, hi uint32 }

// numSet is a sequence set (RFC 3501 sequence-set) or "$" (RFC 5182).
type numSet struct {
	ranges []numRange
	dollar bool
}

func (p *parser) seqNumber() uint32 {
	if p.take('*') {
		return 0
	}
	return p.nzNumber()
}

func (p *parser) numSet() numSet {
	var s numSet
	if p.take('$') {
		s.dollar = true
		return s
	}
	for p.err == nil {
		lo := p.seqNumber()
		hi := lo
		if p.take(':') {
			hi = p.seqNumber()
		}
		s.ranges = append(s.ranges, numRange{lo, hi})
		if len(s.ranges) > 100000 {
			p.fail("sequence set too long")
		}
		if !p.take(',') {
			break
		}
	}
	return s
}

var months = []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}

// date reads date (RFC 3501): d-Mon-yyyy, optionally quoted.
func (p *parser) date() time.Time {
	q := p.take('"')
	day := p.number()
	p.expect('-')
	mon := p.word(func(c byte) bool { return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' }, "month")
	p.expect('-')
	year := p.number()
	if q {
		p.expect('"')
	}
	if p.err != nil {
		return time.Time{}
	}
	m := monthIndex(mon)
	if m == 0 || day < 1 || day > 31 || year < 1000 || year > 9999 {
		p.fail("bad date")
		return time.Time{}
	}
	return time.Date(int(year), time.Month(m), int(day), 0, 0, 0, 0, time.UTC)
}

func monthIndex(s string) int {
	for i, m := range months {
		if strings.EqualFold(s, m) {
			return i + 1
		}
	}
	return 0
}

// dateTime reads date-time: "dd-Mon-yyyy hh:mm:ss +zzzz" (day may start
// with a space).
func (p *parser) dateTime() time.Time {
	s := p.quoted()
	if p.err != nil {
		return time.Time{}
	}
	str := strings.TrimLeft(string(s), " ")
	t, err := time.Parse("2-Jan-2006 15:04:05 -0700", str)
	if err != nil || len(str) < 25 || len(str) > 26 {
		p.fail("bad date-time %q", s)
		return time.Time{}
	}
	return t
}
