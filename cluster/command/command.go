// Package command defines the replicated commands: every change to durable
// state is one of these, appended to the Raft log and applied on every node.
//
// An entry is an envelope (format byte, type, flags, request ID, time) and a
// body in the codec encoding. Types only ever grow at the end of the list;
// each says in which command version it appeared and whether a node that does
// not know it may skip it. Golden files in testdata pin every encoding, so an
// old node can always read what a new node wrote during a rolling upgrade.
package command

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
	"github.com/flotilla-mail/flotilla/storage/codec"
)

// Type identifies a command kind. Values are part of the log format.
type Type uint16

const (
	TypeInit         Type = 1
	TypeAddDomain    Type = 2
	TypeRemoveDomain Type = 3
	TypeAddUser      Type = 4
	TypeSetSecrets   Type = 5
	TypeRemoveUser   Type = 6
	TypeAddAlias     Type = 7
	TypeRemoveAlias  Type = 8
	TypeDeliver      Type = 9
	TypeDigest       Type = 10
	TypeSetQuota     Type = 11
	TypeSetSetting   Type = 12
	TypeSetFlags     Type = 13
	TypeExpunge      Type = 14
	TypeCopy         Type = 15
	TypeCreateMbox   Type = 16
	TypeDeleteMbox   Type = 17
	TypeRenameMbox   Type = 18
	TypeSubscribe    Type = 19
	TypePopLock      Type = 20
	TypePopUnlock    Type = 21
	TypeExpungeDel   Type = 28 // command version 2

	// 22-40: outbound delivery and mail collection (queue.go).
	TypeQueueClaim     Type = 22
	TypeQueueResult    Type = 23
	TypeQueueAdmin     Type = 24
	TypeCollectLease   Type = 25
	TypeCollectDeliver Type = 26
	TypeCollectForget  Type = 27
)

// Command is one replicated change.
type Command interface {
	Type() Type
	encode(*codec.Encoder)
	decode(codec.Field)
}

// Spec describes a command type.
type Spec struct {
	Name string
	// Version is the command version that introduced the type. A type is
	// proposed only when every voter understands its version.
	Version int
	// Skippable: a node that does not know the type may ignore it without
	// diverging (it changes nothing that node would read).
	Skippable bool
	New       func() Command
}

// specs is the table of known types; tags may add entries (see next.go).
var specs = map[Type]Spec{
	TypeInit:         {"init", 1, false, func() Command { return &Init{} }},
	TypeAddDomain:    {"add-domain", 1, false, func() Command { return &AddDomain{} }},
	TypeRemoveDomain: {"remove-domain", 1, false, func() Command { return &RemoveDomain{} }},
	TypeAddUser:      {"add-user", 1, false, func() Command { return &AddUser{} }},
	TypeSetSecrets:   {"set-secrets", 1, false, func() Command { return &SetSecrets{} }},
	TypeRemoveUser:   {"remove-user", 1, false, func() Command { return &RemoveUser{} }},
	TypeAddAlias:     {"add-alias", 1, false, func() Command { return &AddAlias{} }},
	TypeRemoveAlias:  {"remove-alias", 1, false, func() Command { return &RemoveAlias{} }},
	TypeDeliver:      {"deliver", 1, false, func() Command { return &Deliver{} }},
	TypeDigest:       {"digest", 1, true, func() Command { return &Digest{} }},
	TypeSetQuota:     {"set-quota", 1, false, func() Command { return &SetQuota{} }},
	TypeSetSetting:   {"set-setting", 1, false, func() Command { return &SetSetting{} }},
	TypeSetFlags:     {"set-flags", 1, false, func() Command { return &SetFlags{} }},
	TypeExpunge:      {"expunge", 1, false, func() Command { return &Expunge{} }},
	TypeCopy:         {"copy", 1, false, func() Command { return &Copy{} }},
	TypeCreateMbox:   {"create-mailbox", 1, false, func() Command { return &CreateMailbox{} }},
	TypeDeleteMbox:   {"delete-mailbox", 1, false, func() Command { return &DeleteMailbox{} }},
	TypeRenameMbox:   {"rename-mailbox", 1, false, func() Command { return &RenameMailbox{} }},
	TypeSubscribe:    {"subscribe", 1, false, func() Command { return &Subscribe{} }},
	TypePopLock:      {"pop-lock", 1, false, func() Command { return &PopLock{} }},
	TypePopUnlock:    {"pop-unlock", 1, false, func() Command { return &PopUnlock{} }},
	TypeExpungeDel:   {"expunge-deleted", 2, false, func() Command { return &ExpungeDeleted{} }},

	// outbound delivery and mail collection (queue.go)
	TypeQueueClaim:     {"queue-claim", 1, false, func() Command { return &QueueClaim{} }},
	TypeQueueResult:    {"queue-result", 1, false, func() Command { return &QueueResult{} }},
	TypeQueueAdmin:     {"queue-admin", 1, false, func() Command { return &QueueAdmin{} }},
	TypeCollectLease:   {"collect-lease", 1, false, func() Command { return &CollectLease{} }},
	TypeCollectDeliver: {"collect-deliver", 1, false, func() Command { return &CollectDeliver{} }},
	TypeCollectForget:  {"collect-forget", 1, false, func() Command { return &CollectForget{} }},
}

// Version is the highest command version this build understands.
func Version() int {
	v := 0
	for _, s := range specs {
		v = max(v, s.Version)
	}
	return v
}

// Lookup returns the spec of a type.
func Lookup(t Type) (Spec, bool) {
	s, ok := specs[t]
	return s, ok
}

func (t Type) String() string {
	if s, ok := specs[t]; ok {
		return s.Name
	}
	return fmt.Sprintf("type-%d", uint16(t))
}

// Envelope is a decoded log entry.
type Envelope struct {
	Type      Type
	Skippable bool
	Request   storage.RequestID
	Time      time.Time
	Body      []byte // the encoded command
}

const (
	envelopeFormat = 1
	flagSkippable  = 1
)

// ErrUnknownType is returned by Decode for a type this build does not know.
var ErrUnknownType = errors.New("unknown command type")

// Encode makes a log entry of a command.
func Encode(c Command, req storage.RequestID, now time.Time) []byte {
	spec := specs[c.Type()]
	b := make([]byte, 0, 64)
	b = append(b, envelopeFormat)
	b = binary.AppendUvarint(b, uint64(c.Type()))
	var flags byte
	if spec.Skippable {
		flags |= flagSkippable
	}
	b = append(b, flags)
	b = append(b, req[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(now.UnixNano()))
	e := codec.NewEncoder(b)
	c.encode(e)
	return e.Bytes()
}

// Open decodes the envelope of a log entry, not its body.
func Open(entry []byte) (Envelope, error) {
	var env Envelope
	if len(entry) < 1 || entry[0] != envelopeFormat {
		return env, fmt.Errorf("%w: envelope format %v", codec.ErrMalformed, first(entry))
	}
	t, n := binary.Uvarint(entry[1:])
	if n <= 0 || t > 0xffff {
		return env, fmt.Errorf("%w: command type", codec.ErrMalformed)
	}
	rest := entry[1+n:]
	if len(rest) < 1+16+8 {
		return env, fmt.Errorf("%w: short envelope", codec.ErrMalformed)
	}
	env.Type = Type(t)
	env.Skippable = rest[0]&flagSkippable != 0
	copy(env.Request[:], rest[1:17])
	env.Time = time.Unix(0, int64(binary.BigEndian.Uint64(rest[17:25])))
	env.Body = rest[25:]
	return env, nil
}

func first(b []byte) any {
	if len(b) == 0 {
		return "empty"
	}
	return b[0]
}

// Decode returns the command in an envelope, or ErrUnknownType.
func (env Envelope) Decode() (Command, error) {
	spec, ok := specs[env.Type]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownType, env.Type)
	}
	c := spec.New()
	if err := codec.Decode(env.Body, c.decode); err != nil {
		return nil, fmt.Errorf("command %s: %w", spec.Name, err)
	}
	return c, nil
}
