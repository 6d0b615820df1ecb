package storage

import (
	"errors"
	"fmt"
	"strings"
)

// Recipient resolution: where mail for an address goes. An address of a
// local domain is, in this order,
//
//  1. a user, or an alias (expanded recursively: an alias may point at
//     users, other aliases and remote addresses);
//  2. with sub-addressing, "base+tag@domain": the user or alias
//     "base@domain" (an explicit user or alias with the "+" wins);
//  3. the domain's catch-all alias "@domain", when there is one.
//
// An address of another domain is remote and resolves to itself. Alias
// expansion stops at addresses it has already expanded (so loops end), at
// MaxAliasDepth levels and at MaxExpansion results.

// SubaddressSeparator separates the base of a local part from its tag.
const SubaddressSeparator = '+'

// Limits of alias expansion.
const (
	MaxAliasDepth = 20
	MaxExpansion  = 1000
)

// ErrDisabled: the address is a user whose account is disabled.
var ErrDisabled = errors.New("mailbox disabled")

// Resolved is where mail for one address goes.
type Resolved struct {
	// Address is the address as resolved: local part and domain lower-cased.
	Address string
	// Local is true when the domain is one of ours.
	Local bool
	// Users are the local accounts that receive the mail, each once, in the
	// order expansion found them. Disabled accounts are left out.
	Users []User
	// Remote are the addresses of other domains the mail goes on to: the
	// address itself when it is not local, or the remote targets of
	// aliases, each once.
	Remote []string
}

// Resolve finds where mail for address goes. A local address that leads to
// no account fails with ErrNotFound (ErrDisabled when it names a disabled
// account directly); a malformed address with ErrInvalid.
func (tx *Tx) Resolve(address string) (Resolved, error) {
	return tx.resolve(address, true)
}

// CanSendAs reports whether the user may use address as its envelope
// sender: its own address, a sub-address of it ("user+tag@domain"), or an
// alias (not a catch-all) that resolves to the user. Catch-alls do not
// count: they would let a user claim every unassigned address of a domain,
// including ones given to others later.
func (tx *Tx) CanSendAs(userID uint64, address string) (bool, error) {
	u, err := tx.UserByID(userID)
	if err != nil {
		return false, err
	}
	res, err := tx.resolve(address, false)
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrDisabled) || errors.Is(err, ErrInvalid) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if res.Address == u.Address {
		return true, nil
	}
	for _, r := range res.Users {
		if r.ID == u.ID {
			return true, nil
		}
	}
	return false, nil
}

func (tx *Tx) resolve(address string, catchAll bool) (Resolved, error) {
	local, domain, err := NormalizeAddress(address, false)
	if err != nil {
		return Resolved{}, err
	}
	addr := local + "@" + domain
	res := Resolved{Address: addr, Local: tx.isLocalDomain(domain)}
	if !res.Local {
		// Keep the local part as given: only the domain's is ours to fold.
		given := strings.TrimSpace(address)
		res.Remote = []string{given[:strings.LastIndexByte(given, '@')] + "@" + domain}
		return res, nil
	}
	r := resolver{tx: tx, catchAll: catchAll, seen: map[string]bool{}, users: map[uint64]bool{}, remote: map[string]bool{}, res: &res}
	if err := r.expand(addr, 0); err != nil {
		return Resolved{}, err
	}
	if len(res.Users) == 0 && len(res.Remote) == 0 {
		if r.disabledDirect {
			return Resolved{}, fmt.Errorf("%s: %w", addr, ErrDisabled)
		}
		return Resolved{}, fmt.Errorf("recipient %s: %w", addr, ErrNotFound)
	}
	return res, nil
}

type resolver struct {
	tx             *Tx
	catchAll       bool
	seen           map[string]bool
	users          map[uint64]bool
	remote         map[string]bool
	res            *Resolved
	disabledDirect bool
}

func (tx *Tx) isLocalDomain(domain string) bool {
	return tx.tx.Bucket(bDomains).Get([]byte(domain)) != nil
}

// expand adds what addr (normalised) resolves to.
func (r *resolver) expand(addr string, depth int) error {
	if depth > MaxAliasDepth {
		return fmt.Errorf("%w: aliases nested deeper than %d levels at %s", ErrInvalid, MaxAliasDepth, addr)
	}
	if r.seen[addr] {
		return nil
	}
	r.seen[addr] = true
	at := strings.LastIndexByte(addr, '@')
	local, domain := addr[:at], addr[at+1:]
	if !r.tx.isLocalDomain(domain) {
		return r.addRemote(addr)
	}
	found, err := r.direct(addr, depth)
	if found || err != nil {
		return err
	}
	if i := strings.IndexByte(local, SubaddressSeparator); i > 0 {
		base := local[:i] + "@" + domain
		if !r.seen[base] {
			r.seen[base] = true
			if found, err := r.direct(base, depth); found || err != nil {
				return err
			}
		}
	}
	if !r.catchAll {
		return nil
	}
	if a, ok := r.alias("@" + domain); ok {
		for _, t := range a.Targets {
			if err := r.expand(t, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// direct resolves addr as a user or an explicit alias; found is false when
// it is neither.
func (r *resolver) direct(addr string, depth int) (found bool, err error) {
	if v := r.tx.tx.Bucket(bUsers).Get([]byte(addr)); v != nil {
		var u User
		if err := u.unmarshal(v); err != nil {
			return true, err
		}
		if u.Disabled {
			if depth == 0 {
				r.disabledDirect = true
			}
			return true, nil
		}
		if !r.users[u.ID] {
			r.users[u.ID] = true
			r.res.Users = append(r.res.Users, u)
		}
		return true, r.checkSize()
	}
	a, ok := r.alias(addr)
	if !ok {
		return false, nil
	}
	for _, t := range a.Targets {
		if err := r.expand(t, depth+1); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (r *resolver) alias(addr string) (Alias, bool) {
	v := r.tx.tx.Bucket(bAliases).Get([]byte(addr))
	if v == nil {
		return Alias{}, false
	}
	var a Alias
	if a.unmarshal(v) != nil {
		return Alias{}, false
	}
	return a, true
}

func (r *resolver) addRemote(addr string) error {
	if !r.remote[addr] {
		r.remote[addr] = true
		r.res.Remote = append(r.res.Remote, addr)
	}
	return r.checkSize()
}

func (r *resolver) checkSize() error {
	if len(r.res.Users)+len(r.res.Remote) > MaxExpansion {
		return fmt.Errorf("%w: %s expands to more than %d recipients", ErrInvalid, r.res.Address, MaxExpansion)
	}
	return nil
}
