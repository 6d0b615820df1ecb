package workload

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// FlagsConverge bounds how long CheckFlags waits for the nodes to agree:
// after healing every node applies the same log, but a write whose fate
// was unknown when the workload stopped may still be settling.
const FlagsConverge = 30 * time.Second

// CheckFlags reads every user's INBOX on every running node (each node's
// own state, stale=1) and checks that the flags converged: every
// acknowledged flag write is present on its message on every node, and
// every node has the same flags on every message and the same UIDVALIDITY,
// UIDNEXT and HIGHESTMODSEQ. (UIDs, bytes and their order per node are
// Check's.) It waits up to FlagsConverge for the nodes to agree and returns
// the problems of its last look.
func CheckFlags(c *harness.Cluster, users []string, writes []FlagWrite) []string {
	deadline := time.Now().Add(FlagsConverge)
	for {
		p := checkFlagsOnce(c, users, writes)
		if len(p) == 0 || time.Now().After(deadline) {
			return p
		}
		time.Sleep(250 * time.Millisecond) // polling for convergence
	}
}

func checkFlagsOnce(c *harness.Cluster, users []string, writes []FlagWrite) []string {
	type view struct {
		inbox admin.Mailbox
		flags map[uint32]map[string]bool // UID -> lower-case flags
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var out problems
	views := map[string]map[string]*view{} // node -> user -> view
	var nodes []string
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		nodes = append(nodes, n.ID)
		nv := map[string]*view{} // the goroutines touch this, never views
		views[n.ID] = nv
		for _, u := range users {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mbs []admin.Mailbox
				err := n.API("GET", "/v1/users/"+u+"/mailboxes?stale=1", nil, &mbs)
				var ms []admin.Message
				if err == nil {
					ms, err = listMessages(n, u)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					out.add(fmt.Sprintf("%s: list %s: %v", n.ID, u, err))
					return
				}
				v := &view{flags: map[uint32]map[string]bool{}}
				for _, mb := range mbs {
					if strings.EqualFold(mb.Name, "INBOX") {
						v.inbox = mb
					}
				}
				for _, m := range ms {
					fs := map[string]bool{}
					for _, f := range m.Flags {
						fs[strings.ToLower(f)] = true
					}
					v.flags[m.UID] = fs
				}
				nv[u] = v
			}()
		}
	}
	wg.Wait()
	if len(out.list) > 0 {
		return out.all()
	}

	for _, fw := range writes {
		for _, node := range nodes {
			v := views[node][fw.User]
			switch fs, ok := v.flags[fw.UID]; {
			case v.inbox.UIDValidity != fw.UIDValidity:
				out.add(fmt.Sprintf("%s: acknowledged flag write %s: INBOX has UIDVALIDITY %d", node, fw, v.inbox.UIDValidity))
			case !ok:
				out.add(fmt.Sprintf("%s: acknowledged flag write %s: no such message", node, fw))
			case !fs[strings.ToLower(fw.Flag)]:
				out.add(fmt.Sprintf("%s: acknowledged flag write %s: flag missing; the message has %v", node, fw, sortedKeys(fs)))
			}
		}
	}

	ref := nodes[0]
	for _, u := range users {
		r := views[ref][u]
		for _, node := range nodes[1:] {
			v := views[node][u]
			if a, b := r.inbox, v.inbox; a.UIDValidity != b.UIDValidity || a.UIDNext != b.UIDNext || a.HighestModSeq != b.HighestModSeq {
				out.add(fmt.Sprintf("%s and %s differ on %s's INBOX: UIDVALIDITY %d/%d, UIDNEXT %d/%d, HIGHESTMODSEQ %d/%d",
					node, ref, u, b.UIDValidity, a.UIDValidity, b.UIDNext, a.UIDNext, b.HighestModSeq, a.HighestModSeq))
			}
			for uid, fs := range v.flags {
				rf, ok := r.flags[uid]
				if !ok {
					continue // a message on one node only is Check's to report
				}
				if a, b := sortedKeys(fs), sortedKeys(rf); strings.Join(a, " ") != strings.Join(b, " ") {
					out.add(fmt.Sprintf("%s and %s differ on the flags of %s UID %d: %v vs %v", node, ref, u, uid, a, b))
				}
			}
		}
	}
	p := out.all()
	sort.Strings(p)
	return p
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
