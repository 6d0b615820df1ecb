// Package imap is Flotilla's IMAP server: IMAP4rev1 (RFC 3501) and
// IMAP4rev2 (RFC 9051) with LITERAL+, SASL-IR, ID, ENABLE, IDLE,
// NAMESPACE, UNSELECT, UIDPLUS, MOVE, CHILDREN, SPECIAL-USE (and
// CREATE-SPECIAL-USE), LIST-EXTENDED, LIST-STATUS, ESEARCH, SEARCHRES,
// STATUS=SIZE, BINARY, CONDSTORE (RFC 7162), QUOTA (RFC 9208), UTF8=ACCEPT
// and APPENDLIMIT, on one node of a Flotilla cluster.
//
// # Why its own protocol engine
//
// go-imap v2's imapserver has a closed command switch and no server side
// for ID, QUOTA or CONDSTORE. CONDSTORE is not an extra command: it changes
// SELECT, FETCH, STORE, SEARCH and STATUS (new modifiers and items), and
// every untagged FETCH once enabled. No wrapper around imapserver can add
// that without parsing every command itself, and a fork is ruled out. So
// this package parses and answers IMAP itself (wire.go, commands.go) and
// uses go-imap for what it exports as library functions: BODY[part] and
// BINARY extraction. ENVELOPE and BODYSTRUCTURE are our own (envelope.go)
// so that header values stay as sent. docs/imap-design.md has the longer
// argument.
//
// # Reads, writes and what a session sees
//
// Reads come from the local node's store (a bbolt read transaction per
// command or per batch of 200 messages, never open while writing to the
// client). Writes go through Cluster.Propose, which returns once this node
// has applied them, so a session reads its own writes at once and never
// goes back in time.
//
// A session's view of its selected mailbox is a uidMap: runs of
// consecutive UIDs read from the store's keys-only UID index at SELECT (no
// message record is decoded), with binary search both ways between
// sequence numbers and UIDs. The store's change events (published after
// every commit on every node, whichever node the write came through) wake
// the session; it then reads what changed from the store's indexes: new
// UIDs above its highest, flag changes from the MODSEQ index since the
// MODSEQ it has announced, expunges from the events themselves (with a
// count check against the mailbox record, and a full comparison as the
// fallback). Expunges are announced only where RFC 3501 allows.
//
// # Limits and errors
//
// Command lines with their small literals are bounded by MaxCommandSize,
// literals outside APPEND by MaxLiteralSize, messages by AppendLimit
// (advertised as APPENDLIMIT). A synchronising literal over its limit is
// refused before the client sends it; a LITERAL+ one is read and dropped
// up to 1 MiB, beyond which the session ends. APPEND checks the mailbox and
// the quota before it asks for the message. Every wait for the client has
// a deadline (LoginTimeout before login and within a command, IdleTimeout
// after), every write has WriteTimeout. MaxBadCommands BAD responses in a
// row (three before login) close the session, as do three failed logins.
// Errors become tagged responses in one place, respFor in errors.go.
package imap
