package imap

import (
	"strconv"
	"unicode/utf8"
)

// resp builds response text. Handlers append to it; the session writes it
// out between read transactions, never while holding a lock.
type resp struct {
	b []byte
	// utf8 allows 8-bit UTF-8 in quoted strings and mailbox names.
	utf8 bool
}

func (r *resp) raw(s string) *resp   { r.b = append(r.b, s...); return r }
func (r *resp) rawb(b []byte) *resp  { r.b = append(r.b, b...); return r }
func (r *resp) byte(c byte) *resp    { r.b = append(r.b, c); return r }
func (r *resp) sp() *resp            { return r.byte(' ') }
func (r *resp) crlf() *resp          { return r.raw("\r\n") }
func (r *resp) num(n uint32) *resp   { r.b = strconv.AppendUint(r.b, uint64(n), 10); return r }
func (r *resp) num64(n uint64) *resp { r.b = strconv.AppendUint(r.b, n, 10); return r }
func (r *resp) int64(n int64) *resp  { r.b = strconv.AppendInt(r.b, n, 10); return r }
func (r *resp) reset()               { r.b = r.b[:0] }
func (r *resp) len() int             { return len(r.b) }
func (r *resp) literal(b []byte) *resp {
	r.byte('{').int64(int64(len(b))).raw("}\r\n")
	return r.rawb(b)
}

// quotable reports whether s can be sent as a quoted string.
func quotable(s string, allow8bit bool) bool {
	if len(s) > 4096 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\r' || c == '\n' || c == 0 {
			return false
		}
		if c >= 0x80 && !allow8bit {
			return false
		}
	}
	return !allow8bit || utf8.ValidString(s)
}

// str writes a string, quoted where possible and as a literal otherwise.
func (r *resp) str(s string) *resp {
	if !quotable(s, r.utf8) {
		return r.literal([]byte(s))
	}
	r.byte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			r.byte('\\')
		}
		r.byte(s[i])
	}
	return r.byte('"')
}

// nstr writes NIL for "" and a string otherwise.
func (r *resp) nstr(s string) *resp {
	if s == "" {
		return r.raw("NIL")
	}
	return r.str(s)
}

// astr writes an atom when s is one, a string otherwise.
func (r *resp) astr(s string) *resp {
	if s != "" && !equalsNIL(s) {
		atom := true
		for i := 0; i < len(s); i++ {
			if !isAstringChar(s[i]) {
				atom = false
				break
			}
		}
		if atom {
			return r.raw(s)
		}
	}
	return r.str(s)
}

func equalsNIL(s string) bool {
	return len(s) == 3 && (s[0]|0x20) == 'n' && (s[1]|0x20) == 'i' && (s[2]|0x20) == 'l'
}

// mailbox writes a mailbox name in the session's encoding.
func (r *resp) mailbox(name string) *resp {
	if !r.utf8 {
		name = encodeUTF7(name)
	}
	return r.astr(name)
}

// flags writes a parenthesised flag list.
func (r *resp) flags(flags []string, recent bool) *resp {
	r.byte('(')
	for i, f := range flags {
		if i > 0 {
			r.sp()
		}
		r.raw(f)
	}
	if recent {
		if len(flags) > 0 {
			r.sp()
		}
		r.raw(`\Recent`)
	}
	return r.byte(')')
}

// uidSetText renders UIDs (in the given order) as a sequence set, joining
// ascending runs, for COPYUID and friends.
func uidSetText(uids []uint32) string {
	var b []byte
	for i := 0; i < len(uids); {
		j := i
		for j+1 < len(uids) && uids[j+1] == uids[j]+1 {
			j++
		}
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(uids[i]), 10)
		if j > i {
			b = append(b, ':')
			b = strconv.AppendUint(b, uint64(uids[j]), 10)
		}
		i = j + 1
	}
	return string(b)
}

func uitoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
