package pop3

import (
	"errors"
	"math"
	"strings"
)

// command is one parsed command line.
type command struct {
	name string // keyword, upper case
	arg  string // the rest after the keyword and one space, unchanged
}

var (
	errEmptyLine    = errors.New("empty command line")
	errControlChars = errors.New("control characters in command line")
	errBadKeyword   = errors.New("malformed command keyword")
)

// maxKeyword is longer than any POP3 keyword (RFC 2449: 3 or 4 characters)
// and limits what an unknown one costs in logs.
const maxKeyword = 8

// parseCommand splits a command line, without its line ending, into keyword
// and argument. Keywords are case-insensitive ASCII letters. Control
// characters are refused anywhere in the line; 8-bit bytes are allowed in
// arguments (UTF-8 user names and passwords).
func parseCommand(line []byte) (command, error) {
	if len(line) == 0 {
		return command{}, errEmptyLine
	}
	for _, c := range line {
		if c < 0x20 || c == 0x7f {
			return command{}, errControlChars
		}
	}
	s := string(line)
	name, arg, _ := strings.Cut(s, " ")
	if name == "" || len(name) > maxKeyword {
		return command{}, errBadKeyword
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return command{}, errBadKeyword
		}
	}
	return command{name: strings.ToUpper(name), arg: arg}, nil
}

// fields splits an argument string at runs of spaces. RFC 2449 asks for
// single spaces; we accept more.
func fields(arg string) []string {
	return strings.FieldsFunc(arg, func(r rune) bool { return r == ' ' })
}

// parseNumber parses a non-negative decimal number made of ASCII digits
// only: no sign, no spaces. Numbers too large for an int come back as
// math.MaxInt, which is out of range for any message number.
func parseNumber(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int(c - '0')
		if n > (math.MaxInt-d)/10 {
			n = math.MaxInt
			continue // keep checking the remaining characters are digits
		}
		n = n*10 + d
	}
	return n, true
}
