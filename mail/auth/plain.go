package auth

import (
	"bytes"
	"context"
	"fmt"
)

// plainServer is PLAIN (RFC 4616): one message, authzid NUL authcid NUL
// password. It is written here rather than taken from go-sasl so that its
// errors are ours and its request for the message is an empty challenge
// (nil), which IMAP sends as "+ " rather than "+ =".
type plainServer struct {
	m     *Mechanisms
	asked bool
}

func (s *plainServer) step(ctx context.Context, resp []byte) ([]byte, string, error) {
	if resp == nil {
		if s.asked {
			return nil, "", fmt.Errorf("%w: missing PLAIN message", ErrMalformed)
		}
		s.asked = true
		return nil, "", nil
	}
	authz, rest, ok1 := bytes.Cut(resp, []byte{0})
	authc, password, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 || bytes.IndexByte(password, 0) >= 0 {
		return nil, "", fmt.Errorf("%w: PLAIN message needs three NUL-separated fields", ErrMalformed)
	}
	user := string(authc)
	if err := checkLogin(user); err != nil {
		return nil, "", err
	}
	// We have no proxy or admin login: acting as someone else is refused
	// before the password is looked at, so it reveals nothing.
	if len(authz) > 0 && string(authz) != user {
		return nil, "", ErrAuthzDenied
	}
	if err := s.m.verifyPassword(ctx, user, string(password)); err != nil {
		return nil, "", err
	}
	return nil, user, nil
}

// loginServer is LOGIN (draft-murchison-sasl-login): the server prompts
// "Username:" then "Password:" and the client answers each. Clients may send
// the user name as an initial response and skip the first prompt. An empty
// initial response counts as none, since no account has an empty name.
type loginServer struct {
	m     *Mechanisms
	state int // 0: start, 1: "Username:" sent, 2: "Password:" sent
	user  string
}

func (s *loginServer) step(ctx context.Context, resp []byte) ([]byte, string, error) {
	switch s.state {
	case 0:
		if len(resp) == 0 {
			s.state = 1
			return []byte("Username:"), "", nil
		}
		fallthrough
	case 1:
		s.user = string(resp)
		if err := checkLogin(s.user); err != nil {
			return nil, "", err
		}
		s.state = 2
		return []byte("Password:"), "", nil
	default:
		if resp == nil {
			return nil, "", fmt.Errorf("%w: missing LOGIN password", ErrMalformed)
		}
		if err := s.m.verifyPassword(ctx, s.user, string(resp)); err != nil {
			return nil, "", err
		}
		return nil, s.user, nil
	}
}
