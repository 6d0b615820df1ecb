package command

import (
	"github.com/flotilla-mail/flotilla/storage"
	"github.com/flotilla-mail/flotilla/storage/codec"
)

// Field numbers below are part of the log format: only add, never reuse.

// Init stamps the identity of a new cluster; the first command of its log.
// It also carries the cluster's shared secret for SASL decoys (see
// storage.SecretSASLDecoy).
type Init struct {
	ClusterID string
	DecoyKey  []byte
}

func (*Init) Type() Type { return TypeInit }
func (c *Init) encode(e *codec.Encoder) {
	e.String(1, c.ClusterID)
	e.Blob(2, c.DecoyKey)
}
func (c *Init) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.ClusterID = f.String()
	case 2:
		c.DecoyKey = f.Copy()
	}
}

// AddDomain adds a mail domain.
type AddDomain struct{ Name string }

func (*AddDomain) Type() Type                { return TypeAddDomain }
func (c *AddDomain) encode(e *codec.Encoder) { e.String(1, c.Name) }
func (c *AddDomain) decode(f codec.Field) {
	if f.Num == 1 {
		c.Name = f.String()
	}
}

// RemoveDomain removes an empty mail domain.
type RemoveDomain struct{ Name string }

func (*RemoveDomain) Type() Type                { return TypeRemoveDomain }
func (c *RemoveDomain) encode(e *codec.Encoder) { e.String(1, c.Name) }
func (c *RemoveDomain) decode(f codec.Field) {
	if f.Num == 1 {
		c.Name = f.String()
	}
}

// AddUser creates an account with its default mailboxes. Secrets are derived
// from the password by the proposer (salts are random; Apply is not).
type AddUser struct {
	Address    string
	Name       string
	Secrets    storage.Secrets
	QuotaBytes int64
}

func (*AddUser) Type() Type { return TypeAddUser }
func (c *AddUser) encode(e *codec.Encoder) {
	e.String(1, c.Address)
	e.String(2, c.Name)
	e.Message(3, func(m *codec.Encoder) { encodeSecrets(m, &c.Secrets) })
	e.Int(4, c.QuotaBytes)
}
func (c *AddUser) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Address = f.String()
	case 2:
		c.Name = f.String()
	case 3:
		f.Message(func(g codec.Field) { decodeSecrets(g, &c.Secrets) })
	case 4:
		c.QuotaBytes = f.Int()
	}
}

func encodeSecrets(e *codec.Encoder, s *storage.Secrets) {
	e.String(1, s.Argon2id)
	e.Blob(2, s.ScramSalt)
	e.Uint(3, uint64(s.ScramIter))
	e.Blob(4, s.ScramStoredKey)
	e.Blob(5, s.ScramServerKey)
	e.Blob(6, s.CRAMMD5)
	e.Blob(7, s.APOP)
}

func decodeSecrets(f codec.Field, s *storage.Secrets) {
	switch f.Num {
	case 1:
		s.Argon2id = f.String()
	case 2:
		s.ScramSalt = f.Copy()
	case 3:
		s.ScramIter = int(f.Uint())
	case 4:
		s.ScramStoredKey = f.Copy()
	case 5:
		s.ScramServerKey = f.Copy()
	case 6:
		s.CRAMMD5 = f.Copy()
	case 7:
		s.APOP = f.Copy()
	}
}

// SetSecrets changes a user's password (as derived secrets).
type SetSecrets struct {
	Address string
	Secrets storage.Secrets
}

func (*SetSecrets) Type() Type { return TypeSetSecrets }
func (c *SetSecrets) encode(e *codec.Encoder) {
	e.String(1, c.Address)
	e.Message(2, func(m *codec.Encoder) { encodeSecrets(m, &c.Secrets) })
}
func (c *SetSecrets) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Address = f.String()
	case 2:
		f.Message(func(g codec.Field) { decodeSecrets(g, &c.Secrets) })
	}
}

// RemoveUser removes an account and all its mail.
type RemoveUser struct{ Address string }

func (*RemoveUser) Type() Type                { return TypeRemoveUser }
func (c *RemoveUser) encode(e *codec.Encoder) { e.String(1, c.Address) }
func (c *RemoveUser) decode(f codec.Field) {
	if f.Num == 1 {
		c.Address = f.String()
	}
}

// SetQuota sets a user's storage quota.
type SetQuota struct {
	Address    string
	QuotaBytes int64
}

func (*SetQuota) Type() Type { return TypeSetQuota }
func (c *SetQuota) encode(e *codec.Encoder) {
	e.String(1, c.Address)
	e.Int(2, c.QuotaBytes)
}
func (c *SetQuota) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Address = f.String()
	case 2:
		c.QuotaBytes = f.Int()
	}
}

// AddAlias creates an alias or catch-all ("@domain").
type AddAlias struct {
	Address string
	Targets []string
}

func (*AddAlias) Type() Type { return TypeAddAlias }
func (c *AddAlias) encode(e *codec.Encoder) {
	e.String(1, c.Address)
	e.Strings(2, c.Targets)
}
func (c *AddAlias) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Address = f.String()
	case 2:
		c.Targets = append(c.Targets, f.String())
	}
}

// RemoveAlias removes an alias.
type RemoveAlias struct{ Address string }

func (*RemoveAlias) Type() Type                { return TypeRemoveAlias }
func (c *RemoveAlias) encode(e *codec.Encoder) { e.String(1, c.Address) }
func (c *RemoveAlias) decode(f codec.Field) {
	if f.Num == 1 {
		c.Address = f.String()
	}
}

// Target is one mailbox a delivered message goes into.
type Target struct {
	UserID  uint64
	Mailbox string // "" means INBOX
	Prefix  []byte // trace headers for this recipient
	Flags   []string
	// EnforceQuota refuses the target if the user is over quota at apply time.
	EnforceQuota bool
	// Exact refuses the target if the mailbox is missing (IMAP APPEND)
	// instead of falling back to INBOX (delivery).
	Exact bool
}

// Deliver stores one message: its body once, a record in every target
// mailbox, and an outbound queue entry for remote recipients. The response
// carries the UID given in each target (0 where refused) and the queue ID.
type Deliver struct {
	Blob         storage.Hash
	Body         []byte // zstd-compressed
	BodySize     int64  // uncompressed
	From         string
	InternalDate int64
	Targets      []Target
	Queue        []storage.QueueRecipient // remote recipients, if any
	QueuePrefix  []byte
	EnvID, Ret   string
}

func (*Deliver) Type() Type { return TypeDeliver }
func (c *Deliver) encode(e *codec.Encoder) {
	e.Blob(1, c.Blob[:])
	e.Blob(2, c.Body)
	e.Int(3, c.BodySize)
	e.String(4, c.From)
	e.Int(5, c.InternalDate)
	for _, t := range c.Targets {
		e.Message(6, func(m *codec.Encoder) {
			m.Uint(1, t.UserID)
			m.String(2, t.Mailbox)
			m.Blob(3, t.Prefix)
			m.Strings(4, t.Flags)
			m.Bool(5, t.EnforceQuota)
			m.Bool(6, t.Exact)
		})
	}
	for _, r := range c.Queue {
		e.Message(7, func(m *codec.Encoder) {
			m.String(1, r.Address)
			m.String(2, r.Notify)
			m.String(3, r.ORcpt)
		})
	}
	e.Blob(8, c.QueuePrefix)
	e.String(9, c.EnvID)
	e.String(10, c.Ret)
}
func (c *Deliver) decode(f codec.Field) {
	switch f.Num {
	case 1:
		copy(c.Blob[:], f.Blob())
	case 2:
		c.Body = f.Copy()
	case 3:
		c.BodySize = f.Int()
	case 4:
		c.From = f.String()
	case 5:
		c.InternalDate = f.Int()
	case 6:
		var t Target
		f.Message(func(g codec.Field) {
			switch g.Num {
			case 1:
				t.UserID = g.Uint()
			case 2:
				t.Mailbox = g.String()
			case 3:
				t.Prefix = g.Copy()
			case 4:
				t.Flags = append(t.Flags, g.String())
			case 5:
				t.EnforceQuota = g.Bool()
			case 6:
				t.Exact = g.Bool()
			}
		})
		c.Targets = append(c.Targets, t)
	case 7:
		var r storage.QueueRecipient
		f.Message(func(g codec.Field) {
			switch g.Num {
			case 1:
				r.Address = g.String()
			case 2:
				r.Notify = g.String()
			case 3:
				r.ORcpt = g.String()
			}
		})
		c.Queue = append(c.Queue, r)
	case 8:
		c.QueuePrefix = f.Copy()
	case 9:
		c.EnvID = f.String()
	case 10:
		c.Ret = f.String()
	}
}

// Digest asks every node to record the digest of its state at this entry's
// index, so that `cluster verify` compares all nodes at one point of the log.
type Digest struct{ Nonce uint64 }

func (*Digest) Type() Type                { return TypeDigest }
func (c *Digest) encode(e *codec.Encoder) { e.Uint(1, c.Nonce) }
func (c *Digest) decode(f codec.Field) {
	if f.Num == 1 {
		c.Nonce = f.Uint()
	}
}

// SetSetting sets (or, with an empty value, clears) a cluster-wide setting.
type SetSetting struct {
	Key   string
	Value []byte
}

func (*SetSetting) Type() Type { return TypeSetSetting }
func (c *SetSetting) encode(e *codec.Encoder) {
	e.String(1, c.Key)
	e.Blob(2, c.Value)
}
func (c *SetSetting) decode(f codec.Field) {
	switch f.Num {
	case 1:
		c.Key = f.String()
	case 2:
		c.Value = f.Copy()
	}
}
