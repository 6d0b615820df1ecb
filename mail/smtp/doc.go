// Package smtp is Flotilla's SMTP server: mail exchange (MX, port 25),
// message submission (port 587 with STARTTLS, RFC 6409) and submission over
// implicit TLS (port 465, RFC 8314), built on emersion/go-smtp.
//
// A message is answered 250 only after the one Deliver command that stores
// it has been committed by a majority of the cluster and applied on this
// node (cluster.Node.Propose): its body once, a record in the INBOX of every
// local recipient with its own trace headers (Return-Path, Received), and an
// outbound queue entry for remote recipients. When no leader can be reached
// the answer is 451 4.3.0 and nothing is stored: the command is atomic.
//
// What go-smtp leaves to us, and where it is done:
//
//   - conn.go wraps the listener and every connection: connection limits,
//     read and write deadlines on every I/O (so a slow DATA cannot outlive
//     its timeouts), a maximum session time, closing after a 421, and the
//     two-phase shutdown (idle sessions get 421 4.3.2 at once, sessions in
//     a mail transaction finish it first).
//   - data.go reads DATA and BDAT. go-smtp ends DATA only on CRLF.CRLF but
//     passes bare CR and bare LF through: we refuse a message with any, so
//     <LF>.<LF>, <CR>.<CR> and their mixtures are never an end of data here
//     nor anywhere we relay to (SMTP smuggling). BDAT chunks come through
//     the same reader, unlimited in line length by go-smtp; we apply the
//     limit ourselves.
//   - errors.go maps every failure to a reply in one place; internal error
//     text is logged, never sent.
//   - Recipients are resolved by storage.Tx.Resolve (users, aliases,
//     sub-addresses, catch-alls); relaying follows the cluster-wide policy
//     of package relay.
//
// SASL is package auth: SCRAM-SHA-256 is xdg-go/scram behind auth's
// adapter, PLAIN, LOGIN and CRAM-MD5 are auth's own. AUTH is offered only
// on TLS and loopback connections.
package smtp
