package delivery

import (
	"encoding/binary"
	"hash/fnv"
)

// Owner picks the node that works on a key (a queue entry, a collection
// account) by rendezvous hashing: each node scores the key and the highest
// score wins. Every node computes the same owner from the same member list,
// and when a node leaves only its own keys move (to the runner-up), so the
// others' work is not reshuffled.
func Owner(key string, nodes []string) string {
	best, bestScore := "", uint64(0)
	for _, n := range nodes {
		s := score(n, key)
		if best == "" || s > bestScore || s == bestScore && n < best {
			best, bestScore = n, s
		}
	}
	return best
}

func score(node, key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node))
	h.Write([]byte{0})
	h.Write([]byte(key))
	// FNV's low bits mix poorly; a splitmix64 finaliser spreads them.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// entryKey is the rendezvous key of a queue entry.
func entryKey(id uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return "q" + string(b[:])
}
