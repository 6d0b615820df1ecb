package storage

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// NormalizeDomain lower-cases a domain name and checks its shape.
func NormalizeDomain(name string) (string, error) {
	d := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
	if d == "" || len(d) > 253 || !utf8.ValidString(d) {
		return "", fmt.Errorf("%w domain name %q", ErrInvalid, name)
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") {
			return "", fmt.Errorf("%w domain name %q", ErrInvalid, name)
		}
		for _, r := range label {
			if r < 0x80 && !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return "", fmt.Errorf("%w domain name %q", ErrInvalid, name)
			}
		}
	}
	return d, nil
}

// NormalizeAddress lower-cases an address and splits it. An empty local
// part is allowed only when allowCatchAll is set ("@domain").
func NormalizeAddress(addr string, allowCatchAll bool) (local, domain string, err error) {
	a := strings.TrimSpace(addr)
	at := strings.LastIndexByte(a, '@')
	if at < 0 {
		return "", "", fmt.Errorf("%w address %q: no @", ErrInvalid, addr)
	}
	local = strings.ToLower(a[:at])
	if domain, err = NormalizeDomain(a[at+1:]); err != nil {
		return "", "", fmt.Errorf("%w address %q: bad domain", ErrInvalid, addr)
	}
	if local == "" && !allowCatchAll {
		return "", "", fmt.Errorf("%w address %q: empty local part", ErrInvalid, addr)
	}
	if len(local) > 64 || !utf8.ValidString(local) || strings.ContainsAny(local, " \t\r\n<>()[]\\,;:\"@") {
		return "", "", fmt.Errorf("%w address %q: bad local part", ErrInvalid, addr)
	}
	return local, domain, nil
}

// DefaultMailboxes are created with every user: INBOX and the special-use
// folders (RFC 6154) that clients look for.
var DefaultMailboxes = []struct{ Name, SpecialUse string }{
	{"INBOX", ""},
	{"Drafts", `\Drafts`},
	{"Sent", `\Sent`},
	{"Junk", `\Junk`},
	{"Trash", `\Trash`},
	{"Archive", `\Archive`},
}

// AddDomain adds a domain.
func (tx *Tx) AddDomain(name string) (Domain, error) {
	d, err := NormalizeDomain(name)
	if err != nil {
		return Domain{}, err
	}
	b := tx.tx.Bucket(bDomains)
	if b.Get([]byte(d)) != nil {
		return Domain{}, fmt.Errorf("domain %s: %w", d, ErrExists)
	}
	rec := Domain{Name: d, Created: tx.now}
	tx.emit(Event{Kind: DirectoryChanged})
	return rec, b.Put([]byte(d), rec.marshal())
}

// Domain returns one domain.
func (tx *Tx) Domain(name string) (Domain, error) {
	var d Domain
	n, err := NormalizeDomain(name)
	if err != nil {
		return d, err
	}
	v := tx.tx.Bucket(bDomains).Get([]byte(n))
	if v == nil {
		return d, fmt.Errorf("domain %s: %w", n, ErrNotFound)
	}
	return d, d.unmarshal(v)
}

// Domains lists all domains in name order.
func (tx *Tx) Domains() ([]Domain, error) {
	var out []Domain
	err := tx.tx.Bucket(bDomains).ForEach(func(_, v []byte) error {
		var d Domain
		if err := d.unmarshal(v); err != nil {
			return err
		}
		out = append(out, d)
		return nil
	})
	return out, err
}

// RemoveDomain removes a domain that has no users and no aliases left:
// removing the mail of a whole domain is too big a side effect to imply.
func (tx *Tx) RemoveDomain(name string) error {
	d, err := tx.Domain(name)
	if err != nil {
		return err
	}
	suffix := []byte("@" + d.Name)
	users, aliases := countSuffix(tx.tx.Bucket(bUsers).ForEach, suffix), countSuffix(tx.tx.Bucket(bAliases).ForEach, suffix)
	if users+aliases > 0 {
		return fmt.Errorf("%w: domain %s still has %d users and %d aliases; remove them first", ErrInvalid, d.Name, users, aliases)
	}
	tx.emit(Event{Kind: DirectoryChanged})
	return tx.tx.Bucket(bDomains).Delete([]byte(d.Name))
}

func countSuffix(forEach func(func(k, v []byte) error) error, suffix []byte) int {
	n := 0
	_ = forEach(func(k, _ []byte) error {
		if bytes.HasSuffix(k, suffix) {
			n++
		}
		return nil
	})
	return n
}

// AddUser creates a user and its default mailboxes. The domain must exist and
// the address must not already be a user or an alias.
func (tx *Tx) AddUser(u User) (User, error) {
	local, domain, err := NormalizeAddress(u.Address, false)
	if err != nil {
		return User{}, err
	}
	u.Address = local + "@" + domain
	if _, err := tx.Domain(domain); err != nil {
		return User{}, fmt.Errorf("user %s: %w", u.Address, err)
	}
	if tx.tx.Bucket(bUsers).Get([]byte(u.Address)) != nil {
		return User{}, fmt.Errorf("user %s: %w", u.Address, ErrExists)
	}
	if tx.tx.Bucket(bAliases).Get([]byte(u.Address)) != nil {
		return User{}, fmt.Errorf("%w: %s is an alias", ErrExists, u.Address)
	}
	if u.ID, err = tx.nextID("user"); err != nil {
		return User{}, err
	}
	u.Created = tx.now
	if err := tx.putUser(u); err != nil {
		return User{}, err
	}
	if err := tx.tx.Bucket(bUserIDs).Put(u64(u.ID), []byte(u.Address)); err != nil {
		return User{}, err
	}
	for _, mb := range DefaultMailboxes {
		if _, err := tx.CreateMailbox(u.ID, mb.Name, mb.SpecialUse); err != nil {
			return User{}, fmt.Errorf("user %s: mailbox %s: %w", u.Address, mb.Name, err)
		}
	}
	tx.emit(Event{Kind: DirectoryChanged, UserID: u.ID})
	return u, nil
}

func (tx *Tx) putUser(u User) error {
	return tx.tx.Bucket(bUsers).Put([]byte(u.Address), u.marshal())
}

// User returns the user with that address.
func (tx *Tx) User(address string) (User, error) {
	var u User
	local, domain, err := NormalizeAddress(address, false)
	if err != nil {
		return u, err
	}
	v := tx.tx.Bucket(bUsers).Get([]byte(local + "@" + domain))
	if v == nil {
		return u, fmt.Errorf("user %s@%s: %w", local, domain, ErrNotFound)
	}
	return u, u.unmarshal(v)
}

// UserByID returns the user with that ID.
func (tx *Tx) UserByID(id uint64) (User, error) {
	addr := tx.tx.Bucket(bUserIDs).Get(u64(id))
	if addr == nil {
		return User{}, fmt.Errorf("user #%d: %w", id, ErrNotFound)
	}
	return tx.User(string(addr))
}

// Users lists the users of domain ("" for all) in address order.
func (tx *Tx) Users(domain string) ([]User, error) {
	return listOfDomain[User](tx, bUsers, domain)
}

// listOfDomain decodes the records of a bucket keyed by address whose
// domain is domain ("" for all), in address order.
func listOfDomain[T any, P interface {
	*T
	unmarshal([]byte) error
}](tx *Tx, bucket []byte, domain string) ([]T, error) {
	suffix := ""
	if domain != "" {
		d, err := NormalizeDomain(domain)
		if err != nil {
			return nil, err
		}
		suffix = "@" + d
	}
	var out []T
	err := tx.tx.Bucket(bucket).ForEach(func(k, v []byte) error {
		if !strings.HasSuffix(string(k), suffix) {
			return nil
		}
		var r T
		if err := P(&r).unmarshal(v); err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// SetSecrets replaces a user's authentication secrets (a password change).
func (tx *Tx) SetSecrets(address string, s Secrets) error {
	u, err := tx.User(address)
	if err != nil {
		return err
	}
	u.Secrets = s
	tx.emit(Event{Kind: DirectoryChanged, UserID: u.ID})
	return tx.putUser(u)
}

// SetQuota sets a user's storage quota in octets (0: unlimited).
func (tx *Tx) SetQuota(address string, quota int64) error {
	if quota < 0 {
		return fmt.Errorf("%w quota %d", ErrInvalid, quota)
	}
	u, err := tx.User(address)
	if err != nil {
		return err
	}
	u.QuotaBytes = quota
	tx.emit(Event{Kind: DirectoryChanged, UserID: u.ID})
	return tx.putUser(u)
}

// RemoveUser removes a user with all its mailboxes and messages.
func (tx *Tx) RemoveUser(address string) error {
	u, err := tx.User(address)
	if err != nil {
		return err
	}
	mbs, err := tx.Mailboxes(u.ID)
	if err != nil {
		return err
	}
	for _, mb := range mbs {
		if err := tx.dropMailbox(mb); err != nil {
			return err
		}
	}
	if err := tx.tx.Bucket(bUserIDs).Delete(u64(u.ID)); err != nil {
		return err
	}
	tx.emit(Event{Kind: DirectoryChanged, UserID: u.ID})
	return tx.tx.Bucket(bUsers).Delete([]byte(u.Address))
}

// UsedBytes is the size of all of a user's messages.
func (tx *Tx) UsedBytes(userID uint64) (int64, error) {
	mbs, err := tx.Mailboxes(userID)
	var n int64
	for _, mb := range mbs {
		n += mb.Size
	}
	return n, err
}

// AddAlias creates an alias (or a catch-all, "@domain") to one or more
// targets. Local targets must be users, remote targets are taken as given.
func (tx *Tx) AddAlias(address string, targets []string) (Alias, error) {
	local, domain, err := NormalizeAddress(address, true)
	if err != nil {
		return Alias{}, err
	}
	a := Alias{Address: local + "@" + domain, Created: tx.now}
	if _, err := tx.Domain(domain); err != nil {
		return Alias{}, fmt.Errorf("alias %s: %w", a.Address, err)
	}
	if tx.tx.Bucket(bAliases).Get([]byte(a.Address)) != nil {
		return Alias{}, fmt.Errorf("alias %s: %w", a.Address, ErrExists)
	}
	if tx.tx.Bucket(bUsers).Get([]byte(a.Address)) != nil {
		return Alias{}, fmt.Errorf("%w: %s is a user", ErrExists, a.Address)
	}
	if len(targets) == 0 {
		return Alias{}, fmt.Errorf("%w alias %s: no targets", ErrInvalid, a.Address)
	}
	seen := map[string]bool{}
	for _, t := range targets {
		tl, td, err := NormalizeAddress(t, false)
		if err != nil {
			return Alias{}, fmt.Errorf("alias %s: target: %w", a.Address, err)
		}
		target := tl + "@" + td
		if target == a.Address {
			return Alias{}, fmt.Errorf("%w alias %s: points at itself", ErrInvalid, a.Address)
		}
		if seen[target] {
			continue
		}
		seen[target] = true
		if tx.tx.Bucket(bDomains).Get([]byte(td)) != nil &&
			tx.tx.Bucket(bUsers).Get([]byte(target)) == nil &&
			tx.tx.Bucket(bAliases).Get([]byte(target)) == nil {
			return Alias{}, fmt.Errorf("alias %s: target %s: %w (no such local user or alias)", a.Address, target, ErrNotFound)
		}
		a.Targets = append(a.Targets, target)
	}
	tx.emit(Event{Kind: DirectoryChanged})
	return a, tx.tx.Bucket(bAliases).Put([]byte(a.Address), a.marshal())
}

// Alias returns one alias.
func (tx *Tx) Alias(address string) (Alias, error) {
	var a Alias
	local, domain, err := NormalizeAddress(address, true)
	if err != nil {
		return a, err
	}
	v := tx.tx.Bucket(bAliases).Get([]byte(local + "@" + domain))
	if v == nil {
		return a, fmt.Errorf("alias %s@%s: %w", local, domain, ErrNotFound)
	}
	return a, a.unmarshal(v)
}

// Aliases lists the aliases of domain ("" for all).
func (tx *Tx) Aliases(domain string) ([]Alias, error) {
	return listOfDomain[Alias](tx, bAliases, domain)
}

// RemoveAlias removes an alias.
func (tx *Tx) RemoveAlias(address string) error {
	a, err := tx.Alias(address)
	if err != nil {
		return err
	}
	tx.emit(Event{Kind: DirectoryChanged})
	return tx.tx.Bucket(bAliases).Delete([]byte(a.Address))
}
