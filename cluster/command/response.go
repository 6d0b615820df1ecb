package command

import (
	"errors"

	"github.com/flotilla-mail/flotilla/storage"
	"github.com/flotilla-mail/flotilla/storage/codec"
)

// Code classifies the outcome of a command. Values are part of the format
// (responses are stored for deduplication and sent back to forwarders).
type Code uint8

const (
	OK Code = iota
	CodeNotFound
	CodeExists
	CodeInvalid
	CodeQuota
	CodeSkipped // a skippable type this node does not know
	CodeInternal
	CodeLocked
)

var codeErrs = map[Code]error{
	CodeNotFound: storage.ErrNotFound,
	CodeExists:   storage.ErrExists,
	CodeInvalid:  storage.ErrInvalid,
	CodeQuota:    storage.ErrQuota,
	CodeLocked:   storage.ErrLocked,
}

// Response is the typed result of applying a command, the same on every node.
type Response struct {
	Code    Code
	Message string   // for a failure: what was wrong, for people
	IDs     []uint64 // assigned identifiers, in the order the command asked
	Digest  []byte
	Failed  []uint64 // items the command could not apply (e.g. CONDSTORE MODIFIED)
}

// Err turns a failed response into an error that matches the storage
// sentinel errors with errors.Is, wherever the command was applied.
func (r Response) Err() error {
	if r.Code == OK {
		return nil
	}
	return &Error{Code: r.Code, Message: r.Message}
}

// Fail makes the response of a command that failed with err.
func Fail(err error) Response {
	for c, sentinel := range codeErrs {
		if errors.Is(err, sentinel) {
			return Response{Code: c, Message: err.Error()}
		}
	}
	return Response{Code: CodeInternal, Message: err.Error()}
}

// Error is a command's failure.
type Error struct {
	Code    Code
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is makes errors.Is(err, storage.ErrNotFound) and the like work.
func (e *Error) Is(target error) bool { return codeErrs[e.Code] == target }

// Marshal encodes a response.
func (r Response) Marshal() []byte {
	e := codec.NewEncoder(nil)
	e.Uint(1, uint64(r.Code))
	e.String(2, r.Message)
	for _, id := range r.IDs {
		e.Message(3, func(m *codec.Encoder) { m.Uint(1, id) })
	}
	e.Blob(4, r.Digest)
	for _, id := range r.Failed {
		e.Message(5, func(m *codec.Encoder) { m.Uint(1, id) })
	}
	return e.Bytes()
}

// UnmarshalResponse decodes a response.
func UnmarshalResponse(b []byte) (Response, error) {
	var r Response
	err := codec.Decode(b, func(f codec.Field) {
		switch f.Num {
		case 1:
			r.Code = Code(f.Uint())
		case 2:
			r.Message = f.String()
		case 3:
			var id uint64
			f.Message(func(g codec.Field) {
				if g.Num == 1 {
					id = g.Uint()
				}
			})
			r.IDs = append(r.IDs, id)
		case 4:
			r.Digest = f.Copy()
		case 5:
			var id uint64
			f.Message(func(g codec.Field) {
				if g.Num == 1 {
					id = g.Uint()
				}
			})
			r.Failed = append(r.Failed, id)
		}
	})
	return r, err
}
