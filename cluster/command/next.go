//go:build flotilla_next

package command

import "github.com/flotilla-mail/flotilla/storage/codec"

// TypeNote exists only in builds with the flotilla_next tag: a command kind of
// command version 3, which release builds do not know and may not skip.
const TypeNote Type = 1000

func init() {
	specs[TypeNote] = Spec{"note", 3, false, func() Command { return &Note{} }}
}

// Note stores a short text as a setting.
type Note struct{ Key, Text string }

func (*Note) Type() Type { return TypeNote }
func (c *Note) encode(e *codec.Encoder) {
	e.String(1, c.Key)
	e.String(2, c.Text)
}
func (c *Note) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Key = f.String()
	case 2:
		c.Text = f.String()
	}
}
