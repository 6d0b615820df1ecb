package admin

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/delivery"
	"github.com/flotilla-mail/flotilla/storage"
)

func queueRoutes(s *Server, route func(string, func(*http.Request) (any, error))) {
	route("GET /v1/queue", s.listQueue)
	route("GET /v1/queue/{id}", s.showQueue)
	route("POST /v1/queue/{id}/{op}", s.queueOp)
	route("DELETE /v1/queue/{id}", s.deleteQueue)
	route("POST /v1/queue/inject", s.injectQueue)
}

// QueueEntry is an outbound message in the API.
type QueueEntry struct {
	ID          uint64           `json:"id"`
	From        string           `json:"from"`
	Recipients  []QueueRecipient `json:"recipients"`
	Size        int64            `json:"size"`
	Created     time.Time        `json:"created"`
	NextAttempt time.Time        `json:"next_attempt"`
	Held        bool             `json:"held"`
	LeaseNode   string           `json:"lease_node,omitempty"`
	LeaseUntil  *time.Time       `json:"lease_until,omitempty"`
	LastAttempt *time.Time       `json:"last_attempt,omitempty"`
	EnvID       string           `json:"envid,omitempty"`
	Ret         string           `json:"ret,omitempty"`
	// Header is the message's header section (show only).
	Header string `json:"header,omitempty"`
}

// QueueRecipient is one recipient of a queued message.
type QueueRecipient struct {
	Address   string `json:"address"`
	State     string `json:"state"`
	LastError string `json:"last_error,omitempty"`
	Attempts  uint32 `json:"attempts"`
	Notify    string `json:"notify,omitempty"`
}

var rcptStates = map[storage.RecipientState]string{storage.RcptPending: "pending", storage.RcptDelivered: "delivered", storage.RcptBounced: "bounced"}

func queueOut(tx *storage.Tx, q storage.QueueEntry) QueueEntry {
	e := QueueEntry{ID: q.ID, From: q.From, Size: q.Size, Created: time.Unix(0, q.Created).UTC(),
		NextAttempt: time.Unix(0, q.NextAttempt).UTC(), Held: q.Held, EnvID: q.EnvID, Ret: q.Ret, Recipients: []QueueRecipient{}}
	if q.LeaseNode != "" {
		e.LeaseNode = q.LeaseNode
		u := time.Unix(0, q.LeaseUntil).UTC()
		e.LeaseUntil = &u
	}
	if m, err := tx.QueueMeta(q.ID); err == nil && m.LastAttempt != 0 {
		la := time.Unix(0, m.LastAttempt).UTC()
		e.LastAttempt = &la
	}
	for _, rc := range q.Recipients {
		e.Recipients = append(e.Recipients, QueueRecipient{Address: rc.Address, State: rcptStates[rc.State], LastError: rc.LastError,
			Attempts: rc.Attempts, Notify: rc.Notify})
	}
	return e
}

func (s *Server) listQueue(r *http.Request) (any, error) {
	out := []QueueEntry{}
	err := s.read(r, func(tx *storage.Tx) error {
		return tx.QueueEntries(func(q storage.QueueEntry) bool {
			out = append(out, queueOut(tx, q))
			return true
		})
	})
	return out, err
}

func queueID(r *http.Request) (uint64, bool, error) {
	v := r.PathValue("id")
	if v == "all" {
		return 0, true, nil
	}
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil || id == 0 {
		return 0, false, fmt.Errorf("%w: queue id %q", errBadRequest, v)
	}
	return id, false, nil
}

func (s *Server) showQueue(r *http.Request) (any, error) {
	id, all, err := queueID(r)
	if err != nil || all {
		return nil, fmt.Errorf("%w: give one queue id", errBadRequest)
	}
	var out QueueEntry
	err = s.read(r, func(tx *storage.Tx) error {
		q, err := tx.QueueEntry(id)
		if err != nil {
			return err
		}
		out = queueOut(tx, q)
		body, err := tx.Body(q.Blob)
		if err != nil {
			return err
		}
		msg := append(append([]byte{}, q.Prefix...), body...)
		if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
			msg = msg[:i+2]
		}
		out.Header = string(msg)
		return nil
	})
	return out, err
}

var queueOps = map[string]command.QueueOp{"retry": command.QueueRetry, "hold": command.QueueHold, "release": command.QueueRelease, "delete": command.QueueDelete}

// QueueOpResult lists the entries an operation changed.
type QueueOpResult struct {
	IDs []uint64 `json:"ids"`
}

func (s *Server) queueOp(r *http.Request) (any, error) {
	op, ok := queueOps[r.PathValue("op")]
	if !ok {
		return nil, fmt.Errorf("%w: queue operation %q: retry, hold, release or delete", errBadRequest, r.PathValue("op"))
	}
	return s.queueAdmin(r, op)
}

func (s *Server) deleteQueue(r *http.Request) (any, error) {
	return s.queueAdmin(r, command.QueueDelete)
}

func (s *Server) queueAdmin(r *http.Request, op command.QueueOp) (any, error) {
	id, all, err := queueID(r)
	if err != nil {
		return nil, err
	}
	c := &command.QueueAdmin{Op: op, All: all}
	if !all {
		c.IDs = []uint64{id}
	}
	resp, err := s.propose(r, c)
	if err != nil {
		return nil, err
	}
	return QueueOpResult{IDs: append([]uint64{}, resp.IDs...)}, nil
}

// injectQueue puts the raw message of the request body into the cluster:
// ?from=sender&to=rcpt&to=rcpt (from= empty is the null sender).
func (s *Server) injectQueue(r *http.Request) (any, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 256<<20))
	if err != nil {
		return nil, err
	}
	var to []string
	for _, v := range r.URL.Query()["to"] {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				to = append(to, a)
			}
		}
	}
	if len(to) == 0 {
		return nil, fmt.Errorf("%w: no recipients (to=)", errBadRequest)
	}
	host, _ := os.Hostname()
	if w := delivery.Running(s.Node); w != nil {
		host = w.Hostname()
	}
	return delivery.Inject(r.Context(), s.Node, host, r.URL.Query().Get("from"), to, body)
}
