// Package pop3 is a POP3 server (RFC 1939) with CAPA and response codes
// (RFC 2449, RFC 3206), SASL authentication (RFC 5034) and STLS
// (RFC 2595). It knows nothing of storage: the caller supplies a Backend
// that authenticates users and opens their Maildrop, and the SASL
// mechanisms it offers (for instance go-sasl servers wrapped with
// NewSASLServer).
//
// # Sessions
//
// A session starts in AUTHORIZATION with a greeting that carries an APOP
// timestamp when the Backend implements APOPBackend. USER/PASS, APOP or
// AUTH authenticate; the session then locks the maildrop (Maildrop.Lock,
// "-ERR [IN-USE]" when another session holds it), takes its message list
// once, and enters TRANSACTION. Deletions are only marks until QUIT, when
// the session enters UPDATE: it calls Maildrop.Delete with the marked
// messages, closes the maildrop, then answers. Every other way a session
// ends — the client drops the connection, the idle timer fires, too many
// errors, Shutdown, a cancelled context — closes the maildrop without
// deleting anything.
//
// Commands are read through a buffered reader and replies are flushed only
// when no whole command is waiting, so pipelining clients (RFC 2449
// PIPELINING) get their replies in batches and never wait on a flush.
//
// # Cleartext policy
//
// A password may be sent without a SASL security layer only when
// ConnInfo.PasswordOK: over TLS (STLS or implicit), on a loopback or Unix
// socket connection, or with Server.AllowInsecureAuth. Otherwise CAPA does
// not advertise USER and USER is answered "-ERR [AUTH] cleartext login not
// allowed here; use STLS first" — refused at USER, so that a client that
// reads replies never sends the password. The Server.SASL function gets
// the same ConnInfo and should offer PLAIN and LOGIN only when PasswordOK.
// APOP and challenge-response mechanisms are not restricted.
//
// STLS is refused after authentication and over TLS. Anything pipelined
// behind STLS is taken for a command injection: the session answers -ERR
// and closes. After the handshake the session forgets a pending USER.
//
// For implicit TLS (port 995), wrap the listener with tls.NewListener and
// pass it to Serve; the session runs the handshake itself, under
// WriteTimeout, and treats the connection as TLS from the start.
//
// # Limits and errors
//
// Command lines are limited to MaxLineLength octets (255, RFC 2449); AUTH
// command lines and SASL responses to MaxSASLLineLength. An over-long line
// is read to its end and thrown away, answered "-ERR line too long", and
// the session goes on: the line was never a command, and the client stays
// in step with the replies. Only a line that runs on for 64 KiB past the
// limit closes the session. Every -ERR counts towards MaxErrors in a row;
// every failed authentication towards MaxAuthFailures per connection. Both
// close the session with a last -ERR line. Each wait for a client line is
// bounded by IdleTimeout, each write and the TLS handshake by WriteTimeout.
//
// Backend errors map to replies in one place: an *Error (ErrAuthFailed,
// ErrLocked, ErrLoginDelay or the backend's own) gives the response code
// and text; any other error becomes an -ERR with the SYS/TEMP response code
// and is logged.
//
// # Concurrency
//
// Each session runs in its own goroutine and calls the Backend with a
// context that ends with the session. No lock is held while writing to a
// client; Shutdown only sets a read deadline to wake sessions waiting for
// a command, and each session writes its own last words.
package pop3
