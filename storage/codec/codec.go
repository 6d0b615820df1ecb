// Package codec is the one binary encoding of Flotilla's durable records and
// replicated commands: numbered fields in the protobuf wire format, written
// and read by hand. The wire format is explicit (no reflection) and tolerant of
// added fields: a reader skips field numbers it does not know, which is what
// lets an old node read what a newer node wrote during a rolling upgrade.
package codec

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Encoder appends fields to a buffer. Zero values are omitted, as in proto3.
type Encoder struct {
	buf []byte
}

// NewEncoder returns an Encoder appending to buf (which may be nil).
func NewEncoder(buf []byte) *Encoder { return &Encoder{buf: buf} }

// Bytes returns the encoded fields.
func (e *Encoder) Bytes() []byte { return e.buf }

// Uint writes an unsigned varint field.
func (e *Encoder) Uint(num int, v uint64) {
	if v == 0 {
		return
	}
	e.buf = protowire.AppendTag(e.buf, protowire.Number(num), protowire.VarintType)
	e.buf = protowire.AppendVarint(e.buf, v)
}

// Int writes a signed (zig-zag) varint field.
func (e *Encoder) Int(num int, v int64) {
	if v == 0 {
		return
	}
	e.buf = protowire.AppendTag(e.buf, protowire.Number(num), protowire.VarintType)
	e.buf = protowire.AppendVarint(e.buf, protowire.EncodeZigZag(v))
}

// Bool writes a boolean field.
func (e *Encoder) Bool(num int, v bool) {
	if v {
		e.Uint(num, 1)
	}
}

// String writes a length-delimited string field.
func (e *Encoder) String(num int, s string) {
	if s == "" {
		return
	}
	e.buf = protowire.AppendTag(e.buf, protowire.Number(num), protowire.BytesType)
	e.buf = protowire.AppendString(e.buf, s)
}

// Blob writes a length-delimited bytes field.
func (e *Encoder) Blob(num int, b []byte) {
	if len(b) == 0 {
		return
	}
	e.buf = protowire.AppendTag(e.buf, protowire.Number(num), protowire.BytesType)
	e.buf = protowire.AppendBytes(e.buf, b)
}

// Strings writes one field per element, in order; empty strings are kept so
// positions survive.
func (e *Encoder) Strings(num int, ss []string) {
	for _, s := range ss {
		e.buf = protowire.AppendTag(e.buf, protowire.Number(num), protowire.BytesType)
		e.buf = protowire.AppendString(e.buf, s)
	}
}

// Message writes a nested message produced by fn, even when it is empty
// (repeated messages must keep their count).
func (e *Encoder) Message(num int, fn func(*Encoder)) {
	inner := Encoder{}
	fn(&inner)
	e.buf = protowire.AppendTag(e.buf, protowire.Number(num), protowire.BytesType)
	e.buf = protowire.AppendBytes(e.buf, inner.buf)
}

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed record")

// Field is one decoded field. Its getters check the wire type and report a
// mismatch through the Decode call that produced it.
type Field struct {
	Num  int
	typ  protowire.Type
	v    uint64
	b    []byte
	errp *error
}

func (f Field) fail(want string) {
	if *f.errp == nil {
		*f.errp = fmt.Errorf("%w: field %d is not %s", ErrMalformed, f.Num, want)
	}
}

// Uint returns a varint field.
func (f Field) Uint() uint64 {
	if f.typ != protowire.VarintType {
		f.fail("a varint")
		return 0
	}
	return f.v
}

// Uint32 returns a varint field that must fit 32 bits.
func (f Field) Uint32() uint32 {
	v := f.Uint()
	if v > math.MaxUint32 {
		f.fail("a 32-bit value")
		return 0
	}
	return uint32(v)
}

// Int returns a zig-zag varint field.
func (f Field) Int() int64 { return protowire.DecodeZigZag(f.Uint()) }

// Bool returns a boolean field.
func (f Field) Bool() bool { return f.Uint() != 0 }

// String returns a length-delimited field as a string.
func (f Field) String() string { return string(f.Blob()) }

// Blob returns a length-delimited field. The slice aliases the input, so
// callers that keep it past the life of the input must copy it.
func (f Field) Blob() []byte {
	if f.typ != protowire.BytesType {
		f.fail("length-delimited")
		return nil
	}
	return f.b
}

// Copy returns a length-delimited field as a fresh slice.
func (f Field) Copy() []byte {
	b := f.Blob()
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

// Message decodes a nested message.
func (f Field) Message(fn func(Field)) {
	b := f.Blob()
	if *f.errp != nil {
		return
	}
	if err := Decode(b, fn); err != nil && *f.errp == nil {
		*f.errp = err
	}
}

// Decode calls fn for every field of b in order. Unknown field numbers are the
// caller's to ignore. It returns the first wire-format or type error.
func Decode(b []byte, fn func(Field)) error {
	var err error
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		f := Field{Num: int(num), typ: typ, errp: &err}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(b)
		default:
			// Fixed-width and group types are never written by Flotilla,
			// but a newer writer may use them: skip, don't fail.
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		if n < 0 {
			return fmt.Errorf("%w: field %d: %v", ErrMalformed, num, protowire.ParseError(n))
		}
		b = b[n:]
		fn(f)
		if err != nil {
			return err
		}
	}
	return err
}
