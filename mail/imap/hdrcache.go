package imap

import (
	"container/list"
	"sync"

	"github.com/flotilla-mail/flotilla/storage"
)

// headerCache keeps the parsed header sections of message bodies, keyed by
// the body's hash. Bodies are immutable and content-addressed, so an entry
// never goes stale; it only saves decompressing and parsing a body again
// for ENVELOPE, BODY[HEADER...] and header SEARCH (Dovecot's cache file
// plays this part there). One cache serves all sessions of a server.
type headerCache struct {
	mu   sync.Mutex
	max  int64
	size int64
	m    map[storage.Hash]*list.Element
	lru  list.List
}

// cachedHeader is the header section at the start of a body blob (through
// the blank line) and its fields. A message's header is its prefix (trace
// fields, per recipient) followed by this.
type cachedHeader struct {
	hash   storage.Hash
	raw    []byte
	fields []headerField
}

// defaultHeaderCache is the memory the header cache may use.
const defaultHeaderCache = 64 << 20

func newHeaderCache(max int64) *headerCache {
	return &headerCache{max: max, m: map[storage.Hash]*list.Element{}}
}

func (c *headerCache) get(h storage.Hash) *cachedHeader {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[h]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*cachedHeader)
	}
	return nil
}

func (c *headerCache) put(ch *cachedHeader) {
	cost := int64(len(ch.raw)) + int64(len(ch.fields))*48 + 128
	if cost > c.max/16 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[ch.hash]; ok {
		return
	}
	c.m[ch.hash] = c.lru.PushFront(ch)
	c.size += cost
	for c.size > c.max {
		e := c.lru.Back()
		old := e.Value.(*cachedHeader)
		c.lru.Remove(e)
		delete(c.m, old.hash)
		c.size -= int64(len(old.raw)) + int64(len(old.fields))*48 + 128
	}
}

// messageHeader returns the header section of a message and its fields,
// from the cache when it can. buf is reused for the message when the body
// has to be read.
func (s *session) messageHeader(tx *storage.Tx, m *storage.Message) (hdr []byte, fields []headerField, err error) {
	c := s.srv.headers
	ch := c.get(m.Blob)
	if ch == nil {
		if s.msgBuf, err = tx.MessageBytes(storage.Message{Blob: m.Blob}, s.msgBuf); err != nil {
			return nil, nil, err
		}
		h, _ := splitHeader(s.msgBuf)
		raw := append([]byte(nil), h...)
		ch = &cachedHeader{hash: m.Blob, raw: raw, fields: headerFields(raw)}
		c.put(ch)
	}
	if len(m.Prefix) == 0 {
		return ch.raw, ch.fields, nil
	}
	hdr = append(append(make([]byte, 0, len(m.Prefix)+len(ch.raw)), m.Prefix...), ch.raw...)
	return hdr, append(headerFields(m.Prefix), ch.fields...), nil
}
