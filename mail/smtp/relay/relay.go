// Package relay holds the cluster-wide relay policy of the SMTP listeners:
// who may send mail through Flotilla to domains that are not its own. The
// settings live in the replicated store (key SettingKey) as JSON, so every
// node applies the same policy; the admin API and `flotilla relay` set them.
//
// Flotilla is never an open relay: every mode requires either an
// authenticated user or a trusted client address, and "none" refuses all.
package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// SettingKey is the key of the relay settings in the replicated store.
const SettingKey = "relay"

// Mode says who may relay.
type Mode string

const (
	// LocalHosts: only clients connecting from a trusted address.
	LocalHosts Mode = "local-hosts"
	// LocalUsers: only authenticated users (the default).
	LocalUsers Mode = "local-users"
	// Listed: authenticated users and clients from a trusted address.
	Listed Mode = "listed"
	// None: nobody; mail goes only to local recipients.
	None Mode = "none"
)

// Modes lists the valid modes.
var Modes = []Mode{LocalHosts, LocalUsers, Listed, None}

// Settings is the relay policy.
type Settings struct {
	Mode Mode `json:"mode"`
	// Trusted are IP addresses, CIDR networks and host names (resolved when
	// checked) whose clients may relay in modes LocalHosts and Listed.
	Trusted []string `json:"trusted"`
}

// Default is the policy of a cluster that never set one.
func Default() Settings { return Settings{Mode: LocalUsers, Trusted: []string{}} }

// ErrInvalid marks settings that cannot be used.
var ErrInvalid = errors.New("invalid relay settings")

// Parse reads stored settings; nil or empty is Default.
func Parse(b []byte) (Settings, error) {
	if len(b) == 0 {
		return Default(), nil
	}
	var s Settings
	if err := json.Unmarshal(b, &s); err != nil {
		return Default(), fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return s.Normalize()
}

// Normalize checks the settings and returns them in canonical form: networks
// masked, addresses and names lower-case, duplicates removed.
func (s Settings) Normalize() (Settings, error) {
	out := Settings{Mode: Mode(strings.ToLower(strings.TrimSpace(string(s.Mode)))), Trusted: []string{}}
	if out.Mode == "" {
		out.Mode = LocalUsers
	}
	known := false
	for _, m := range Modes {
		known = known || m == out.Mode
	}
	if !known {
		return Default(), fmt.Errorf("%w: mode %q: one of local-hosts, local-users, listed, none", ErrInvalid, s.Mode)
	}
	seen := map[string]bool{}
	for _, t := range s.Trusted {
		c, err := canonical(t)
		if err != nil {
			return Default(), err
		}
		if !seen[c] {
			seen[c] = true
			out.Trusted = append(out.Trusted, c)
		}
	}
	return out, nil
}

func canonical(t string) (string, error) {
	t = strings.ToLower(strings.TrimSpace(t))
	if p, err := netip.ParsePrefix(t); err == nil {
		return p.Masked().String(), nil
	}
	if a, err := netip.ParseAddr(t); err == nil {
		return a.Unmap().String(), nil
	}
	t = strings.TrimSuffix(t, ".")
	if !validHostname(t) {
		return "", fmt.Errorf("%w: trusted host %q is not an IP address, a network (CIDR) or a host name", ErrInvalid, t)
	}
	return t, nil
}

func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Marshal encodes settings for the store.
func (s Settings) Marshal() []byte {
	b, _ := json.Marshal(s)
	return b
}

// UsersMayRelay reports whether authenticated users may relay.
func (s Settings) UsersMayRelay() bool { return s.Mode == LocalUsers || s.Mode == Listed }

// HostsMayRelay reports whether trusted client addresses may relay.
func (s Settings) HostsMayRelay() bool {
	return (s.Mode == LocalHosts || s.Mode == Listed) && len(s.Trusted) > 0
}

// Resolver looks up host names; *net.Resolver is one.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
}

// Checker tells whether a client address is trusted, looking host names up
// at check time and keeping the answers for TTL (failures for a shorter
// while). It is safe for concurrent use.
type Checker struct {
	// Resolver resolves host names; nil is net.DefaultResolver.
	Resolver Resolver
	// TTL is how long an answer is kept; 0 means a minute.
	TTL time.Duration
	// Timeout bounds one lookup; 0 means 3 seconds.
	Timeout time.Duration

	mu    sync.Mutex
	cache map[string]cacheEntry
}

type cacheEntry struct {
	addrs   []netip.Addr
	expires time.Time
}

// Trusted reports whether ip is one of the settings' trusted hosts. It
// resolves host names only when no address or network matches.
func (c *Checker) Trusted(ctx context.Context, s Settings, ip netip.Addr) bool {
	ip = ip.Unmap()
	var names []string
	for _, t := range s.Trusted {
		if p, err := netip.ParsePrefix(t); err == nil {
			if p.Contains(ip) {
				return true
			}
			continue
		}
		if a, err := netip.ParseAddr(t); err == nil {
			if a == ip {
				return true
			}
			continue
		}
		names = append(names, t)
	}
	for _, n := range names {
		for _, a := range c.lookup(ctx, n) {
			if a == ip {
				return true
			}
		}
	}
	return false
}

func (c *Checker) lookup(ctx context.Context, name string) []netip.Addr {
	now := time.Now()
	c.mu.Lock()
	if e, ok := c.cache[name]; ok && now.Before(e.expires) {
		c.mu.Unlock()
		return e.addrs
	}
	c.mu.Unlock()

	r := c.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	ttl := c.TTL
	if ttl <= 0 {
		ttl = time.Minute
	}
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := r.LookupIPAddr(lctx, name)
	var addrs []netip.Addr
	for _, a := range res {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			addrs = append(addrs, ip.Unmap())
		}
	}
	if err != nil {
		ttl = min(ttl, 10*time.Second)
	}
	c.mu.Lock()
	if c.cache == nil {
		c.cache = map[string]cacheEntry{}
	}
	c.cache[name] = cacheEntry{addrs: addrs, expires: now.Add(ttl)}
	c.mu.Unlock()
	return addrs
}
