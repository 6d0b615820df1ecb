package workload

import (
	"bufio"
	"bytes"
	"fmt"
	"net/textproto"
	"sort"
	"strings"
	"sync"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// Result is what the checker found.
type Result struct {
	Acked      int
	Lost       int // acknowledged, missing on some node
	Duplicated int // stored more than once on some node
	Problems   []string
}

// Check reads every user's INBOX on every running node and checks the
// acknowledged messages against it: each present exactly once on every
// node, with identical bytes and UIDs everywhere; UIDs strictly
// increasing; messages of unknown outcome at most once.
func Check(c *harness.Cluster, users []string, acks []Ack, unknown func(string) bool) Result {
	res := Result{Acked: len(acks)}
	acked := map[string]bool{}
	for _, a := range acks {
		acked[a.ID] = true
	}
	type copyOf struct {
		uid uint32
		sha string
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	// node -> message ID -> copies
	seen := map[string]map[string][]copyOf{}
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		// Each node's map is made before its readers start and only ever
		// reached through byID, so no goroutine reads seen while it grows.
		byID := map[string][]copyOf{}
		seen[n.ID] = byID
		for _, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ms, err := listMessages(n, u)
				if err != nil {
					mu.Lock()
					res.Problems = append(res.Problems, fmt.Sprintf("%s: list %s: %v", n.ID, u, err))
					mu.Unlock()
					return
				}
				var last uint32
				for _, m := range ms {
					if m.UID <= last {
						mu.Lock()
						res.Problems = append(res.Problems, fmt.Sprintf("%s: %s: UID %d after %d", n.ID, u, m.UID, last))
						mu.Unlock()
					}
					last = m.UID
					raw, err := n.Raw("GET", fmt.Sprintf("/v1/users/%s/messages/%d?stale=1", u, m.UID))
					if err != nil {
						mu.Lock()
						res.Problems = append(res.Problems, fmt.Sprintf("%s: fetch %s/%d: %v", n.ID, u, m.UID, err))
						mu.Unlock()
						continue
					}
					id := messageID(raw)
					mu.Lock()
					byID[id] = append(byID[id], copyOf{m.UID, m.SHA256})
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()

	var ref map[string][]copyOf
	var refNode string
	for node, ids := range seen {
		if ref == nil {
			ref, refNode = ids, node
		}
		for id := range acked {
			if len(ids[id]) == 0 {
				res.Lost++
				res.Problems = append(res.Problems, fmt.Sprintf("%s: acknowledged %s missing", node, id))
			}
		}
		for id, copies := range ids {
			if len(copies) > 1 {
				res.Duplicated++
				res.Problems = append(res.Problems, fmt.Sprintf("%s: %s stored %d times", node, id, len(copies)))
			}
			if !acked[id] && (unknown == nil || !unknown(id)) && strings.Contains(id, "@chaos.test") {
				res.Problems = append(res.Problems, fmt.Sprintf("%s: %s stored but never sent", node, id))
			}
			if node != refNode {
				r := ref[id]
				if len(r) != len(copies) || (len(r) > 0 && (r[0] != copies[0])) {
					res.Problems = append(res.Problems, fmt.Sprintf("%s and %s differ on %s: %v vs %v", node, refNode, id, copies, r))
				}
			}
		}
	}
	sort.Strings(res.Problems)
	return res
}

// listMessages is a user's INBOX as node n has it, without waiting for the
// leader (stale=1): what the node itself serves.
func listMessages(n *harness.Node, user string) ([]admin.Message, error) {
	var ms []admin.Message
	err := n.API("GET", "/v1/users/"+user+"/messages?stale=1", nil, &ms)
	return ms, err
}

func messageID(raw []byte) string {
	tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw)))
	h, _ := tp.ReadMIMEHeader()
	return h.Get("Message-Id")
}
