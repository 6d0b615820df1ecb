package imap

import (
	"context"
	"errors"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

// Error is a tagged NO or BAD response with its response code (RFC 5530),
// e.g. {"NO", "TRYCREATE", "no such mailbox"}.
type Error struct {
	Status string // "NO" or "BAD"
	Code   string // without brackets; may carry arguments
	Text   string
	Err    error // the cause, logged, never sent
}

func (e *Error) Error() string {
	s := e.Status
	if e.Code != "" {
		s += " [" + e.Code + "]"
	}
	s += " " + e.Text
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

func no(code, text string) *Error  { return &Error{Status: "NO", Code: code, Text: text} }
func bad(code, text string) *Error { return &Error{Status: "BAD", Code: code, Text: text} }

// tryCreate marks a missing destination mailbox (APPEND, COPY, MOVE): the
// client may create it and retry.
type tryCreate struct{ err error }

func (t tryCreate) Error() string { return t.err.Error() }
func (t tryCreate) Unwrap() error { return t.err }

// respFor maps any error of a command to the tagged response, the one place
// where that happens. logIt is true for errors that point at a server
// problem rather than at the request.
func respFor(err error) (e *Error, logIt bool) {
	var ie *Error
	var se *syntaxError
	var ne *badNameError
	var tc tryCreate
	switch {
	case errors.As(err, &ie):
		return ie, false
	case errors.As(err, &se):
		return &Error{Status: "BAD", Code: "CLIENTBUG", Text: "syntax error: " + se.msg}, false
	case errors.As(err, &ne):
		return &Error{Status: "NO", Code: "CANNOT", Text: ne.Error()}, false
	case errors.As(err, &tc) && errors.Is(err, storage.ErrNotFound):
		return &Error{Status: "NO", Code: "TRYCREATE", Text: "no such mailbox"}, false
	case errors.Is(err, storage.ErrNotFound):
		return &Error{Status: "NO", Code: "NONEXISTENT", Text: "no such mailbox"}, false
	case errors.Is(err, storage.ErrExists):
		return &Error{Status: "NO", Code: "ALREADYEXISTS", Text: "mailbox already exists"}, false
	case errors.Is(err, storage.ErrQuota):
		return &Error{Status: "NO", Code: "OVERQUOTA", Text: "quota exceeded"}, false
	case errors.Is(err, storage.ErrInvalid):
		return &Error{Status: "NO", Code: "CANNOT", Text: cleanText(err.Error())}, false
	case errors.Is(err, cluster.ErrUncertain):
		// Not "try again": the change may still take effect, and a
		// repeated APPEND would store the message twice.
		return &Error{Status: "NO", Code: "UNAVAILABLE", Text: "the cluster lost its majority while this change was in flight; it may still take effect: look before repeating it"}, true
	case errors.Is(err, cluster.ErrUnavailable):
		return &Error{Status: "NO", Code: "UNAVAILABLE", Text: "the cluster has no leader right now; try again shortly"}, true
	case errors.Is(err, auth.ErrBadCredentials):
		return &Error{Status: "NO", Code: "AUTHENTICATIONFAILED", Text: "authentication failed"}, false
	case errors.Is(err, auth.ErrAuthzDenied):
		return &Error{Status: "NO", Code: "AUTHORIZATIONFAILED", Text: "you may only act as yourself"}, false
	case errors.Is(err, auth.ErrEncryptionRequired):
		return &Error{Status: "NO", Code: "PRIVACYREQUIRED", Text: "use STARTTLS or port 993 first"}, false
	case errors.Is(err, auth.ErrUnsupported):
		return &Error{Status: "NO", Code: "CANNOT", Text: "unsupported authentication mechanism"}, false
	case errors.Is(err, auth.ErrMalformed):
		return &Error{Status: "BAD", Code: "CLIENTBUG", Text: "malformed SASL exchange"}, false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: "NO", Code: "UNAVAILABLE", Text: "interrupted; try again"}, false
	}
	return &Error{Status: "NO", Code: "SERVERBUG", Text: "internal error"}, true
}

// cleanText keeps a message fit for a response line.
func cleanText(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c >= 0x7f {
			b[i] = '?'
		}
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}
