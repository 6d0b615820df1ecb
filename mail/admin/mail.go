package admin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Mailbox is a mailbox in the API.
type Mailbox struct {
	Name          string `json:"name"`
	SpecialUse    string `json:"special_use,omitempty"`
	UIDValidity   uint32 `json:"uidvalidity"`
	UIDNext       uint32 `json:"uidnext"`
	HighestModSeq uint64 `json:"highestmodseq"`
	Messages      uint32 `json:"messages"`
	Unseen        uint32 `json:"unseen"`
	Size          int64  `json:"size"`
}

// Message is a message's record in the API; SHA256 is of its full bytes.
type Message struct {
	UID          uint32    `json:"uid"`
	Size         int64     `json:"size"`
	Flags        []string  `json:"flags"`
	ModSeq       uint64    `json:"modseq"`
	InternalDate time.Time `json:"internal_date"`
	SHA256       string    `json:"sha256"`
}

// rawBody is written as is, not as JSON.
type rawBody []byte

func (s *Server) listMailboxes(r *http.Request) (any, error) {
	out := []Mailbox{}
	err := s.read(r, func(tx *storage.Tx) error {
		u, err := tx.User(r.PathValue("address"))
		if err != nil {
			return err
		}
		mbs, err := tx.Mailboxes(u.ID)
		for _, mb := range mbs {
			out = append(out, Mailbox{Name: mb.Name, SpecialUse: mb.SpecialUse, UIDValidity: mb.UIDValidity, UIDNext: mb.UIDNext,
				HighestModSeq: mb.HighestModSeq, Messages: mb.Messages, Unseen: mb.Unseen, Size: mb.Size})
		}
		return err
	})
	return out, err
}

func mailboxOf(r *http.Request, tx *storage.Tx) (storage.Mailbox, error) {
	u, err := tx.User(r.PathValue("address"))
	if err != nil {
		return storage.Mailbox{}, err
	}
	name := r.URL.Query().Get("mailbox")
	if name == "" {
		name = "INBOX"
	}
	return tx.Mailbox(u.ID, name)
}

// fullMessage is a message's bytes: its per-recipient prefix and its body.
func fullMessage(tx *storage.Tx, m storage.Message) ([]byte, error) {
	body, err := tx.Body(m.Blob)
	if err != nil {
		return nil, err
	}
	return append(append(make([]byte, 0, len(m.Prefix)+len(body)), m.Prefix...), body...), nil
}

func (s *Server) listMessages(r *http.Request) (any, error) {
	out := []Message{}
	err := s.read(r, func(tx *storage.Tx) error {
		mb, err := mailboxOf(r, tx)
		if err != nil {
			return err
		}
		var ferr error
		err = tx.Messages(mb.ID, 1, func(m storage.Message) bool {
			b, err := fullMessage(tx, m)
			if err != nil {
				ferr = err
				return false
			}
			sum := sha256.Sum256(b)
			out = append(out, Message{UID: m.UID, Size: m.Size, Flags: append([]string{}, m.Flags...), ModSeq: m.ModSeq,
				InternalDate: time.Unix(0, m.InternalDate).UTC(), SHA256: hex.EncodeToString(sum[:])})
			return true
		})
		if ferr != nil {
			return ferr
		}
		return err
	})
	return out, err
}

func (s *Server) getMessage(r *http.Request) (any, error) {
	uid, err := strconv.ParseUint(r.PathValue("uid"), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: uid %q", errBadRequest, r.PathValue("uid"))
	}
	var out rawBody
	err = s.read(r, func(tx *storage.Tx) error {
		mb, err := mailboxOf(r, tx)
		if err != nil {
			return err
		}
		m, err := tx.Message(mb.ID, uint32(uid))
		if err != nil {
			return err
		}
		out, err = fullMessage(tx, m)
		return err
	})
	return out, err
}

// importMessage stores a message given as the request body in a mailbox, as
// migration tools do. The message is taken as it is, with no trace headers.
func (s *Server) importMessage(r *http.Request) (any, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: empty message", errBadRequest)
	}
	var userID uint64
	mailbox := r.URL.Query().Get("mailbox")
	lookup := func(tx *storage.Tx) error {
		u, err := tx.User(r.PathValue("address"))
		userID = u.ID
		if err == nil && mailbox != "" {
			_, err = tx.Mailbox(u.ID, mailbox)
		}
		return err
	}
	// The local state first; only a miss (a user just created through
	// another node) needs a linearizable read.
	if err := s.Node.Store().View(lookup); errors.Is(err, storage.ErrNotFound) {
		err = s.read(r, lookup)
		if err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	hash, z := s.Node.Store().Compress(body)
	deliver := &command.Deliver{Blob: hash, Body: z, BodySize: int64(len(body)),
		InternalDate: time.Now().UnixNano(), Targets: []command.Target{{UserID: userID, Mailbox: mailbox}}}
	if r.URL.Query().Get("wait") == "commit" {
		// Answer once the message is durable on a majority, as SMTP does.
		idx, err := s.Node.ProposeCommitted(r.Context(), deliver)
		return struct {
			Index uint64 `json:"index"`
		}{idx}, err
	}
	resp, err := s.propose(r, deliver)
	if err != nil {
		return nil, err
	}
	if len(resp.IDs) == 0 || resp.IDs[0] == 0 {
		return nil, fmt.Errorf("%w: message not stored (user gone?)", storage.ErrNotFound)
	}
	return struct {
		UID uint64 `json:"uid"`
	}{resp.IDs[0]}, nil
}
