package imap

import (
	"encoding/base64"
	"errors"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Mailbox names travel in modified UTF-7 (RFC 3501 section 5.1.3) unless the
// client enabled UTF-8 (IMAP4rev2, UTF8=ACCEPT); the store keeps UTF-8.

var b64 = base64.NewEncoding("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,").WithPadding(base64.NoPadding)

var errUTF7 = errors.New("invalid modified UTF-7")

// decodeUTF7 turns a modified UTF-7 mailbox name into UTF-8. It refuses
// unterminated shifts, base64 that encodes printable ASCII, bad UTF-16 and
// padding bits that are not zero. 8-bit text passes through if it is valid
// UTF-8: clients that see IMAP4rev2 advertised (go-imap's, for one) send
// names as UTF-8 with "&" written "&-", which this reads the same way.
func decodeUTF7(s string) (string, error) {
	if !utf8.ValidString(s) {
		return "", errUTF7
	}
	if !strings.ContainsRune(s, '&') {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '&' {
			b.WriteByte(c)
			continue
		}
		end := strings.IndexByte(s[i+1:], '-')
		if end < 0 {
			return "", errUTF7
		}
		enc := s[i+1 : i+1+end]
		i += end + 1
		if enc == "" {
			b.WriteByte('&')
			continue
		}
		raw, err := b64.DecodeString(enc)
		if err != nil || len(raw)%2 != 0 {
			return "", errUTF7
		}
		// Zero padding bits: re-encoding must give the same text.
		if b64.EncodeToString(raw) != enc {
			return "", errUTF7
		}
		units := make([]uint16, len(raw)/2)
		for j := range units {
			units[j] = uint16(raw[2*j])<<8 | uint16(raw[2*j+1])
		}
		for j := 0; j < len(units); j++ {
			u := units[j]
			var r rune
			switch {
			case utf16.IsSurrogate(rune(u)):
				if j+1 >= len(units) {
					return "", errUTF7
				}
				r = utf16.DecodeRune(rune(u), rune(units[j+1]))
				if r == utf8.RuneError {
					return "", errUTF7
				}
				j++
			default:
				r = rune(u)
				if r >= 0x20 && r <= 0x7e {
					return "", errUTF7 // must have been written directly
				}
			}
			b.WriteRune(r)
		}
		// A shift must not be followed directly by another one.
		if i+1 < len(s) && s[i+1] == '&' && i+2 < len(s) && s[i+2] != '-' {
			return "", errUTF7
		}
	}
	return b.String(), nil
}

// encodeUTF7 turns a UTF-8 mailbox name into modified UTF-7.
func encodeUTF7(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || s[i] == '&' || s[i] < 0x20 || s[i] == 0x7f {
			ascii = false
			break
		}
	}
	if ascii {
		return s
	}
	var b strings.Builder
	var units []uint16
	flush := func() {
		if len(units) == 0 {
			return
		}
		raw := make([]byte, 2*len(units))
		for j, u := range units {
			raw[2*j], raw[2*j+1] = byte(u>>8), byte(u)
		}
		b.WriteByte('&')
		b.WriteString(b64.EncodeToString(raw))
		b.WriteByte('-')
		units = units[:0]
	}
	for _, r := range s {
		switch {
		case r == '&':
			flush()
			b.WriteString("&-")
		case r >= 0x20 && r <= 0x7e:
			flush()
			b.WriteRune(r)
		default:
			if r1, r2 := utf16.EncodeRune(r); r1 != utf8.RuneError {
				units = append(units, uint16(r1), uint16(r2))
			} else {
				units = append(units, uint16(r))
			}
		}
	}
	flush()
	return b.String()
}
