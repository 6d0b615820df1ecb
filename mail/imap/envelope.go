package imap

import (
	"bytes"
	"io"
	"strings"

	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// The header fields of a message, read from its raw bytes. Values are
// unfolded but otherwise as sent: ENVELOPE carries encoded words as they
// are, for the client to decode.

// splitHeader returns the header section (through the blank line, or the
// whole message if there is none) and the body.
func splitHeader(msg []byte) (header, body []byte) {
	if bytes.HasPrefix(msg, []byte("\r\n")) {
		return msg[:2], msg[2:]
	}
	if bytes.HasPrefix(msg, []byte("\n")) {
		return msg[:1], msg[1:]
	}
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		j := bytes.Index(msg, []byte("\n\n"))
		if j >= 0 && j < i {
			return msg[:j+2], msg[j+2:]
		}
		return msg[:i+4], msg[i+4:]
	}
	if j := bytes.Index(msg, []byte("\n\n")); j >= 0 {
		return msg[:j+2], msg[j+2:]
	}
	return msg, nil
}

// headerField is one field: its name, the raw lines it spans and its
// unfolded value.
type headerField struct {
	name string
	raw  []byte
	val  string
}

// headerFields splits a header section into fields.
func headerFields(h []byte) []headerField {
	var out []headerField
	for len(h) > 0 {
		end := 0
		for {
			nl := bytes.IndexByte(h[end:], '\n')
			if nl < 0 {
				end = len(h)
				break
			}
			end += nl + 1
			if end >= len(h) || (h[end] != ' ' && h[end] != '\t') {
				break
			}
		}
		line := h[:end]
		h = h[end:]
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		colon := bytes.IndexByte(line, ':')
		name := ""
		if colon > 0 {
			name = string(bytes.TrimRight(line[:colon], " \t"))
		}
		out = append(out, headerField{name: name, raw: line, val: unfold(line)})
	}
	return out
}

// value returns the unfolded value of a field.
func (f headerField) value() string { return f.val }

func unfold(raw []byte) string {
	colon := bytes.IndexByte(raw, ':')
	if colon < 0 {
		return ""
	}
	v := bytes.TrimSpace(raw[colon+1:])
	if bytes.IndexByte(v, '\n') < 0 && bytes.IndexByte(v, '\r') < 0 {
		return string(v)
	}
	var b strings.Builder
	for _, c := range v {
		if c != '\r' && c != '\n' {
			b.WriteByte(c)
		}
	}
	return strings.TrimSpace(b.String())
}

func firstField(fields []headerField, name string) (string, bool) {
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			return f.value(), true
		}
	}
	return "", false
}

// filterHeader keeps (or, with not, drops) the named fields and ends with
// the blank line, as BODY[HEADER.FIELDS (...)] wants.
func filterHeader(h []byte, names []string, not bool) []byte {
	return filterFields(nil, h, names, not)
}

// filterFields is filterHeader on fields already split (nil: split h).
func filterFields(fields []headerField, h []byte, names []string, not bool) []byte {
	if fields == nil {
		fields = headerFields(h)
	}
	var out []byte
	for _, f := range fields {
		match := false
		for _, n := range names {
			if strings.EqualFold(f.name, n) {
				match = true
				break
			}
		}
		if match != not {
			out = append(out, f.raw...)
			if !bytes.HasSuffix(f.raw, []byte("\n")) {
				out = append(out, "\r\n"...)
			}
		}
	}
	return append(out, "\r\n"...)
}

// writeEnvelope writes the ENVELOPE of a header section.
func writeEnvelope(r *resp, h []byte) { writeEnvelopeFields(r, headerFields(h)) }

func writeEnvelopeFields(r *resp, fields []headerField) {
	get := func(n string) string { v, _ := firstField(fields, n); return v }
	from := parseAddresses(get("From"))
	sender := parseAddresses(get("Sender"))
	if len(sender) == 0 {
		sender = from
	}
	replyTo := parseAddresses(get("Reply-To"))
	if len(replyTo) == 0 {
		replyTo = from
	}
	r.byte('(')
	r.nstr(get("Date")).sp().nstr(get("Subject")).sp()
	writeAddresses(r, from)
	r.sp()
	writeAddresses(r, sender)
	r.sp()
	writeAddresses(r, replyTo)
	r.sp()
	writeAddresses(r, parseAddresses(get("To")))
	r.sp()
	writeAddresses(r, parseAddresses(get("Cc")))
	r.sp()
	writeAddresses(r, parseAddresses(get("Bcc")))
	r.sp().nstr(get("In-Reply-To")).sp().nstr(get("Message-Id")).byte(')')
}

// envAddr is one address of an envelope; a group is a start marker
// (groupStart, mailbox is the group name) and an end marker (groupEnd).
type envAddr struct {
	name, adl, mailbox, host string
	groupStart, groupEnd     bool
}

func writeAddresses(r *resp, list []envAddr) {
	if len(list) == 0 {
		r.raw("NIL")
		return
	}
	r.byte('(')
	for _, a := range list {
		switch {
		case a.groupStart:
			r.raw("(NIL NIL ").nstr(a.mailbox).raw(" NIL)")
		case a.groupEnd:
			r.raw("(NIL NIL NIL NIL)")
		default:
			r.byte('(').nstr(a.name).sp().nstr(a.adl).sp().str(a.mailbox).sp().str(a.host).byte(')')
		}
	}
	r.byte(')')
}

// addrTok is a token of an address header: a word (atom, quoted string or
// domain literal) or one special character.
type addrTok struct {
	text    string
	special byte
	quoted  bool
}

const maxAddresses = 1000

func tokenizeAddresses(s string) []addrTok {
	var toks []addrTok
	for i := 0; i < len(s) && len(toks) < 20*maxAddresses; {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n':
			i++
		case c == '(':
			depth := 0
			for ; i < len(s); i++ {
				if s[i] == '\\' {
					i++
					continue
				}
				if s[i] == '(' {
					depth++
				} else if s[i] == ')' {
					depth--
					if depth == 0 {
						i++
						break
					}
				}
			}
		case c == '"':
			var b strings.Builder
			i++
			for i < len(s) && s[i] != '"' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
				i++
			}
			i++
			toks = append(toks, addrTok{text: b.String(), quoted: true})
		case c == '[':
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				j = len(s) - i - 1
			}
			toks = append(toks, addrTok{text: s[i : i+j+1]})
			i += j + 1
		case strings.IndexByte("<>:;@,.", c) >= 0:
			toks = append(toks, addrTok{special: c})
			i++
		default:
			j := i
			for j < len(s) && strings.IndexByte(" \t\r\n()<>:;@,.\"[", s[j]) < 0 {
				j++
			}
			toks = append(toks, addrTok{text: s[i:j]})
			i = j
		}
	}
	return toks
}

func isSpecial(t addrTok, set string) bool {
	return t.special != 0 && strings.IndexByte(set, t.special) >= 0
}

// parseAddresses parses an address-list leniently (RFC 5322 section 3.4).
func parseAddresses(s string) []envAddr {
	if s == "" {
		return nil
	}
	toks := tokenizeAddresses(s)
	var out []envAddr
	inGroup := false
	for i := 0; i < len(toks) && len(out) < maxAddresses; {
		start := i
		for i < len(toks) && !isSpecial(toks[i], ",;<:") {
			i++
		}
		phrase := toks[start:i]
		switch {
		case i < len(toks) && toks[i].special == ':' && !inGroup:
			out = append(out, envAddr{mailbox: phraseText(phrase), groupStart: true})
			inGroup = true
			i++
			continue
		case i < len(toks) && toks[i].special == '<':
			i++
			s2 := i
			for i < len(toks) && toks[i].special != '>' {
				i++
			}
			spec := toks[s2:i]
			if i < len(toks) {
				i++
			}
			adl := ""
			for k := range spec {
				if spec[k].special == ':' {
					adl = joinToks(spec[:k])
					spec = spec[k+1:]
					break
				}
			}
			if len(spec) > 0 {
				a := addrSpec(spec)
				a.name, a.adl = phraseText(phrase), adl
				out = append(out, a)
			}
			for i < len(toks) && !isSpecial(toks[i], ",;") {
				i++
			}
		case len(phrase) > 0:
			out = append(out, addrSpec(phrase))
		}
		if i < len(toks) {
			switch toks[i].special {
			case ';':
				if inGroup {
					out = append(out, envAddr{groupEnd: true})
					inGroup = false
				}
			}
			i++
		}
	}
	if inGroup {
		out = append(out, envAddr{groupEnd: true})
	}
	return out
}

func addrSpec(toks []addrTok) envAddr {
	at := -1
	for k := len(toks) - 1; k >= 0; k-- {
		if toks[k].special == '@' {
			at = k
			break
		}
	}
	if at < 0 {
		return envAddr{mailbox: joinToks(toks)}
	}
	return envAddr{mailbox: joinToks(toks[:at]), host: joinToks(toks[at+1:])}
}

func joinToks(toks []addrTok) string {
	var b strings.Builder
	for _, t := range toks {
		if t.special != 0 {
			b.WriteByte(t.special)
		} else {
			b.WriteString(t.text)
		}
	}
	return b.String()
}

func phraseText(toks []addrTok) string {
	var parts []string
	for _, t := range toks {
		if t.special != 0 {
			parts = append(parts, string(t.special))
		} else {
			parts = append(parts, t.text)
		}
	}
	return strings.Join(parts, " ")
}

// maxMIMEDepth bounds the nesting BODYSTRUCTURE follows.
const maxMIMEDepth = 20

// writeBodyStructure writes BODYSTRUCTURE (extended) or BODY of a message.
func writeBodyStructure(r *resp, msg []byte, extended bool) {
	h, body := splitHeader(msg)
	writePart(r, parseHeader(h), body, extended, "", 0)
}

func parseHeader(h []byte) textproto.Header {
	th, err := textproto.ReadHeader(bufioReader(h))
	if err != nil {
		return textproto.Header{}
	}
	return th
}

func writePart(r *resp, th textproto.Header, body []byte, extended bool, parentType string, depth int) {
	mh := gomessage.Header{Header: th}
	mediaType, params, err := mh.ContentType()
	if err != nil || mediaType == "" || !mh.Has("Content-Type") {
		if parentType == "multipart/digest" {
			mediaType, params = "message/rfc822", nil
		} else {
			mediaType, params = "text/plain", map[string]string{"charset": "us-ascii"}
		}
	}
	mediaType = strings.ToLower(mediaType)
	typ, sub, _ := strings.Cut(mediaType, "/")
	if typ == "multipart" && depth < maxMIMEDepth && params["boundary"] != "" {
		r.byte('(')
		mr := textproto.NewMultipartReader(bytes.NewReader(body), params["boundary"])
		n := 0
		for n < 1000 {
			part, err := mr.NextPart()
			if err != nil {
				break
			}
			pb, err := io.ReadAll(part)
			if err != nil {
				break
			}
			writePart(r, part.Header, pb, extended, mediaType, depth+1)
			n++
		}
		if n == 0 {
			r.raw(`("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)`)
		}
		r.sp().str(sub)
		if extended {
			r.sp()
			writeParams(r, params)
			r.sp()
			writeDisposition(r, mh)
			r.sp()
			writeLanguage(r, mh)
			r.sp().nstr(mh.Get("Content-Location"))
		}
		r.byte(')')
		return
	}
	if typ == "multipart" { // no boundary or too deep: an opaque part
		typ, sub = "application", "octet-stream"
	}
	r.byte('(').str(typ).sp().str(sub).sp()
	writeParams(r, params)
	enc := mh.Get("Content-Transfer-Encoding")
	if enc == "" {
		enc = "7bit"
	}
	r.sp().nstr(mh.Get("Content-Id")).sp().nstr(mh.Get("Content-Description")).sp().str(strings.ToLower(enc)).sp().int64(int64(len(body)))
	switch {
	case (mediaType == "message/rfc822" || mediaType == "message/global") && depth < maxMIMEDepth:
		ih, ib := splitHeader(body)
		r.sp()
		writeEnvelope(r, ih)
		r.sp()
		writePart(r, parseHeader(ih), ib, extended, "", depth+1)
		r.sp().int64(int64(bytes.Count(body, []byte("\n"))))
	case typ == "text":
		r.sp().int64(int64(bytes.Count(body, []byte("\n"))))
	}
	if extended {
		r.sp().nstr(mh.Get("Content-Md5")).sp()
		writeDisposition(r, mh)
		r.sp()
		writeLanguage(r, mh)
		r.sp().nstr(mh.Get("Content-Location"))
	}
	r.byte(')')
}

func writeParams(r *resp, params map[string]string) {
	if len(params) == 0 {
		r.raw("NIL")
		return
	}
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sortStrings(keys)
	r.byte('(')
	for i, k := range keys {
		if i > 0 {
			r.sp()
		}
		r.str(k).sp().str(params[k])
	}
	r.byte(')')
}

func writeDisposition(r *resp, mh gomessage.Header) {
	d, params, err := mh.ContentDisposition()
	if err != nil || d == "" {
		r.raw("NIL")
		return
	}
	r.byte('(').str(d).sp()
	writeParams(r, params)
	r.byte(')')
}

func writeLanguage(r *resp, mh gomessage.Header) {
	v := mh.Get("Content-Language")
	if v == "" {
		r.raw("NIL")
		return
	}
	var langs []string
	for _, l := range strings.Split(v, ",") {
		if l = strings.TrimSpace(l); l != "" {
			langs = append(langs, l)
		}
	}
	if len(langs) == 0 {
		r.raw("NIL")
		return
	}
	r.byte('(')
	for i, l := range langs {
		if i > 0 {
			r.sp()
		}
		r.str(l)
	}
	r.byte(')')
}
