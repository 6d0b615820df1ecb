package imap

import (
	"sort"

	"github.com/flotilla-mail/flotilla/storage"
)

// uidMap is a session's view of a selected mailbox: the UIDs it has
// announced, in order, so that message sequence number n is the n-th UID.
//
// It is kept as runs of consecutive UIDs with the count of messages before
// each run. UIDs are handed out in order and only expunges make holes, so a
// mailbox of 100,000 messages is typically a handful of runs: SELECT reads
// the keys-only UID index once (no message records), and both directions of
// the map are binary searches. The worst case (every other message
// expunged) is one run per message, 12 bytes each.
type uidMap struct {
	runs []storage.UIDRun
	cum  []uint32 // cum[i]: messages before runs[i]
	n    uint32
}

func newUIDMap(runs []storage.UIDRun) *uidMap {
	m := &uidMap{runs: runs}
	m.reindex()
	return m
}

func (m *uidMap) reindex() {
	m.cum = m.cum[:0]
	var n uint32
	for _, r := range m.runs {
		m.cum = append(m.cum, n)
		n += r.Count
	}
	m.n = n
}

// len is the number of messages (EXISTS).
func (m *uidMap) len() uint32 { return m.n }

// maxUID is the highest UID, 0 when empty.
func (m *uidMap) maxUID() uint32 {
	if len(m.runs) == 0 {
		return 0
	}
	r := m.runs[len(m.runs)-1]
	return r.First + r.Count - 1
}

// uid returns the UID of sequence number seq (1-based), 0 if out of range.
func (m *uidMap) uid(seq uint32) uint32 {
	if seq == 0 || seq > m.n {
		return 0
	}
	i := sort.Search(len(m.runs), func(i int) bool { return m.cum[i] >= seq }) - 1
	return m.runs[i].First + (seq - 1 - m.cum[i])
}

// seq returns the sequence number of uid, 0 if the map does not hold it.
func (m *uidMap) seq(uid uint32) uint32 {
	i := sort.Search(len(m.runs), func(i int) bool { return m.runs[i].First > uid }) - 1
	if i < 0 {
		return 0
	}
	r := m.runs[i]
	if uid >= r.First+r.Count {
		return 0
	}
	return m.cum[i] + (uid - r.First) + 1
}

// add appends a UID above every UID held.
func (m *uidMap) add(uid uint32) {
	if n := len(m.runs); n > 0 && m.runs[n-1].First+m.runs[n-1].Count == uid {
		m.runs[n-1].Count++
		m.n++
		return
	}
	m.runs = append(m.runs, storage.UIDRun{First: uid, Count: 1})
	m.cum = append(m.cum, m.n)
	m.n++
}

// remove takes out the given UIDs (sorted ascending; ones not held are
// ignored) and returns the sequence numbers they had, each as it was before
// the removal of any of them, ascending.
func (m *uidMap) remove(uids []uint32) []uint32 {
	var seqs []uint32
	var out []storage.UIDRun
	j := 0
	for i, r := range m.runs {
		end := r.First + r.Count // exclusive
		for j < len(uids) && uids[j] < r.First {
			j++
		}
		if j >= len(uids) || uids[j] >= end {
			out = append(out, r)
			continue
		}
		start := r.First
		for j < len(uids) && uids[j] < end {
			u := uids[j]
			if j > 0 && uids[j-1] == u {
				j++
				continue
			}
			seqs = append(seqs, m.cum[i]+(u-r.First)+1)
			if u > start {
				out = append(out, storage.UIDRun{First: start, Count: u - start})
			}
			start = u + 1
			j++
		}
		if start < end {
			out = append(out, storage.UIDRun{First: start, Count: end - start})
		}
	}
	m.runs = out
	m.reindex()
	return seqs
}

// each calls fn for the messages whose UIDs lie in [lo, hi], in order,
// until fn returns false.
func (m *uidMap) eachUID(lo, hi uint32, fn func(seq, uid uint32) bool) bool {
	i := sort.Search(len(m.runs), func(i int) bool { return m.runs[i].First+m.runs[i].Count > lo })
	for ; i < len(m.runs); i++ {
		r := m.runs[i]
		if r.First > hi {
			return true
		}
		u := max(r.First, lo)
		last := min(r.First+r.Count-1, hi)
		for ; u <= last; u++ {
			if !fn(m.cum[i]+(u-r.First)+1, u) {
				return false
			}
			if u == 0xffffffff {
				break
			}
		}
	}
	return true
}

// eachSeq calls fn for sequence numbers lo..hi (clamped to the map), in
// order, until fn returns false.
func (m *uidMap) eachSeq(lo, hi uint32, fn func(seq, uid uint32) bool) bool {
	if lo == 0 {
		lo = 1
	}
	hi = min(hi, m.n)
	if lo > hi {
		return true
	}
	i := sort.Search(len(m.runs), func(i int) bool { return m.cum[i] >= lo }) - 1
	seq := lo
	for ; i < len(m.runs) && seq <= hi; i++ {
		r := m.runs[i]
		for off := seq - 1 - m.cum[i]; off < r.Count && seq <= hi; off++ {
			if !fn(seq, r.First+off) {
				return false
			}
			seq++
		}
	}
	return true
}

// msgRef is one message a command addresses.
type msgRef struct{ seq, uid uint32 }

// errSeqRange: a sequence number beyond the mailbox (BAD [CLIENTBUG]).
var errSeqRange = &Error{Status: "BAD", Code: "CLIENTBUG", Text: "message sequence number out of range"}

// resolve turns a sequence set (byUID false) or UID set into the messages
// of the map it names, ascending and without duplicates. Sequence numbers
// beyond the mailbox are an error; UIDs that are not (or no longer) in the
// mailbox are skipped, as RFC 3501 says.
func (m *uidMap) resolve(set numSet, byUID bool) ([]msgRef, error) {
	star := m.n
	if byUID {
		star = m.maxUID()
	}
	ranges := make([]numRange, 0, len(set.ranges))
	for _, r := range set.ranges {
		lo, hi := r.lo, r.hi
		if lo == 0 {
			lo = star
		}
		if hi == 0 {
			hi = star
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		if !byUID && (hi > m.n || lo == 0) {
			return nil, errSeqRange
		}
		if lo == 0 { // "*" of an empty mailbox
			if hi == 0 {
				continue
			}
			lo = 1
		}
		ranges = append(ranges, numRange{lo, hi})
	}
	sort.Slice(ranges, func(i, j int) bool { return ranges[i].lo < ranges[j].lo })
	var out []msgRef
	next := uint32(0) // lowest value not yet covered
	for _, r := range ranges {
		lo := max(r.lo, next)
		if lo > r.hi {
			continue
		}
		add := func(seq, uid uint32) bool {
			out = append(out, msgRef{seq, uid})
			return len(out) <= maxMessagesPerCommand
		}
		if byUID {
			m.eachUID(lo, r.hi, add)
		} else {
			m.eachSeq(lo, r.hi, add)
		}
		if len(out) > maxMessagesPerCommand {
			return nil, &Error{Status: "NO", Code: "LIMIT", Text: "too many messages in one command"}
		}
		if r.hi == 0xffffffff {
			break
		}
		next = r.hi + 1
	}
	return out, nil
}

// maxMessagesPerCommand bounds the messages one command may name.
const maxMessagesPerCommand = 5_000_000
