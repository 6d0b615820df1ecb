package smtp

import (
	"net/netip"
	"strings"
	"unicode/utf8"

	"github.com/flotilla-mail/flotilla/storage"
)

// checkAddress checks an envelope address as go-smtp parsed it (quotes
// removed): a non-empty local part of at most 64 octets without control
// characters, and a domain that is a host name or an address literal.
func checkAddress(a string) bool {
	if len(a) > 254 || !utf8.ValidString(a) {
		return false
	}
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at > 64 {
		return false
	}
	for i := 0; i < len(a); i++ {
		if a[i] < 0x20 || a[i] == 0x7f {
			return false
		}
	}
	domain := a[at+1:]
	if strings.HasPrefix(domain, "[") && strings.HasSuffix(domain, "]") {
		lit := strings.TrimPrefix(domain[1:len(domain)-1], "IPv6:")
		_, err := netip.ParseAddr(lit)
		return err == nil
	}
	_, err := storage.NormalizeDomain(domain)
	return err == nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// formatAddress writes an address for a header or a reply: the local part
// as a dot-atom when it is one, else quoted (RFC 5321 section 4.1.2).
func formatAddress(a string) string {
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return a
	}
	local := a[:at]
	if isDotAtom(local) {
		return a
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if local[i] == '"' || local[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	b.WriteString(a[at:])
	return b.String()
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x80 { // UTF8-non-ascii is atext with SMTPUTF8 (RFC 6531)
			continue
		}
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0) {
			return false
		}
	}
	return true
}

// sanitizeHelo makes the client's EHLO argument safe to quote in a header
// comment.
func sanitizeHelo(h string) string {
	if len(h) > 255 {
		h = h[:255]
	}
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(".-_:[]", c) >= 0) {
			b[i] = '?'
		}
	}
	return string(b)
}

// validHelo reports whether the EHLO argument is a domain or an address
// literal, which the Received header can name as such.
func validHelo(h string) bool {
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		_, err := netip.ParseAddr(strings.TrimPrefix(h[1:len(h)-1], "IPv6:"))
		return err == nil
	}
	if !isASCII(h) {
		return false
	}
	_, err := storage.NormalizeDomain(h)
	return err == nil && !strings.HasSuffix(h, ".")
}
