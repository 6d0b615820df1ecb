package storage

import (
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func userAddrs(us []User) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.Address)
	}
	return out
}

func TestResolve(t *testing.T) {
	s := openTest(t)
	seq := uint64(1)
	w := func(fn func(*Tx) error) {
		t.Helper()
		write(t, s, seq, fn)
		seq++
	}
	w(func(tx *Tx) error {
		for _, d := range []string{"example.org", "other.test", "empty.test"} {
			if _, err := tx.AddDomain(d); err != nil {
				return err
			}
		}
		for _, u := range []string{"alice@example.org", "bob@example.org", "carol@other.test", "x+y@example.org"} {
			if _, err := tx.AddUser(User{Address: u}); err != nil {
				return err
			}
		}
		if _, err := tx.AddUser(User{Address: "gone@example.org", Disabled: true}); err != nil {
			return err
		}
		steps := []struct {
			a string
			t []string
		}{
			{"sales@example.org", []string{"alice@example.org", "Bob@Example.org", "partner@remote.test"}},
			{"team@example.org", []string{"sales@example.org", "carol@other.test", "alice@example.org"}},
			{"old@example.org", []string{"gone@example.org", "alice@example.org"}},
			{"onlygone@example.org", []string{"gone@example.org"}},
			{"@other.test", []string{"carol@other.test"}},
			// a loop: loop1 -> loop2 -> loop1 (built by re-pointing loop1)
			{"loop1@example.org", []string{"alice@example.org"}},
			{"loop2@example.org", []string{"loop1@example.org"}},
			// catch-all of a domain that only forwards away, and a
			// catch-all loop through an unknown address
			{"@empty.test", []string{"nobody@empty.test"}},
		}
		for _, st := range steps {
			if st.a == "@empty.test" {
				// nobody@empty.test must exist for AddAlias; make it an
				// alias first, then remove it so the catch-all dangles.
				if _, err := tx.AddAlias("nobody@empty.test", []string{"far@remote.test"}); err != nil {
					return err
				}
			}
			if _, err := tx.AddAlias(st.a, st.t); err != nil {
				return fmt.Errorf("alias %s: %w", st.a, err)
			}
		}
		if err := tx.RemoveAlias("nobody@empty.test"); err != nil {
			return err
		}
		if err := tx.RemoveAlias("loop1@example.org"); err != nil {
			return err
		}
		_, err := tx.AddAlias("loop1@example.org", []string{"loop2@example.org"})
		return err
	})

	cases := []struct {
		addr   string
		local  bool
		users  []string
		remote []string
		err    error
	}{
		{addr: "alice@example.org", local: true, users: []string{"alice@example.org"}},
		{addr: "ALICE@Example.ORG", local: true, users: []string{"alice@example.org"}},
		{addr: "alice+news@example.org", local: true, users: []string{"alice@example.org"}},
		{addr: "alice+a+b@example.org", local: true, users: []string{"alice@example.org"}},
		// an explicit user with a "+" wins over sub-addressing
		{addr: "x+y@example.org", local: true, users: []string{"x+y@example.org"}},
		{addr: "x+z@example.org", err: ErrNotFound},
		{addr: "+tag@example.org", err: ErrNotFound},
		{addr: "sales@example.org", local: true, users: []string{"alice@example.org", "bob@example.org"}, remote: []string{"partner@remote.test"}},
		{addr: "sales+q3@example.org", local: true, users: []string{"alice@example.org", "bob@example.org"}, remote: []string{"partner@remote.test"}},
		// nested and duplicate targets come out once
		{addr: "team@example.org", local: true, users: []string{"alice@example.org", "bob@example.org", "carol@other.test"}, remote: []string{"partner@remote.test"}},
		// disabled accounts are skipped in expansions, refused directly
		{addr: "old@example.org", local: true, users: []string{"alice@example.org"}},
		{addr: "gone@example.org", err: ErrDisabled},
		{addr: "gone+x@example.org", err: ErrDisabled},
		{addr: "onlygone@example.org", err: ErrNotFound},
		// catch-all
		{addr: "anything@other.test", local: true, users: []string{"carol@other.test"}},
		{addr: "carol+x@other.test", local: true, users: []string{"carol@other.test"}},
		{addr: "nobody@example.org", err: ErrNotFound},
		// a loop resolves to nothing, and says so instead of spinning
		{addr: "loop1@example.org", err: ErrNotFound},
		{addr: "whoever@empty.test", err: ErrNotFound},
		// remote addresses resolve to themselves, local part as given
		{addr: "Someone@Remote.TEST", remote: []string{"Someone@remote.test"}},
		{addr: "no-at-sign", err: ErrInvalid},
		{addr: "a b@example.org", err: ErrInvalid},
	}
	for _, c := range cases {
		var got Resolved
		var err error
		_ = s.View(func(tx *Tx) error {
			got, err = tx.Resolve(c.addr)
			return nil
		})
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: err %v, want %v", c.addr, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.addr, err)
			continue
		}
		if got.Local != c.local || !reflect.DeepEqual(userAddrs(got.Users), c.users) || !reflect.DeepEqual(got.Remote, c.remote) {
			t.Errorf("%s: got local=%v users=%v remote=%v; want local=%v users=%v remote=%v",
				c.addr, got.Local, userAddrs(got.Users), got.Remote, c.local, c.users, c.remote)
		}
	}

	// Send-as: own address, sub-addresses, aliases reaching the user; not
	// catch-alls, not other users, not aliases that miss the user.
	var alice, carol User
	_ = s.View(func(tx *Tx) error {
		alice, _ = tx.User("alice@example.org")
		carol, _ = tx.User("carol@other.test")
		return nil
	})
	sendAs := []struct {
		user User
		addr string
		ok   bool
	}{
		{alice, "alice@example.org", true},
		{alice, "Alice@EXAMPLE.org", true},
		{alice, "alice+list@example.org", true},
		{alice, "sales@example.org", true},
		{alice, "team@example.org", true},
		{alice, "old@example.org", true},
		{alice, "bob@example.org", false},
		{alice, "carol@other.test", false},
		{alice, "partner@remote.test", false},
		{alice, "nobody@example.org", false},
		{carol, "anything@other.test", false}, // catch-all only
		{carol, "carol@other.test", true},
		{carol, "team@example.org", true},
		{carol, "", false},
	}
	for _, c := range sendAs {
		var ok bool
		var err error
		_ = s.View(func(tx *Tx) error {
			ok, err = tx.CanSendAs(c.user.ID, c.addr)
			return nil
		})
		if err != nil || ok != c.ok {
			t.Errorf("%s as %q: %v %v, want %v", c.user.Address, c.addr, ok, err, c.ok)
		}
	}
}

func TestResolveLimits(t *testing.T) {
	s := openTest(t)
	// A chain deeper than MaxAliasDepth fails instead of recursing on.
	write(t, s, 1, func(tx *Tx) error {
		if _, err := tx.AddDomain("deep.test"); err != nil {
			return err
		}
		if _, err := tx.AddUser(User{Address: "end@deep.test"}); err != nil {
			return err
		}
		prev := "end@deep.test"
		for i := 0; i <= MaxAliasDepth+1; i++ {
			a := fmt.Sprintf("a%d@deep.test", i)
			if _, err := tx.AddAlias(a, []string{prev}); err != nil {
				return err
			}
			prev = a
		}
		// A fan-out beyond MaxExpansion remote addresses fails too.
		var many []string
		for i := 0; i <= MaxExpansion; i++ {
			many = append(many, fmt.Sprintf("r%d@remote.test", i))
		}
		_, err := tx.AddAlias("wide@deep.test", many)
		return err
	})
	_ = s.View(func(tx *Tx) error {
		if _, err := tx.Resolve(fmt.Sprintf("a%d@deep.test", MaxAliasDepth+1)); !errors.Is(err, ErrInvalid) {
			t.Errorf("deep chain: %v", err)
		}
		if r, err := tx.Resolve("a3@deep.test"); err != nil || len(r.Users) != 1 {
			t.Errorf("short chain: %v %v", r, err)
		}
		if _, err := tx.Resolve("wide@deep.test"); !errors.Is(err, ErrInvalid) {
			t.Errorf("wide alias: %v", err)
		}
		return nil
	})
}

// FuzzResolve: any address resolves without panicking, to unique existing
// users and to remote addresses outside the local domains, or fails with a
// sentinel error.
func FuzzResolve(f *testing.F) {
	for _, s := range []string{"alice@example.org", "a+b@example.org", "x@other.test", "loop@example.org", "@example.org", "a@b@example.org", "+@example.org", "ALIAS@EXAMPLE.ORG", "far@remote.test", "", "\xff@example.org"} {
		f.Add(s)
	}
	s, err := Open(filepath.Join(f.TempDir(), "state.db"), Options{NoSync: true, MmapSize: 64 << 20})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	err = s.Update(func(tx *Tx) error {
		tx.SetClock(1, time.Unix(1700000000, 0))
		for _, d := range []string{"example.org", "other.test"} {
			if _, err := tx.AddDomain(d); err != nil {
				return err
			}
		}
		for _, u := range []string{"alice@example.org", "bob@example.org"} {
			if _, err := tx.AddUser(User{Address: u}); err != nil {
				return err
			}
		}
		for _, a := range []struct {
			a string
			t []string
		}{{"alias@example.org", []string{"alice@example.org", "far@remote.test"}}, {"loop@example.org", []string{"alias@example.org"}},
			{"@other.test", []string{"loop@example.org", "bob@example.org"}}} {
			if _, err := tx.AddAlias(a.a, a.t); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		_ = s.View(func(tx *Tx) error {
			for _, catchAll := range []bool{true, false} {
				r, err := tx.resolve(addr, catchAll)
				if err != nil {
					if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrDisabled) {
						t.Fatalf("%q: %v", addr, err)
					}
					continue
				}
				seen := map[uint64]bool{}
				for _, u := range r.Users {
					if seen[u.ID] {
						t.Fatalf("%q: user %s twice", addr, u.Address)
					}
					seen[u.ID] = true
					if _, err := tx.UserByID(u.ID); err != nil {
						t.Fatalf("%q: %v", addr, err)
					}
				}
				for _, a := range r.Remote {
					if tx.isLocalDomain(a[strings.LastIndexByte(a, '@')+1:]) {
						t.Fatalf("%q: remote %s is local", addr, a)
					}
				}
			}
			return nil
		})
	})
}

func TestListsByDomain(t *testing.T) {
	s := openTest(t)
	write(t, s, 1, func(tx *Tx) error {
		for _, d := range []string{"a.test", "b.test", "xb.test"} {
			if _, err := tx.AddDomain(d); err != nil {
				return err
			}
		}
		for _, u := range []string{"zed@b.test", "amy@a.test", "bob@b.test", "cy@xb.test"} {
			if _, err := tx.AddUser(User{Address: u}); err != nil {
				return err
			}
		}
		for _, a := range []string{"sales@b.test", "@b.test", "info@a.test", "x@xb.test"} {
			if _, err := tx.AddAlias(a, []string{"amy@a.test"}); err != nil {
				return err
			}
		}
		return nil
	})
	err := s.View(func(tx *Tx) error {
		for _, c := range []struct {
			domain         string
			users, aliases []string
		}{
			{"", []string{"amy@a.test", "bob@b.test", "cy@xb.test", "zed@b.test"}, []string{"@b.test", "info@a.test", "sales@b.test", "x@xb.test"}},
			// The domain is matched whole (not xb.test) and case-blind.
			{"B.Test", []string{"bob@b.test", "zed@b.test"}, []string{"@b.test", "sales@b.test"}},
			{"a.test", []string{"amy@a.test"}, []string{"info@a.test"}},
		} {
			us, err := tx.Users(c.domain)
			if err != nil {
				return err
			}
			as, err := tx.Aliases(c.domain)
			if err != nil {
				return err
			}
			var aliases []string
			for _, a := range as {
				aliases = append(aliases, a.Address)
			}
			if !reflect.DeepEqual(userAddrs(us), c.users) || !reflect.DeepEqual(aliases, c.aliases) {
				t.Errorf("domain %q: users %v aliases %v, want %v %v", c.domain, userAddrs(us), aliases, c.users, c.aliases)
			}
		}
		if _, err := tx.Users("bad domain!"); err == nil {
			t.Error("an invalid domain was listed")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
