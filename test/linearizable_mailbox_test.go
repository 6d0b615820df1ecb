package test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/test/harness"
)

// The operations on a user's INBOX that the mailbox model knows.
const (
	mbAppend  = iota // IMAP APPEND of a message known by its SHA-256; output: its UID
	mbStore          // IMAP UID STORE +FLAGS.SILENT or -FLAGS.SILENT of one flag on one UID
	mbExpunge        // IMAP UID EXPUNGE of one UID
	mbList           // admin API GET .../messages (linearizable read); output: []mbMsg
)

// The flags the model tracks, as bits; any other flag in a listing is
// mbOther, which no state holds, so it fails the check.
const (
	mbFlagged = 1 << iota
	mbTag
	mbDeleted
	mbOther = 1 << 7
)

var mbFlagNames = []struct {
	bit  uint8
	name string
}{{mbFlagged, `\Flagged`}, {mbTag, "$Tag"}, {mbDeleted, `\Deleted`}}

type mbInput struct {
	user string
	kind int
	sha  string // mbAppend
	uid  uint32 // mbStore, mbExpunge
	flag uint8  // mbStore
	add  bool   // mbStore: +FLAGS (else -FLAGS)
}

// mbMsg is a message of the model, and of a listing.
type mbMsg struct {
	uid   uint32
	sha   string
	flags uint8
}

// mbState is one INBOX: its messages by ascending UID and the highest UID
// ever assigned in it. States are never modified, only replaced.
type mbState struct {
	max  uint32
	msgs []mbMsg
}

func mbFlagBits(flags []string) uint8 {
	var b uint8
	for _, f := range flags {
		bit := uint8(mbOther)
		for _, n := range mbFlagNames {
			if strings.EqualFold(f, n.name) {
				bit = n.bit
			}
		}
		b |= bit
	}
	return b
}

func mbFlagText(b uint8) string {
	var out []string
	for _, n := range mbFlagNames {
		if b&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	if b&mbOther != 0 {
		out = append(out, "?other")
	}
	return strings.Join(out, " ")
}

func mbMsgsText(ms []mbMsg) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, m := range ms {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d:%s(%s)", m.uid, m.sha[:8], mbFlagText(m.flags))
	}
	b.WriteByte(']')
	return b.String()
}

func mbFind(ms []mbMsg, uid uint32) int {
	for i, m := range ms {
		if m.uid == uid {
			return i
		}
	}
	return -1
}

// mailboxModel is a user's INBOX. Partitioned by user: users' mailboxes are
// independent, so each user's history is checked on its own.
//
// UIDs: storage.Tx.AppendMessage gives a message the mailbox's UIDNEXT and
// increments it, and nothing else moves UIDNEXT; only this test's APPENDs
// add to these INBOXes. So an APPEND's UID must be exactly one more than
// the highest UID assigned before it (a stricter check than "greater"; a
// message stored and then lost leaves a gap, which fails it too).
var mailboxModel = porcupine.Model{
	Partition: partitionBy(func(op porcupine.Operation) string { return op.Input.(mbInput).user }),
	Init:      func() any { return mbState{} },
	Step: func(state, input, output any) (bool, any) {
		st, in := state.(mbState), input.(mbInput)
		switch in.kind {
		case mbAppend:
			uid := output.(uint32)
			if uid != st.max+1 {
				return false, st
			}
			msgs := append(append(make([]mbMsg, 0, len(st.msgs)+1), st.msgs...), mbMsg{uid: uid, sha: in.sha})
			return true, mbState{max: uid, msgs: msgs}
		case mbStore:
			i := mbFind(st.msgs, in.uid)
			if i < 0 {
				return true, st // UID STORE of a UID not (or no longer) there: no effect
			}
			msgs := append([]mbMsg{}, st.msgs...)
			if in.add {
				msgs[i].flags |= in.flag
			} else {
				msgs[i].flags &^= in.flag
			}
			return true, mbState{max: st.max, msgs: msgs}
		case mbExpunge:
			// UID EXPUNGE removes the message only if it is \Deleted.
			i := mbFind(st.msgs, in.uid)
			if i < 0 || st.msgs[i].flags&mbDeleted == 0 {
				return true, st
			}
			msgs := append(append(make([]mbMsg, 0, len(st.msgs)-1), st.msgs[:i]...), st.msgs[i+1:]...)
			return true, mbState{max: st.max, msgs: msgs}
		default: // mbList: exactly the state's messages, UIDs and flags
			got := output.([]mbMsg)
			if len(got) != len(st.msgs) {
				return false, st
			}
			for i := range got {
				if got[i] != st.msgs[i] {
					return false, st
				}
			}
			return true, st
		}
	},
	Equal: func(a, b any) bool {
		x, y := a.(mbState), b.(mbState)
		if x.max != y.max || len(x.msgs) != len(y.msgs) {
			return false
		}
		for i := range x.msgs {
			if x.msgs[i] != y.msgs[i] {
				return false
			}
		}
		return true
	},
	DescribeOperation: func(input, output any) string {
		in := input.(mbInput)
		switch in.kind {
		case mbAppend:
			uid := "?"
			if output != nil {
				uid = fmt.Sprint(output.(uint32))
			}
			return fmt.Sprintf("%s: append %s -> uid %s", in.user, in.sha[:8], uid)
		case mbStore:
			sign := "-"
			if in.add {
				sign = "+"
			}
			return fmt.Sprintf("%s: uid store %d %sflags %s", in.user, in.uid, sign, mbFlagText(in.flag))
		case mbExpunge:
			return fmt.Sprintf("%s: uid expunge %d", in.user, in.uid)
		default:
			return fmt.Sprintf("%s: list -> %s", in.user, mbMsgsText(output.([]mbMsg)))
		}
	},
	DescribeState: func(state any) string {
		st := state.(mbState)
		return fmt.Sprintf("max uid %d %s", st.max, mbMsgsText(st.msgs))
	},
}

// listInbox is the admin API's listing of user's INBOX through node n, a
// linearizable read (ReadIndex), as the model sees it.
func listInbox(n *harness.Node, user string) ([]mbMsg, error) {
	var ms []admin.Message
	if err := n.API("GET", "/v1/users/"+user+"/messages?mailbox=INBOX", nil, &ms); err != nil {
		return nil, err
	}
	out := make([]mbMsg, 0, len(ms))
	for _, m := range ms {
		out = append(out, mbMsg{uid: m.UID, sha: m.SHA256, flags: mbFlagBits(m.Flags)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].uid < out[j].uid })
	return out, nil
}

// mbDial opens an IMAP session of user on node n with INBOX selected.
func mbDial(n *harness.Node, user string) (*imapclient.Client, error) {
	c, err := imapclient.DialStartTLS(n.Addr(harness.IMAPPort), &imapclient.Options{
		TLSConfig: &tls.Config{InsecureSkipVerify: true},
		Dialer:    &net.Dialer{Timeout: 2 * time.Second},
	})
	if err != nil {
		return nil, err
	}
	guard := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer guard.Stop()
	if err := c.Login(user, "pw-"+user).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// TestMailboxOperationsAreLinearizable drives IMAP APPENDs, flag STOREs and
// EXPUNGEs through every node, and the admin API's linearizable listing of
// the INBOX, while the leader is killed and, later, a new leader is cut
// off; porcupine then checks that the history of each mailbox is
// linearizable: every listing holds exactly the messages, UIDs and flags of
// the acknowledged writes before it (and maybe of writes in flight), UIDs
// are assigned in order without gaps, nothing acknowledged is lost.
func TestMailboxOperationsAreLinearizable(t *testing.T) {
	// Many mailboxes keep each one's history small for the checker.
	c, users := linearizabilityCluster(t, "m", 6)

	const clients = 6
	failures := map[string]int{}
	var (
		mu sync.Mutex
		// ops are the operations with a known outcome or, for
		// STORE/EXPUNGE, an unknown one; pending are APPENDs of unknown
		// outcome, resolved from the final listing.
		ops, pending []porcupine.Operation
		// refused are the messages whose APPEND was answered NO
		// [UNAVAILABLE], which promises the write was not accepted.
		refused = map[string]string{}
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	fail := func(kind string, err error) {
		mu.Lock()
		failures[kind+": "+trimErr(err)]++
		mu.Unlock()
	}
	for client := 0; client < clients; client++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(client), 11))
			n := c.Nodes[client%len(c.Nodes)]
			// Each client writes to three mailboxes and each mailbox has
			// three writers, one on every node (client, client+2, client+4
			// are distinct mod 3).
			own := []string{users[client], users[(client+2)%len(users)], users[(client+4)%len(users)]}
			sessions := map[string]*imapclient.Client{}
			defer func() {
				for _, s := range sessions {
					s.Close()
				}
			}()
			// known are the UIDs this client appended, acknowledged, and
			// has not expunged nor touched with an unknown outcome: only
			// those it STOREs on and EXPUNGEs.
			known := map[string][]uint32{}
			forget := func(user string, uid uint32) {
				k := known[user]
				for i, u := range k {
					if u == uid {
						known[user] = append(k[:i:i], k[i+1:]...)
						return
					}
				}
			}
			record := func(op porcupine.Operation) {
				mu.Lock()
				ops = append(ops, op)
				mu.Unlock()
			}
			// run runs one IMAP command on the session, bounded in time:
			// a session that does not answer is closed (outcome unknown).
			run := func(user string, s *imapclient.Client, f func() error) error {
				guard := time.AfterFunc(3*time.Second, func() { s.Close() })
				err := f()
				guard.Stop()
				if err != nil {
					s.Close()
					delete(sessions, user)
				}
				return err
			}
			seq := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				if !n.Running() {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if rng.IntN(5) < 2 {
					user := users[rng.IntN(len(users))]
					op := porcupine.Operation{ClientId: client, Call: now()}
					got, err := listInbox(n, user)
					op.Return = now()
					if err != nil {
						continue // a failed read tells nothing
					}
					op.Input, op.Output = mbInput{user: user, kind: mbList}, got
					record(op)
					continue
				}
				user := own[rng.IntN(len(own))]
				s := sessions[user]
				if s != nil {
					select {
					case <-s.Closed(): // dropped between commands: nothing sent
						s.Close()
						s = nil
					default:
					}
				}
				if s == nil {
					var err error
					if s, err = mbDial(n, user); err != nil {
						time.Sleep(20 * time.Millisecond)
						continue // no session, nothing sent
					}
					sessions[user] = s
				}
				k := known[user]
				switch {
				case len(k) >= 4 || (len(k) > 0 && rng.IntN(6) == 0):
					// Delete the oldest: STORE +FLAGS.SILENT \Deleted, then
					// UID EXPUNGE of that UID, two writes, two operations.
					uid := k[0]
					forget(user, uid)
					set := goimap.UIDSetNum(goimap.UID(uid))
					op := porcupine.Operation{ClientId: client, Call: now(),
						Input: mbInput{user: user, kind: mbStore, uid: uid, flag: mbDeleted, add: true}}
					err := run(user, s, func() error {
						return s.Store(set, &goimap.StoreFlags{Op: goimap.StoreFlagsAdd, Silent: true, Flags: []goimap.Flag{goimap.FlagDeleted}}, nil).Close()
					})
					op.Return = now()
					if err != nil {
						op.Return = math.MaxInt64
						fail("store", err)
						record(op)
						continue // never expunge what may not be \Deleted
					}
					record(op)
					op = porcupine.Operation{ClientId: client, Call: now(), Input: mbInput{user: user, kind: mbExpunge, uid: uid}}
					err = run(user, s, func() error {
						_, err := s.UIDExpunge(set).Collect()
						return err
					})
					op.Return = now()
					if err != nil {
						op.Return = math.MaxInt64
						fail("expunge", err)
					}
					record(op)
				case len(k) > 0 && rng.IntN(2) == 0:
					uid := k[rng.IntN(len(k))]
					fl := mbFlagNames[rng.IntN(2)]
					add := rng.IntN(2) == 0
					sop := goimap.StoreFlagsDel
					if add {
						sop = goimap.StoreFlagsAdd
					}
					op := porcupine.Operation{ClientId: client, Call: now(),
						Input: mbInput{user: user, kind: mbStore, uid: uid, flag: fl.bit, add: add}}
					err := run(user, s, func() error {
						return s.Store(goimap.UIDSetNum(goimap.UID(uid)), &goimap.StoreFlags{Op: sop, Silent: true, Flags: []goimap.Flag{goimap.Flag(fl.name)}}, nil).Close()
					})
					op.Return = now()
					if err != nil {
						// It may take effect any time later: leave the
						// message alone from now on.
						op.Return = math.MaxInt64
						forget(user, uid)
						fail("store", err)
					}
					record(op)
				default:
					seq++
					body := fmt.Sprintf("From: Tester <tester@example.net>\r\nTo: %s\r\nSubject: lin %d.%d\r\nMessage-Id: <lin-%d-%d@example.net>\r\n\r\nMessage %d of client %d, %s.\r\n",
						user, client, seq, client, seq, seq, client, n.ID)
					sum := sha256.Sum256([]byte(body))
					sha := hex.EncodeToString(sum[:])
					op := porcupine.Operation{ClientId: client, Call: now(), Input: mbInput{user: user, kind: mbAppend, sha: sha}}
					var data *goimap.AppendData
					err := run(user, s, func() error {
						cmd := s.Append("INBOX", int64(len(body)), nil)
						_, werr := cmd.Write([]byte(body))
						cerr := cmd.Close()
						var err error
						data, err = cmd.Wait()
						return errors.Join(err, werr, cerr)
					})
					op.Return = now()
					if err == nil && data.UID == 0 {
						err = errors.New("no APPENDUID")
					}
					if err != nil {
						var ie *goimap.Error
						mu.Lock()
						if errors.As(err, &ie) && ie.Code == "UNAVAILABLE" {
							refused[sha] = user
						}
						pending = append(pending, op)
						mu.Unlock()
						fail("append", err)
						continue
					}
					op.Output = uint32(data.UID)
					known[user] = append(known[user], uint32(data.UID))
					record(op)
				}
			}
		}()
	}

	linearizabilityFaults(t, c, start)
	close(stop)
	wg.Wait()
	t.Logf("%6.1fs workload done", time.Since(start).Seconds())

	// The final listings, linearizable reads after everything, are in the
	// history too. They resolve the APPENDs of unknown outcome: a message
	// there was stored (no client expunges a message it has no UID of), its
	// UID is the APPEND's output and the APPEND may have taken effect any
	// time after its call; a message not there was not stored (or will
	// be, after every operation here): the APPEND is left out.
	leader := c.WaitLeader(30 * time.Second)
	final := map[string]mbMsg{}
	for _, u := range users {
		var got []mbMsg
		op := porcupine.Operation{ClientId: clients}
		harness.Eventually(t, 30*time.Second, "final listing of "+u, func() error {
			var err error
			op.Call = now()
			got, err = listInbox(leader, u)
			op.Return = now()
			return err
		})
		op.Input, op.Output = mbInput{user: u, kind: mbList}, got
		ops = append(ops, op)
		for _, m := range got {
			final[m.sha] = m
		}
	}
	resolved := 0
	for _, op := range pending {
		in := op.Input.(mbInput)
		m, ok := final[in.sha]
		if user, no := refused[in.sha]; no && ok {
			t.Errorf("APPEND to %s answered NO [UNAVAILABLE] (not accepted), yet stored as UID %d", user, m.uid)
		}
		if !ok {
			continue
		}
		op.Output, op.Return = m.uid, math.MaxInt64
		ops = append(ops, op)
		resolved++
	}

	sort.Slice(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	var appends, flagStores, deletes, expunges, lists, nonEmpty, unknown int
	for _, op := range ops {
		in := op.Input.(mbInput)
		if op.Return == math.MaxInt64 {
			unknown++
		}
		switch in.kind {
		case mbAppend:
			appends++
		case mbStore:
			if in.flag == mbDeleted {
				deletes++
			} else {
				flagStores++
			}
		case mbExpunge:
			expunges++
		case mbList:
			lists++
			if len(op.Output.([]mbMsg)) > 0 {
				nonEmpty++
			}
		}
	}
	t.Logf("%d appends (%d of unknown outcome: %d stored, %d not), %d flag stores, %d \\Deleted stores, %d expunges, %d listings (%d not empty); %d operations of unknown outcome in all",
		appends, len(pending), resolved, len(pending)-resolved, flagStores, deletes, expunges, lists, nonEmpty, unknown)
	for msg, n := range failures {
		t.Logf("failures: %d x %s", n, msg)
	}
	if appends < 100 || lists < 100 || nonEmpty < 50 || flagStores < 30 || expunges < 20 {
		t.Fatalf("too few operations to judge: %d appends, %d listings (%d not empty), %d flag stores, %d expunges",
			appends, lists, nonEmpty, flagStores, expunges)
	}
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(mailboxModel, ops, 2*time.Minute)
	t.Logf("porcupine: %s in %v", res, time.Since(checkStart).Round(time.Millisecond))
	if res != porcupine.Ok {
		path := t.TempDir() + "/mailbox-linearizability.html"
		_ = porcupine.VisualizePath(mailboxModel, info, path)
		t.Fatalf("mailbox history is not linearizable (%s); visualization in %s", res, path)
	}
	verifyClean(t, c.WaitLeader(30*time.Second), 3)
}
