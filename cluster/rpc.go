package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Node-to-node RPC is plain HTTP over the cluster port's mutual TLS: small,
// debuggable, with connection reuse from net/http. Forwarded writes, the one
// RPC on the hot path, have their own stream (forward.go); only big ones and
// those to older leaders come here.

func (n *Node) rpcHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /internal/apply", n.handleApply)
	mux.HandleFunc("GET /internal/readindex", n.handleReadIndex)
	mux.HandleFunc("GET /internal/info", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, n.selfStatus()) })
	mux.HandleFunc("GET /internal/digest", n.handleDigest)
	mux.HandleFunc("POST /internal/blobs", n.handleBlobs)
	mux.HandleFunc("POST /internal/leadership", func(w http.ResponseWriter, r *http.Request) {
		replyErr(w, n.TransferLeadership(r.Context(), r.URL.Query().Get("to")))
	})
	mux.HandleFunc("POST /internal/remove", func(w http.ResponseWriter, r *http.Request) {
		replyErr(w, n.RemoveServer(r.Context(), r.URL.Query().Get("id")))
	})
	return mux
}

// The leader answers a forwarded write with the entry's index, and, once
// committed, its term (see fsm.hint).
const (
	headerIndex = "Flotilla-Index"
	headerTerm  = "Flotilla-Term"
)

// handleApply commits a forwarded entry; only the leader does.
func (n *Node) handleApply(w http.ResponseWriter, r *http.Request) {
	entry, err := io.ReadAll(io.LimitReader(r.Body, 1<<30))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if n.raft.State() != raft.Leader {
		http.Error(w, "not the leader", http.StatusMisdirectedRequest)
		return
	}
	if r.URL.Query().Get("commit") != "" {
		idx, term, err := n.commitAsLeader(r.Context(), entry)
		if err != nil {
			http.Error(w, err.Error(), applyStatus(err))
			return
		}
		w.Header().Set(headerIndex, strconv.FormatUint(idx, 10))
		w.Header().Set(headerTerm, strconv.FormatUint(term, 10))
		return
	}
	idx, resp, err := n.applyAsLeader(r.Context(), entry)
	if err != nil {
		http.Error(w, err.Error(), applyStatus(err))
		return
	}
	w.Header().Set(headerIndex, strconv.FormatUint(idx, 10))
	_, _ = w.Write(resp.Marshal())
}

// notAppended reports whether a leader's failure to append an entry means
// it certainly did not: it was no longer the leader, or could not queue it.
// Any other failure may come after the entry reached the log.
func notAppended(err error) bool {
	return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrEnqueueTimeout)
}

// applyStatus tells the forwarder whether the entry may have been appended:
// 421 certainly not (this node was not the leader, or could not queue it),
// 503 perhaps.
func applyStatus(err error) int {
	if notAppended(err) {
		return http.StatusMisdirectedRequest
	}
	return http.StatusServiceUnavailable
}

// forward sends an entry to the leader: on the forwarding stream, or over
// HTTP if it is big or the leader too old for the stream. A lost reply is
// retried by the caller with the same entry, which the state machine
// deduplicates. sent says whether the leader may have appended the entry.
//
// early, if not nil, delivers the entry's position should this node learn
// first that a write forwarded at commit is committed.
func (n *Node) forward(ctx context.Context, leader string, entry []byte, commitOnly bool, early <-chan position) (idx uint64, resp command.Response, sent bool, err error) {
	if len(entry) > maxStreamEntry {
		return n.forwardHTTP(ctx, leader, entry, commitOnly)
	}
	st, err := n.streams.get(ctx, leader)
	if errors.Is(err, errNoStream) {
		return n.forwardHTTP(ctx, leader, entry, commitOnly)
	}
	if err != nil {
		return 0, resp, false, err
	}
	var flags byte
	if commitOnly {
		flags = fwdCommitOnly
	}
	res, sent, err := st.call(ctx, entry, flags, early)
	if err != nil {
		return 0, resp, sent, fmt.Errorf("leader %s: %w", leader, err)
	}
	switch res.status {
	case fwdOK:
	case fwdNotSent:
		return 0, resp, false, fmt.Errorf("leader %s: %s", leader, res.body)
	default:
		return 0, resp, true, fmt.Errorf("leader %s: %s", leader, res.body)
	}
	if res.early {
		n.metrics.forwardedEarly.Inc()
	}
	if commitOnly {
		n.fsm.hint(res.index, res.term)
		return res.index, resp, true, nil
	}
	resp, err = command.UnmarshalResponse(res.body)
	return res.index, resp, true, err
}

// forwardHTTP is forward over HTTP, one request per entry.
func (n *Node) forwardHTTP(ctx context.Context, leader string, entry []byte, commitOnly bool) (idx uint64, resp command.Response, sent bool, err error) {
	n.metrics.forwardedHTTP.Inc()
	url := "https://" + leader + "/internal/apply"
	if commitOnly {
		url += "?commit=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(entry))
	if err != nil {
		return 0, resp, false, err
	}
	res, err := n.client.Do(req)
	if err != nil {
		// Only a connection that never opened certainly sent nothing.
		var de *dialError
		return 0, resp, !errors.As(err, &de), err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, resp, true, err
	}
	if res.StatusCode != http.StatusOK {
		return 0, resp, res.StatusCode != http.StatusMisdirectedRequest, fmt.Errorf("leader %s: %s", leader, bytes.TrimSpace(body))
	}
	idx, err = strconv.ParseUint(res.Header.Get(headerIndex), 10, 64)
	if err != nil {
		return 0, resp, true, fmt.Errorf("leader %s: bad index", leader)
	}
	if commitOnly {
		// Older leaders send no term; the entry is then applied when Raft
		// brings the commit index here.
		if term, err := strconv.ParseUint(res.Header.Get(headerTerm), 10, 64); err == nil && term > 0 {
			n.fsm.hint(idx, term)
		}
		return idx, resp, true, nil
	}
	resp, err = command.UnmarshalResponse(body)
	return idx, resp, true, err
}

func (n *Node) handleReadIndex(w http.ResponseWriter, r *http.Request) {
	if n.raft.State() != raft.Leader {
		http.Error(w, "not the leader", http.StatusMisdirectedRequest)
		return
	}
	idx, err := n.leaderReadIndex(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	// With a committed entry's term the follower can apply up to it from
	// its own log without waiting for Raft's next append (see fsm.hint).
	// Index may be beyond the commit (see leaderReadIndex); its term is
	// then withheld, since older followers take Term as a hint for Index.
	out := readIndexAnswer{Index: idx, Commit: n.raft.CommitIndex()}
	var l raft.Log
	if err := n.logs.GetLog(out.Commit, &l); err == nil {
		out.CommitTerm = l.Term
		switch {
		case idx == out.Commit: // the usual case when no write is in flight
			out.Term = l.Term
		case idx < out.Commit && n.logs.GetLog(idx, &l) == nil:
			out.Term = l.Term
		}
	}
	writeJSON(w, out)
}

// readIndexAnswer is the leader's answer to /internal/readindex: the index
// a read waits for, and the commit index, each with its entry's term for
// fsm.hint (0: none to give).
type readIndexAnswer struct {
	Index, Term        uint64
	Commit, CommitTerm uint64
}

// handleDigest answers with the digest this node recorded at a Digest
// entry, waiting a while for the entry to be applied here.
func (n *Node) handleDigest(w http.ResponseWriter, r *http.Request) {
	idx, err := strconv.ParseUint(r.URL.Query().Get("index"), 10, 64)
	if err != nil {
		http.Error(w, "bad index", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	if err := n.WaitApplied(ctx, idx); err != nil {
		http.Error(w, err.Error(), http.StatusGatewayTimeout)
		return
	}
	d, ok := n.fsm.digest(idx)
	if !ok {
		http.Error(w, fmt.Sprintf("no digest recorded at index %d (applied from a snapshot?)", idx), http.StatusNotFound)
		return
	}
	writeJSON(w, struct {
		Digest  []byte
		Applied uint64
	}{d, n.fsm.Applied()})
}

// handleBlobs streams the compressed bodies asked for that this node has:
// 32-byte hash, 4-byte length, bytes; repeated.
func (n *Node) handleBlobs(w http.ResponseWriter, r *http.Request) {
	var hashes []storage.Hash
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<24)).Decode(&hashes); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for _, h := range hashes {
		var b []byte
		_ = n.store.View(func(tx *storage.Tx) error {
			b, _ = tx.CompressedBlob(h)
			return nil
		})
		if b == nil {
			continue
		}
		var hdr [36]byte
		copy(hdr[:32], h[:])
		binary.BigEndian.PutUint32(hdr[32:], uint32(len(b)))
		if _, err := w.Write(hdr[:]); err != nil {
			return
		}
		if _, err := w.Write(b); err != nil {
			return
		}
	}
}

// fetchBlobs gets bodies from the other servers, each asked for what is
// still missing.
func (n *Node) fetchBlobs(ctx context.Context, missing []storage.Hash, put func(storage.Hash, []byte) error) error {
	want := map[storage.Hash]bool{}
	for _, h := range missing {
		want[h] = true
	}
	var lastErr error
	for id, addr := range n.peers() {
		if len(want) == 0 {
			break
		}
		var ask []storage.Hash
		for h := range want {
			ask = append(ask, h)
		}
		for len(ask) > 0 {
			batch := ask[:min(len(ask), 512)]
			ask = ask[len(batch):]
			if err := n.fetchFrom(ctx, addr, batch, func(h storage.Hash, b []byte) error {
				if !want[h] {
					return fmt.Errorf("peer %s sent a body not asked for", id)
				}
				delete(want, h)
				return put(h, b)
			}); err != nil {
				lastErr = fmt.Errorf("fetch bodies from %s: %w", id, err)
				n.log.Warn("body fetch failed", "peer", id, "err", err)
				break
			}
		}
	}
	if len(want) > 0 && lastErr != nil {
		return lastErr
	}
	return nil
}

func (n *Node) fetchFrom(ctx context.Context, addr string, hashes []storage.Hash, put func(storage.Hash, []byte) error) error {
	body, _ := json.Marshal(hashes)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+"/internal/blobs", bytes.NewReader(body))
	if err != nil {
		return err
	}
	res, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", res.Status)
	}
	for {
		var hdr [36]byte
		if _, err := io.ReadFull(res.Body, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		var h storage.Hash
		copy(h[:], hdr[:32])
		size := binary.BigEndian.Uint32(hdr[32:])
		if size > 1<<31 {
			return errors.New("body too large")
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(res.Body, b); err != nil {
			return err
		}
		if err := put(h, b); err != nil {
			return err
		}
	}
}

// peers returns the cluster addresses of the other nodes this one knows of:
// Raft's configuration and gossip (a node installing its first snapshot has
// no configuration yet).
func (n *Node) peers() map[string]string {
	out := map[string]string{}
	for id, m := range n.members.snapshot() {
		if m.alive && m.meta.Cluster != "" {
			out[id] = m.meta.Cluster
		}
	}
	for id, s := range n.servers() {
		out[id] = string(s.Address)
	}
	delete(out, n.cfg.NodeID)
	return out
}

// call makes a JSON RPC to another node.
func (n *Node) call(ctx context.Context, addr, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, body)
	if err != nil {
		return err
	}
	res, err := n.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s%s: %s", addr, path, bytes.TrimSpace(b))
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func replyErr(w http.ResponseWriter, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, struct{}{})
}
