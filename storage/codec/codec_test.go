package codec

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTripAndUnknownFields(t *testing.T) {
	e := NewEncoder(nil)
	e.Uint(1, 42)
	e.Int(2, -7)
	e.String(3, "héllo")
	e.Blob(4, []byte{0, 1, 2})
	e.Strings(5, []string{"a", "", "c"})
	e.Message(6, func(m *Encoder) { m.Uint(1, 9) })
	e.Bool(7, true)
	e.Uint(99, 5) // a field this reader does not know

	var (
		u    uint64
		i    int64
		s    string
		b    []byte
		ss   []string
		nest uint64
		bo   bool
	)
	err := Decode(e.Bytes(), func(f Field) {
		switch f.Num {
		case 1:
			u = f.Uint()
		case 2:
			i = f.Int()
		case 3:
			s = f.String()
		case 4:
			b = f.Copy()
		case 5:
			ss = append(ss, f.String())
		case 6:
			f.Message(func(g Field) {
				if g.Num == 1 {
					nest = g.Uint()
				}
			})
		case 7:
			bo = f.Bool()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if u != 42 || i != -7 || s != "héllo" || !bytes.Equal(b, []byte{0, 1, 2}) || len(ss) != 3 || ss[1] != "" || nest != 9 || !bo {
		t.Fatalf("decoded %v %v %q %v %q %v %v", u, i, s, b, ss, nest, bo)
	}
}

func TestTypeMismatchIsAnError(t *testing.T) {
	e := NewEncoder(nil)
	e.String(1, "not a number")
	err := Decode(e.Bytes(), func(f Field) { _ = f.Uint() })
	if !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v, want ErrMalformed", err)
	}
}

func TestTruncatedInput(t *testing.T) {
	e := NewEncoder(nil)
	e.String(1, "truncated value")
	b := e.Bytes()
	for n := 1; n < len(b); n++ {
		if err := Decode(b[:n], func(Field) {}); !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix %d: err = %v, want ErrMalformed", n, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	e := NewEncoder(nil)
	e.Uint(1, 1)
	e.Message(2, func(m *Encoder) { m.String(1, "x") })
	f.Add(e.Bytes())
	f.Add([]byte{0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = Decode(b, func(fl Field) {
			switch fl.Num % 3 {
			case 0:
				_ = fl.Uint()
			case 1:
				_ = fl.Blob()
			case 2:
				fl.Message(func(Field) {})
			}
		})
	})
}
