package storage

// EventKind says what changed.
type EventKind uint8

const (
	// MessageAdded: a message with UID appeared in MailboxID.
	MessageAdded EventKind = iota + 1
	// MessageFlags: the flags of UID in MailboxID changed.
	MessageFlags
	// MessageExpunged: UID left MailboxID.
	MessageExpunged
	// MailboxCreated, MailboxDeleted, MailboxRenamed: the folder list of
	// UserID changed.
	MailboxCreated
	MailboxDeleted
	MailboxRenamed
	// QueueChanged: queue entry ID was added, updated or removed.
	QueueChanged
	// DirectoryChanged: a domain, user, alias or setting changed.
	DirectoryChanged
)

// Event describes one committed change. Events are published after the
// commit on every node, in commit order, so that sessions on any node (IMAP
// IDLE, for one) learn of changes made through any other.
type Event struct {
	Seq       uint64
	Kind      EventKind
	UserID    uint64
	MailboxID uint64
	UID       uint32
	ID        uint64 // queue entry
}
