package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// forwardPair runs a forwardServer with answer on a loopback listener and
// returns streams that dial it.
func forwardPair(t *testing.T, answer func(ctx context.Context, entry []byte, flags byte) fwdResult) (*streams, *forwardServer, string, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newForwardServer(answer)
	done := make(chan struct{})
	go func() { defer close(done); srv.serve(ln) }()
	dials := &atomic.Int32{}
	s := newStreams(func(ctx context.Context, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	t.Cleanup(func() {
		s.close()
		ln.Close()
		<-done
		srv.close()
	})
	return s, srv, ln.Addr().String(), dials
}

// Many writes share one connection; the leader answers them in whatever
// order they commit, and each caller gets its own answer.
func TestForwardStreamAnswersWritesInAnyOrder(t *testing.T) {
	const writes = 64
	gates := make([]chan struct{}, writes)
	for i := range gates {
		gates[i] = make(chan struct{})
	}
	var arrived sync.WaitGroup
	arrived.Add(writes)
	s, _, addr, dials := forwardPair(t, func(ctx context.Context, entry []byte, flags byte) fwdResult {
		i := int(binary.BigEndian.Uint32(entry))
		arrived.Done()
		<-gates[i]
		if flags&fwdCommitOnly != 0 {
			return fwdResult{index: uint64(1000 + i), term: 7}
		}
		return fwdResult{index: uint64(1000 + i), body: append([]byte("answer to "), entry...)}
	})
	errs := make(chan error, writes)
	for i := 0; i < writes; i++ {
		go func() {
			st, err := s.get(context.Background(), addr)
			if err != nil {
				errs <- err
				return
			}
			entry := binary.BigEndian.AppendUint32(nil, uint32(i))
			flags := byte(0)
			if i%2 == 1 {
				flags = fwdCommitOnly
			}
			res, sent, err := st.call(context.Background(), entry, flags, nil)
			switch {
			case err != nil || !sent:
				errs <- fmt.Errorf("write %d: sent %v, %v", i, sent, err)
			case res.status != fwdOK || res.index != uint64(1000+i):
				errs <- fmt.Errorf("write %d got status %d index %d", i, res.status, res.index)
			case flags == 0 && !bytes.Equal(res.body, append([]byte("answer to "), entry...)):
				errs <- fmt.Errorf("write %d got body %q", i, res.body)
			case flags != 0 && res.term != 7:
				errs <- fmt.Errorf("write %d got term %d", i, res.term)
			default:
				errs <- nil
			}
		}()
	}
	arrived.Wait() // all in flight at once
	for i := writes - 1; i >= 0; i-- {
		close(gates[i])
	}
	for i := 0; i < writes; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	// Concurrent first writes may each dial; one stream is kept.
	s.mu.Lock()
	open := len(s.conns)
	s.mu.Unlock()
	if open != 1 || dials.Load() < 1 {
		t.Fatalf("%d streams open after %d dials", open, dials.Load())
	}
}

// A node from before the stream closes the connection at the unknown
// protocol byte: the follower is told to use HTTP, and does not dial that
// peer again for a while.
func TestForwardStreamOldPeerMeansHTTP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dials := 0
	s := newStreams(func(ctx context.Context, addr string) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	defer s.close()
	for i := 0; i < 3; i++ {
		if _, err := s.get(context.Background(), ln.Addr().String()); !errors.Is(err, errNoStream) {
			t.Fatalf("get %d: %v, want errNoStream", i, err)
		}
	}
	if dials != 1 {
		t.Fatalf("%d dials to an old peer, want 1", dials)
	}
}

// When the stream dies under a write, the caller learns that the entry
// may have been sent (so it retries under the same request ID), and the
// next write opens a new stream.
func TestForwardStreamDeathIsUncertainAndRedials(t *testing.T) {
	var srv *forwardServer
	s, srv, addr, dials := forwardPair(t, func(ctx context.Context, entry []byte, flags byte) fwdResult {
		if string(entry) == "die" {
			srv.mu.Lock()
			for c := range srv.conns {
				c.Close()
			}
			srv.mu.Unlock()
			<-ctx.Done()
		}
		return fwdResult{index: 1, body: entry}
	})
	st, err := s.get(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, sent, err := st.call(context.Background(), []byte("die"), 0, nil); err == nil || !sent {
		t.Fatalf("write on a dying stream: sent %v, err %v; want sent and an error", sent, err)
	}
	// The dead stream refuses new writes as certainly unsent.
	if _, sent, err := st.call(context.Background(), []byte("x"), 0, nil); err == nil || sent {
		t.Fatalf("write on a dead stream: sent %v, err %v", sent, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st2, err := s.get(context.Background(), addr)
		if err != nil {
			t.Fatal(err)
		}
		if st2 != st {
			res, _, err := st2.call(context.Background(), []byte("again"), 0, nil)
			if err != nil || string(res.body) != "again" {
				t.Fatalf("after redial: %q, %v", res.body, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dead stream is still handed out")
		}
		time.Sleep(time.Millisecond)
	}
	if dials.Load() != 2 {
		t.Fatalf("%d dials, want 2", dials.Load())
	}
}

// A write abandoned on a stream that has answered nothing since it was
// sent closes the stream: the leader may be cut off, and a stuck TCP
// connection would swallow every later write.
func TestForwardStreamSilentLeaderIsDropped(t *testing.T) {
	release := make(chan struct{})
	s, _, addr, _ := forwardPair(t, func(ctx context.Context, entry []byte, flags byte) fwdResult {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return fwdResult{}
	})
	defer close(release)
	st, err := s.get(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, sent, err := st.call(ctx, []byte("x"), 0, nil); !errors.Is(err, context.DeadlineExceeded) || !sent {
		t.Fatalf("abandoned write: sent %v, %v", sent, err)
	}
	select {
	case <-st.dead:
	case <-time.After(10 * time.Second):
		t.Fatal("the silent stream was kept")
	}
}

// Frames written are read back as they were, and a frame of a length out
// of bounds is refused before anything is allocated for it.
func TestForwardFramesRoundTripAndBounds(t *testing.T) {
	var b []byte
	b = appendRequest(b, 42, fwdCommitOnly, []byte("entry"))
	b = appendResponse(b, 43, fwdResult{status: fwdMaybe, index: 9, term: 3, body: []byte("body")})
	r := bufio.NewReader(bytes.NewReader(b))
	id, flags, entry, err := readRequest(r)
	if err != nil || id != 42 || flags != fwdCommitOnly || string(entry) != "entry" {
		t.Fatalf("request: %d %d %q %v", id, flags, entry, err)
	}
	id, res, err := readResponse(r)
	if err != nil || id != 43 || res.status != fwdMaybe || res.index != 9 || res.term != 3 || string(res.body) != "body" {
		t.Fatalf("response: %d %+v %v", id, res, err)
	}
	huge := binary.BigEndian.AppendUint32(nil, maxRequestFrame+1)
	if _, _, _, err := readRequest(bufio.NewReader(bytes.NewReader(huge))); err == nil {
		t.Fatal("a request frame over the limit was accepted")
	}
	short := binary.BigEndian.AppendUint32(nil, 3)
	if _, _, err := readResponse(bufio.NewReader(bytes.NewReader(append(short, 1, 2, 3)))); err == nil {
		t.Fatal("a response frame shorter than its header was accepted")
	}
}

// The leader reads whatever a peer sends: frames must never panic it or
// make it allocate beyond the limit.
func FuzzForwardFrames(f *testing.F) {
	f.Add(appendRequest(nil, 1, 0, []byte("x")))
	f.Add(appendResponse(nil, 2, fwdResult{status: fwdOK, index: 5, term: 1, body: []byte("y")}))
	f.Add([]byte{0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for {
			_, _, entry, err := readRequest(r)
			if err != nil {
				break
			}
			if len(entry) > maxStreamEntry {
				t.Fatalf("entry of %d octets", len(entry))
			}
		}
		r = bufio.NewReader(bytes.NewReader(data))
		for {
			if _, _, err := readResponse(r); err != nil {
				break
			}
		}
	})
}
