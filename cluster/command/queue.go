package command

import (
	"github.com/flotilla-mail/flotilla/storage/codec"
)

// Outbound queue and mail collection commands. Lease times (Until) and the
// time a command is judged at both come from the proposer: Apply compares
// a lease's Until with the command's own time, never with a local clock.

// QueueClaim asks for the delivery lease of queue entries for Node until
// Until. Apply grants an entry that is unleased, leased by Node (a renewal)
// or whose lease has lapsed at the command's time, and that is not held. The
// response lists granted entries in IDs and refused ones in Failed.
type QueueClaim struct {
	Node  string
	Until int64 // unix nanoseconds
	IDs   []uint64
}

func (*QueueClaim) Type() Type { return TypeQueueClaim }
func (c *QueueClaim) encode(e *codec.Encoder) {
	e.String(1, c.Node)
	e.Int(2, c.Until)
	for _, id := range c.IDs {
		e.Message(3, func(m *codec.Encoder) { m.Uint(1, id) })
	}
}
func (c *QueueClaim) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Node = f.String()
	case 2:
		c.Until = f.Int()
	case 3:
		c.IDs = append(c.IDs, decodeID(f))
	}
}

func decodeID(f codec.Field) uint64 {
	var id uint64
	f.Message(func(g codec.Field) {
		if g.Num == 1 {
			id = g.Uint()
		}
	})
	return id
}

// Outcome of one delivery attempt to one recipient.
type Outcome uint8

const (
	// Deferred: a temporary failure; the recipient stays pending.
	Deferred Outcome = iota
	// Delivered: the next hop accepted the message for the recipient.
	Delivered
	// Bounced: a permanent failure; the recipient is given up.
	Bounced
)

// RcptResult is what became of one recipient in one attempt.
type RcptResult struct {
	Address string
	Outcome Outcome
	Error   string // the remote's answer or our reason, for people
}

// EntryResult is the outcome of one attempt at one queue entry.
type EntryResult struct {
	ID    uint64
	Rcpts []RcptResult
	// NextAttempt is when to try the recipients still pending again.
	NextAttempt int64
	// FailureDSN, if set, is stored (delivered locally or queued to the
	// sender) only if this result is what bounces a recipient: a result
	// applied twice never makes a second report.
	FailureDSN *Deliver
	// DelayDSN, if set, is stored only if the entry's sender has not been
	// told of a delay yet.
	DelayDSN *Deliver
	// SuccessDSN, if set, is stored only if this result is what delivers a
	// recipient (NOTIFY=SUCCESS through a server without DSN: "relayed").
	SuccessDSN *Deliver
}

// QueueResult records delivery outcomes of entries worked on by Node, and
// ends Node's leases on them. An entry with no recipient left pending is
// removed.
type QueueResult struct {
	Node    string
	Entries []EntryResult
}

func (*QueueResult) Type() Type { return TypeQueueResult }
func (c *QueueResult) encode(e *codec.Encoder) {
	e.String(1, c.Node)
	for _, r := range c.Entries {
		e.Message(2, func(m *codec.Encoder) {
			m.Uint(1, r.ID)
			for _, rc := range r.Rcpts {
				m.Message(2, func(n *codec.Encoder) {
					n.String(1, rc.Address)
					n.Uint(2, uint64(rc.Outcome))
					n.String(3, rc.Error)
				})
			}
			m.Int(3, r.NextAttempt)
			if r.FailureDSN != nil {
				m.Message(4, r.FailureDSN.encode)
			}
			if r.DelayDSN != nil {
				m.Message(5, r.DelayDSN.encode)
			}
			if r.SuccessDSN != nil {
				m.Message(6, r.SuccessDSN.encode)
			}
		})
	}
}
func (c *QueueResult) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Node = f.String()
	case 2:
		var r EntryResult
		f.Message(func(g codec.Field) {
			switch g.Num {
			case 1:
				r.ID = g.Uint()
			case 2:
				var rc RcptResult
				g.Message(func(h codec.Field) {
					switch h.Num {
					case 1:
						rc.Address = h.String()
					case 2:
						rc.Outcome = Outcome(h.Uint())
					case 3:
						rc.Error = h.String()
					}
				})
				r.Rcpts = append(r.Rcpts, rc)
			case 3:
				r.NextAttempt = g.Int()
			case 4:
				r.FailureDSN = &Deliver{}
				g.Message(r.FailureDSN.decode)
			case 5:
				r.DelayDSN = &Deliver{}
				g.Message(r.DelayDSN.decode)
			case 6:
				r.SuccessDSN = &Deliver{}
				g.Message(r.SuccessDSN.decode)
			}
		})
		c.Entries = append(c.Entries, r)
	}
}

// QueueOp is an administrator's action on queue entries.
type QueueOp uint8

const (
	// QueueRetry: try the entry's pending recipients now.
	QueueRetry QueueOp = iota + 1
	// QueueHold: no delivery until released.
	QueueHold
	// QueueRelease: lift a hold and try now.
	QueueRelease
	// QueueDelete: drop the entry without a report to its sender.
	QueueDelete
)

// QueueAdmin applies an administrator's action to entries (All: to every
// entry). The response lists the entries changed.
type QueueAdmin struct {
	Op  QueueOp
	IDs []uint64
	All bool
}

func (*QueueAdmin) Type() Type { return TypeQueueAdmin }
func (c *QueueAdmin) encode(e *codec.Encoder) {
	e.Uint(1, uint64(c.Op))
	for _, id := range c.IDs {
		e.Message(2, func(m *codec.Encoder) { m.Uint(1, id) })
	}
	e.Bool(3, c.All)
}
func (c *QueueAdmin) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Op = QueueOp(f.Uint())
	case 2:
		c.IDs = append(c.IDs, decodeID(f))
	case 3:
		c.All = f.Bool()
	}
}

// CollectLease takes, renews or (Release) gives up the lease of a mail
// collection account: exactly one node polls an account at a time. Apply
// grants it when the account is free, held by Node, or its lease lapsed.
type CollectLease struct {
	Account string
	Node    string
	Until   int64
	Release bool
}

func (*CollectLease) Type() Type { return TypeCollectLease }
func (c *CollectLease) encode(e *codec.Encoder) {
	e.String(1, c.Account)
	e.String(2, c.Node)
	e.Int(3, c.Until)
	e.Bool(4, c.Release)
}
func (c *CollectLease) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Account = f.String()
	case 2:
		c.Node = f.String()
	case 3:
		c.Until = f.Int()
	case 4:
		c.Release = f.Bool()
	}
}

// CollectDeliver stores a message fetched from a collection account, unless
// a message with the same remote identity (UID) was stored before: marking
// it collected and storing it are one command, so a message is never stored
// twice, whichever node fetched it and however often. The response has
// Code OK with IDs as Deliver's, or Code Exists for a message seen before.
type CollectDeliver struct {
	Account string
	UID     string
	Deliver Deliver
}

func (*CollectDeliver) Type() Type { return TypeCollectDeliver }
func (c *CollectDeliver) encode(e *codec.Encoder) {
	e.String(1, c.Account)
	e.String(2, c.UID)
	e.Message(3, c.Deliver.encode)
}
func (c *CollectDeliver) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Account = f.String()
	case 2:
		c.UID = f.String()
	case 3:
		f.Message(c.Deliver.decode)
	}
}

// CollectForget drops remembered UIDs of an account that the remote no
// longer has (or, with All, the whole memory of an account removed).
type CollectForget struct {
	Account string
	UIDs    []string
	All     bool
}

func (*CollectForget) Type() Type { return TypeCollectForget }
func (c *CollectForget) encode(e *codec.Encoder) {
	e.String(1, c.Account)
	e.Strings(2, c.UIDs)
	e.Bool(3, c.All)
}
func (c *CollectForget) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Account = f.String()
	case 2:
		c.UIDs = append(c.UIDs, f.String())
	case 3:
		c.All = f.Bool()
	}
}
