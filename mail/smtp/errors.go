package smtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

// Reply is the SMTP reply an operation ends with: what the client is told.
// Err is the cause, for the log only: it is never sent.
type Reply struct {
	Code     int
	Enhanced [3]int
	Text     string
	// Close ends the connection once the reply is sent (421 replies).
	Close bool
	Err   error
}

func (r *Reply) Error() string {
	s := fmt.Sprintf("smtp: %d %d.%d.%d %s", r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], r.Text)
	if r.Err != nil {
		s += ": " + r.Err.Error()
	}
	return s
}

func (r *Reply) Unwrap() error { return r.Err }

// Temporary reports whether the client should try again later.
func (r *Reply) Temporary() bool { return r.Code/100 == 4 }

// with returns a copy of r carrying cause err.
func (r Reply) with(err error) *Reply {
	r.Err = err
	return &r
}

func reply(code int, a, b, c int, text string) Reply {
	return Reply{Code: code, Enhanced: [3]int{a, b, c}, Text: text}
}

// The replies the server gives, by situation. Codes follow RFC 5321 and
// RFC 3463 (enhanced status codes), RFC 4954 (AUTH), RFC 6531 (SMTPUTF8).
var (
	replyShuttingDown  = Reply{Code: 421, Enhanced: [3]int{4, 3, 2}, Text: "Service shutting down, try again later", Close: true}
	replyTooManyErrors = Reply{Code: 421, Enhanced: [3]int{4, 7, 0}, Text: "Too many errors, closing connection", Close: true}
	replyTimeout       = Reply{Code: 421, Enhanced: [3]int{4, 4, 2}, Text: "Timeout, closing connection", Close: true}
	replyUnavailable   = reply(451, 4, 3, 0, "Cluster temporarily unavailable, try again later")
	replyLocalError    = reply(451, 4, 3, 0, "Local error in processing, try again later")
	replyAborted       = reply(451, 4, 3, 0, "Message transfer aborted, nothing stored")
	replyNoSuchUser    = reply(550, 5, 1, 1, "No such user here")
	replyDisabled      = reply(550, 5, 2, 1, "Mailbox disabled")
	replyRelayDenied   = reply(550, 5, 7, 1, "Relaying denied")
	replyBadRcpt       = reply(501, 5, 1, 3, "Bad recipient address syntax")
	replyBadSender     = reply(501, 5, 1, 7, "Bad sender address syntax")
	replyNonASCII      = reply(553, 5, 6, 7, "Non-ASCII address needs the SMTPUTF8 parameter")
	replyNotOwner      = reply(553, 5, 7, 1, "Sender address not owned by the authenticated user")
	replyAuthRequired  = reply(530, 5, 7, 0, "Authentication required")
	replyNoTransaction = reply(503, 5, 5, 1, "Bad sequence of commands")
	replyAuthInTx      = reply(503, 5, 5, 1, "AUTH not permitted during a mail transaction")
	replyAuthTwice     = reply(503, 5, 5, 1, "Already authenticated")
	replyQuotaFull     = reply(452, 4, 2, 2, "Mailbox full, try again later")
	replyDiskFull      = reply(452, 4, 3, 1, "Insufficient system storage, try again later")
	replyQuotaTooBig   = reply(552, 5, 2, 2, "Message exceeds the mailbox quota")
	replyTooManyRcpts  = reply(452, 4, 5, 3, "Too many recipients")
	replyTooBig        = reply(552, 5, 3, 4, "Message too big")
	replyLineTooLong   = reply(500, 5, 5, 2, "Line too long")
	replyBareNewline   = reply(554, 5, 6, 0, "Message refused: bare CR or LF in message data (RFC 5321 section 2.3.8)")
	replyLoop          = reply(554, 5, 4, 6, "Routing loop detected: too many Received headers")
	replyAuthFailed    = reply(535, 5, 7, 8, "Authentication credentials invalid")
	replyAuthMalformed = reply(501, 5, 5, 2, "Malformed authentication exchange")
	replyAuthMech      = reply(504, 5, 5, 4, "Unrecognized authentication mechanism")
	replyAuthTLS       = reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism")
	replyAuthTemp      = reply(454, 4, 7, 0, "Temporary authentication failure")
)

// asReply maps any error to the reply the client gets. It is the one place
// where that happens: a *Reply is sent as it is; everything else is a
// temporary local error whose text stays in the log.
func asReply(err error) *Reply {
	var r *Reply
	switch {
	case err == nil:
		return nil
	case errors.As(err, &r):
		return r
	case errors.Is(err, cluster.ErrUnavailable), errors.Is(err, cluster.ErrNotSupported):
		return replyUnavailable.with(err)
	case errors.Is(err, gosmtp.ErrDataTooLarge):
		return replyTooBig.with(err)
	case errors.Is(err, gosmtp.ErrTooLongLine):
		return replyLineTooLong.with(err)
	case errors.Is(err, gosmtp.ErrDataReset), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, net.ErrClosed):
		return replyAborted.with(err)
	case isTimeout(err):
		return replyTimeout.with(err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return replyUnavailable.with(err)
	}
	return replyLocalError.with(err)
}

// authReply maps the errors of a SASL exchange as package auth documents.
func authReply(err error) *Reply {
	switch {
	case errors.Is(err, auth.ErrBadCredentials), errors.Is(err, auth.ErrAuthzDenied):
		return replyAuthFailed.with(err)
	case errors.Is(err, auth.ErrMalformed):
		return replyAuthMalformed.with(err)
	case errors.Is(err, auth.ErrUnsupported):
		return replyAuthMech.with(err)
	case errors.Is(err, auth.ErrEncryptionRequired):
		return replyAuthTLS.with(err)
	}
	return replyAuthTemp.with(err)
}

// rcptReply maps a failed recipient lookup.
func rcptReply(err error) *Reply {
	switch {
	case errors.Is(err, storage.ErrDisabled):
		return replyDisabled.with(err)
	case errors.Is(err, storage.ErrNotFound):
		return replyNoSuchUser.with(err)
	case errors.Is(err, storage.ErrInvalid):
		return replyBadRcpt.with(err)
	}
	return asReply(err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// smtpError is what go-smtp sends for r.
func (r *Reply) smtpError() *gosmtp.SMTPError {
	return &gosmtp.SMTPError{Code: r.Code, EnhancedCode: gosmtp.EnhancedCode(r.Enhanced), Message: r.Text}
}
