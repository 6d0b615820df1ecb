package delivery

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Injected is what Inject did with a message.
type Injected struct {
	QueueID uint64   `json:"queue_id,omitempty"` // 0: nothing queued
	Local   []string `json:"local,omitempty"`    // local users it was stored for
	Queued  []string `json:"queued,omitempty"`   // addresses queued for delivery
}

// Inject puts a message into the cluster as an administrator's tool does
// (re-injecting mail, sending without SMTP): local recipients get it in
// their INBOX, routed and remote ones through the queue, all in one
// command. Lines are normalised to CRLF; a Received field records the way
// it came.
func Inject(ctx context.Context, node *cluster.Node, hostname, from string, to []string, msg []byte) (Injected, error) {
	var out Injected
	if len(to) == 0 {
		return out, fmt.Errorf("%w: no recipients", storage.ErrInvalid)
	}
	if from != "" {
		if _, _, err := storage.NormalizeAddress(from, false); err != nil {
			return out, fmt.Errorf("sender %q: %w", from, err)
		}
	}
	if len(msg) == 0 {
		return out, fmt.Errorf("%w: empty message", storage.ErrInvalid)
	}
	msg = crlf(msg)
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	now := time.Now()
	received := fmt.Sprintf("Received: by %s (Flotilla) via the admin API\r\n\tid %s; %s\r\n", hostname, id, now.UTC().Format(time.RFC1123Z))
	// An admin operation reads linearizably: a route or user just set
	// through another node counts.
	if err := node.ReadIndex(ctx); err != nil {
		return out, err
	}
	hash, z := node.Store().Compress(msg)
	d := &command.Deliver{Blob: hash, Body: z, BodySize: int64(len(msg)), From: from, InternalDate: now.UnixNano(),
		QueuePrefix: []byte(received)}
	err := node.Store().View(func(tx *storage.Tx) error {
		cfg, _ := LoadConfig(tx)
		seenUser := map[uint64]bool{}
		seenRemote := map[string]bool{}
		queue := func(a string) {
			if !seenRemote[a] {
				seenRemote[a] = true
				d.Queue = append(d.Queue, storage.QueueRecipient{Address: a})
				out.Queued = append(out.Queued, a)
			}
		}
		for _, a := range to {
			a = strings.TrimSpace(a)
			if _, _, err := storage.NormalizeAddress(a, false); err != nil {
				return fmt.Errorf("recipient %q: %w", a, err)
			}
			if _, ok := cfg.RouteFor(a); ok {
				queue(a)
				continue
			}
			res, err := tx.Resolve(a)
			if err != nil {
				return err
			}
			for _, u := range res.Users {
				if !seenUser[u.ID] {
					seenUser[u.ID] = true
					d.Targets = append(d.Targets, command.Target{UserID: u.ID,
						Prefix: []byte(fmt.Sprintf("Return-Path: <%s>\r\n%s", from, received))})
					out.Local = append(out.Local, u.Address)
				}
			}
			for _, r := range res.Remote {
				queue(r)
			}
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	resp, _, err := node.Propose(ctx, d)
	if err != nil {
		return out, err
	}
	if len(d.Queue) > 0 && len(resp.IDs) > len(d.Targets) {
		out.QueueID = resp.IDs[len(resp.IDs)-1]
	}
	if len(d.Queue) > 0 && out.QueueID == 0 {
		return out, errors.New("message not queued")
	}
	return out, nil
}

// crlf turns bare LF (and bare CR) line ends into CRLF.
func crlf(b []byte) []byte {
	if !bytes.ContainsAny(b, "\r\n") {
		return append(b, '\r', '\n')
	}
	var out bytes.Buffer
	out.Grow(len(b) + len(b)/40)
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\r':
			out.WriteString("\r\n")
			if i+1 < len(b) && b[i+1] == '\n' {
				i++
			}
		case '\n':
			out.WriteString("\r\n")
		default:
			out.WriteByte(b[i])
		}
	}
	if !bytes.HasSuffix(out.Bytes(), []byte("\r\n")) {
		out.WriteString("\r\n")
	}
	return out.Bytes()
}
