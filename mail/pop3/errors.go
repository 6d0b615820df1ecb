package pop3

import (
	"context"
	"errors"
	"strings"
)

// Error is an error with the POP3 reply it maps to. Backends return one of
// the sentinels below, wrapped with %w if they like, or their own *Error to
// choose the reply themselves.
type Error struct {
	// Code is the extended response code without brackets (RFC 2449
	// section 8, RFC 3206), e.g. "SYS/PERM"; empty for none.
	Code string
	// Text is the human-readable part of the reply. It should not reveal
	// whether a user exists.
	Text string
	// Err is the cause; it is logged, never sent to the client.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("pop3: ")
	if e.Code != "" {
		b.WriteString("[" + e.Code + "] ")
	}
	b.WriteString(e.Text)
	if e.Err != nil {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Errors a Backend or Maildrop returns, possibly wrapped.
var (
	// ErrAuthFailed: the credentials are wrong, the account is disabled or
	// the login breaks policy ("-ERR [AUTH]").
	ErrAuthFailed = &Error{Code: "AUTH", Text: "authentication failed"}
	// ErrLocked: another session holds the maildrop lock ("-ERR [IN-USE]").
	ErrLocked = &Error{Code: "IN-USE", Text: "maildrop already locked"}
	// ErrLoginDelay: the user logs in more often than allowed
	// ("-ERR [LOGIN-DELAY]").
	ErrLoginDelay = &Error{Code: "LOGIN-DELAY", Text: "login too soon after the previous one"}
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("pop3: server closed")

// replyFor maps err to the code and text of an -ERR reply, the one place
// where that happens. fallback is the text for errors that are not an
// *Error. logIt is true when the error is unexpected and worth logging.
func replyFor(err error, fallback string) (code, text string, logIt bool) {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Code, e.Text, false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "SYS/TEMP", fallback, false
	default:
		return "SYS/TEMP", fallback, true
	}
}
