package cluster

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// Writes a follower forwards to the leader travel on one long-lived stream
// per leader, many in flight at once, instead of one HTTP request each.
// Profiles of writes through a follower showed net/http (its per-connection
// goroutines, header parsing, one TLS record per request) taking a fifth
// of both nodes' CPU; on the stream, the writes that queue up while one is
// written leave in one TLS record, and the leader answers in kind.
//
// The stream opens with the cluster port's protocol byte; the leader
// answers with that byte and its stream version. A node too old to know
// the stream closes the connection instead, and its followers use HTTP.
//
// Request:  length u32 | id u64 | flags u8 | entry
// Response: length u32 | id u64 | status u8 | index u64 | term u64 | body
//
// length counts the octets after itself. The body of an applied entry is
// its command.Response; of a failure, the error text.
const (
	forwardVersion = 1
	// maxStreamEntry: larger entries (messages with big attachments) go
	// over HTTP, each on its own connection, so that one long write does
	// not hold up the small ones queued behind it.
	maxStreamEntry    = 1 << 20
	maxRequestFrame   = 8 + 1 + maxStreamEntry
	maxResponseFrame  = 64 << 20
	requestHeaderLen  = 8 + 1
	responseHeaderLen = 8 + 1 + 8 + 8

	fwdCommitOnly byte = 1 // request flag: answer at commit, with the term

	fwdOK      byte = 0
	fwdNotSent byte = 1 // certainly not appended: not the leader, or it could not queue the entry
	fwdMaybe   byte = 2 // failed, but the entry may have been appended
)

// errNoStream: the peer does not speak the forwarding stream.
var errNoStream = errors.New("peer does not speak the forwarding stream")

// fwdResult is the leader's answer to one forwarded entry.
type fwdResult struct {
	status      byte
	index, term uint64
	body        []byte
	early       bool // known here before the leader answered
}

func appendRequest(b []byte, id uint64, flags byte, entry []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(requestHeaderLen+len(entry)))
	b = binary.BigEndian.AppendUint64(b, id)
	b = append(b, flags)
	return append(b, entry...)
}

func appendResponse(b []byte, id uint64, r fwdResult) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(responseHeaderLen+len(r.body)))
	b = binary.BigEndian.AppendUint64(b, id)
	b = append(b, r.status)
	b = binary.BigEndian.AppendUint64(b, r.index)
	b = binary.BigEndian.AppendUint64(b, r.term)
	return append(b, r.body...)
}

// readFrame reads one frame of at least min and at most max octets after
// its length.
func readFrame(r *bufio.Reader, min, max int) ([]byte, error) {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(l[:]))
	if n < min || n > max {
		return nil, fmt.Errorf("forwarding stream: frame of %d octets (%d to %d allowed)", n, min, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func readRequest(r *bufio.Reader) (id uint64, flags byte, entry []byte, err error) {
	b, err := readFrame(r, requestHeaderLen, maxRequestFrame)
	if err != nil {
		return 0, 0, nil, err
	}
	return binary.BigEndian.Uint64(b), b[8], b[requestHeaderLen:], nil
}

func readResponse(r *bufio.Reader) (uint64, fwdResult, error) {
	b, err := readFrame(r, responseHeaderLen, maxResponseFrame)
	if err != nil {
		return 0, fwdResult{}, err
	}
	return binary.BigEndian.Uint64(b), fwdResult{status: b[8], index: binary.BigEndian.Uint64(b[9:]),
		term: binary.BigEndian.Uint64(b[17:]), body: b[responseHeaderLen:]}, nil
}

// ---- the follower's side ----

// streams holds a follower's forwarding streams, one per leader address.
type streams struct {
	dial   func(ctx context.Context, addr string) (net.Conn, error)
	mu     sync.Mutex
	conns  map[string]*stream
	old    map[string]time.Time // peers that refused the stream: HTTP until then
	closed bool
}

// oldPeerRetry is how long a peer that refused the stream is sent HTTP:
// in a rolling upgrade, it may be running the new build soon.
const oldPeerRetry = time.Minute

func newStreams(dial func(ctx context.Context, addr string) (net.Conn, error)) *streams {
	return &streams{dial: dial, conns: map[string]*stream{}, old: map[string]time.Time{}}
}

// get returns the stream to addr, opening it if need be. errNoStream
// means the peer is too old for it; any error means nothing was sent.
func (s *streams) get(ctx context.Context, addr string) (*stream, error) {
	s.mu.Lock()
	if st := s.conns[addr]; st != nil {
		s.mu.Unlock()
		return st, nil
	}
	if until, ok := s.old[addr]; ok && time.Now().Before(until) {
		s.mu.Unlock()
		return nil, errNoStream
	}
	s.mu.Unlock()
	conn, err := s.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if err := readHello(conn); err != nil {
		conn.Close()
		if errors.Is(err, errNoStream) {
			s.mu.Lock()
			s.old[addr] = time.Now().Add(oldPeerRetry)
			s.mu.Unlock()
		}
		return nil, fmt.Errorf("forwarding stream to %s: %w", addr, err)
	}
	st := &stream{conn: conn, out: make(chan []byte, 256), pending: map[uint64]chan fwdResult{}, dead: make(chan struct{})}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		st.close(net.ErrClosed)
		return nil, net.ErrClosed
	}
	if cur := s.conns[addr]; cur != nil { // another caller opened one meanwhile
		s.mu.Unlock()
		st.close(nil)
		return cur, nil
	}
	s.conns[addr] = st
	delete(s.old, addr)
	s.mu.Unlock()
	go st.writeLoop()
	go func() {
		st.readLoop()
		s.mu.Lock()
		if s.conns[addr] == st {
			delete(s.conns, addr)
		}
		s.mu.Unlock()
	}()
	return st, nil
}

// readHello reads the leader's greeting; a connection closed instead is
// an older node's answer to an unknown protocol byte.
func readHello(conn net.Conn) error {
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	var b [2]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errNoStream
		}
		return err
	}
	if b[0] != protoForward || b[1] != forwardVersion {
		return fmt.Errorf("%w: greeting %q", errNoStream, b[:])
	}
	return nil
}

func (s *streams) close() {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = map[string]*stream{}
	s.mu.Unlock()
	for _, st := range conns {
		st.close(net.ErrClosed)
	}
}

// stream is one forwarding connection to a leader.
type stream struct {
	conn    net.Conn
	out     chan []byte // request frames, written by writeLoop
	heard   atomic.Int64
	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan fwdResult
	err     error // why the stream died
	dead    chan struct{}
	once    sync.Once
}

// call forwards one entry and waits for the leader's answer, or for early:
// the entry's position, should this node learn first that it is committed
// (see provenTerm); the leader's answer is then dropped when it comes. sent
// says whether the entry may have reached the leader.
func (st *stream) call(ctx context.Context, entry []byte, flags byte, early <-chan position) (res fwdResult, sent bool, err error) {
	ch := make(chan fwdResult, 1)
	st.mu.Lock()
	if st.err != nil {
		st.mu.Unlock()
		return res, false, st.err
	}
	st.next++
	id := st.next
	st.pending[id] = ch
	st.mu.Unlock()
	heard := st.heard.Load()
	select {
	case st.out <- appendRequest(make([]byte, 0, 4+requestHeaderLen+len(entry)), id, flags, entry):
	case <-st.dead:
		st.forget(id)
		return res, false, st.cause()
	case <-ctx.Done():
		st.forget(id)
		return res, false, ctx.Err()
	}
	select {
	case res = <-ch:
		return res, true, nil
	case p := <-early:
		return fwdResult{status: fwdOK, index: p.index, term: p.term, early: true}, true, nil
	case <-st.dead:
		return res, true, st.cause()
	case <-ctx.Done():
		st.forget(id)
		// A stream that has answered nothing since is presumed stuck
		// (the leader was cut off): the next write opens a new one.
		if st.heard.Load() == heard {
			st.close(errors.New("forwarding stream: no answer from the leader"))
		}
		return res, true, ctx.Err()
	}
}

func (st *stream) forget(id uint64) {
	st.mu.Lock()
	delete(st.pending, id)
	st.mu.Unlock()
}

func (st *stream) cause() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.err
}

func (st *stream) close(err error) {
	st.once.Do(func() {
		if err == nil {
			err = net.ErrClosed
		}
		st.mu.Lock()
		st.err = err
		st.mu.Unlock()
		close(st.dead)
		st.conn.Close()
	})
}

// writeLoop writes queued requests, flushing once the queue is empty, so
// that writes arriving together leave together.
func (st *stream) writeLoop() {
	w := bufio.NewWriterSize(st.conn, 64<<10)
	for {
		select {
		case <-st.dead:
			return
		case f := <-st.out:
			if _, err := w.Write(f); err != nil {
				st.close(fmt.Errorf("forwarding stream: %w", err))
				return
			}
			if len(st.out) == 0 {
				_ = st.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := w.Flush(); err != nil {
					st.close(fmt.Errorf("forwarding stream: %w", err))
					return
				}
			}
		}
	}
}

func (st *stream) readLoop() {
	r := bufio.NewReaderSize(st.conn, 64<<10)
	for {
		id, res, err := readResponse(r)
		if err != nil {
			st.close(fmt.Errorf("forwarding stream: %w", err))
			return
		}
		st.heard.Add(1)
		st.mu.Lock()
		ch := st.pending[id]
		delete(st.pending, id)
		st.mu.Unlock()
		if ch != nil {
			ch <- res
		}
	}
}

// ---- the leader's side ----

// forwardServer answers forwarding streams.
type forwardServer struct {
	answer func(ctx context.Context, entry []byte, flags byte) fwdResult
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newForwardServer(answer func(ctx context.Context, entry []byte, flags byte) fwdResult) *forwardServer {
	return &forwardServer{answer: answer, conns: map[net.Conn]struct{}{}}
}

// serve accepts streams until l is closed.
func (s *forwardServer) serve(l net.Listener) {
	for {
		conn, err := l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			conn.Close()
			return
		}
		s.conns[conn] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			s.serveConn(conn)
			s.mu.Lock()
			delete(s.conns, conn)
			s.mu.Unlock()
		}()
	}
}

// serveConn answers one stream: each request in its own goroutine, since
// commits finish in any order, and answers flushed once none is queued.
func (s *forwardServer) serveConn(conn net.Conn) {
	defer conn.Close()
	if _, err := conn.Write([]byte{protoForward, forwardVersion}); err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := make(chan []byte, 256)
	written := make(chan struct{})
	go func() {
		defer close(written)
		w := bufio.NewWriterSize(conn, 64<<10)
		failed := false
		for f := range out {
			if failed {
				continue
			}
			_, err := w.Write(f)
			if err == nil && len(out) == 0 {
				_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				err = w.Flush()
			}
			if err != nil {
				failed = true
				cancel()
				conn.Close()
			}
		}
	}()
	var answering sync.WaitGroup
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		id, flags, entry, err := readRequest(r)
		if err != nil {
			break
		}
		answering.Add(1)
		go func() {
			defer answering.Done()
			frame := appendResponse(nil, id, s.answer(ctx, entry, flags))
			select {
			case out <- frame:
			case <-ctx.Done():
			}
		}()
	}
	// The follower has gone: its waiting writes are abandoned, as an HTTP
	// request's are when its connection closes.
	cancel()
	answering.Wait()
	close(out)
	<-written
}

func (s *forwardServer) close() {
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// answerForward commits (or applies) a forwarded entry as the leader.
func (n *Node) answerForward(ctx context.Context, entry []byte, flags byte) fwdResult {
	if n.raft.State() != raft.Leader {
		return fwdResult{status: fwdNotSent, body: []byte("not the leader")}
	}
	fail := func(err error) fwdResult {
		st := fwdMaybe
		if notAppended(err) {
			st = fwdNotSent
		}
		return fwdResult{status: st, body: []byte(err.Error())}
	}
	if flags&fwdCommitOnly != 0 {
		idx, term, err := n.commitAsLeader(ctx, entry)
		if err != nil {
			return fail(err)
		}
		return fwdResult{index: idx, term: term}
	}
	idx, resp, err := n.applyAsLeader(ctx, entry)
	if err != nil {
		return fail(err)
	}
	return fwdResult{index: idx, body: resp.Marshal()}
}
