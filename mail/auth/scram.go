package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/xdg-go/scram"
)

// scramServer adapts xdg-go/scram's conversation to sasl.Server for
// SCRAM-SHA-256 (RFC 7677) without channel binding.
//
// The exchange is client-first, server-first, client-final, server-final,
// then an empty client response. Server-final (v=<signature>, which proves
// to the client that we know its keys) goes out as an ordinary challenge,
// and the exchange succeeds only on the empty response that follows: go-imap
// v2's server drops a challenge returned together with done, and SMTP needs
// a 334 line and an empty reply anyway (RFC 4954), so every protocol
// delivers it the same way.
type scramServer struct {
	m         *Mechanisms
	conv      *scram.ServerConversation
	lookupErr error // a Lookup failure, which the library reports as unknown-user
	state     int   // 0: want client-first, 1: want client-final, 2: want empty ack
	user      string
}

func (s *scramServer) step(ctx context.Context, resp []byte) ([]byte, string, error) {
	switch s.state {
	case 0:
		if resp == nil {
			if s.conv != nil {
				return nil, "", fmt.Errorf("%w: missing SCRAM client-first message", ErrMalformed)
			}
			s.conv = s.newConversation(ctx)
			return nil, "", nil
		}
		if s.conv == nil {
			s.conv = s.newConversation(ctx)
		}
		return s.clientFirst(resp)
	case 1:
		return s.clientFinal(resp)
	default:
		if len(resp) != 0 {
			return nil, "", fmt.Errorf("%w: SCRAM expects an empty response after server-final", ErrMalformed)
		}
		return nil, s.user, nil
	}
}

func (s *scramServer) newConversation(ctx context.Context) *scram.ServerConversation {
	// The library's lookup callback has no context, hence a server per
	// exchange (cheap: it is three fields) with a closure over ctx.
	srv, _ := scram.SHA256.NewServer(func(user string) (scram.StoredCredentials, error) {
		return s.credentials(ctx, user)
	})
	if s.m.scramNonce != nil {
		srv = srv.WithNonceGenerator(s.m.scramNonce)
	}
	return srv.NewConversation()
}

func (s *scramServer) clientFirst(resp []byte) ([]byte, string, error) {
	if bytes.HasPrefix(resp, []byte("p=")) {
		return nil, "", fmt.Errorf("%w: SCRAM channel binding (gs2 flag %q) is not offered; use %s without -PLUS",
			ErrUnsupported, bytes.SplitN(resp, []byte(","), 2)[0], ScramSHA256)
	}
	if !utf8.Valid(resp) {
		return nil, "", fmt.Errorf("%w: SCRAM client-first message is not UTF-8", ErrMalformed)
	}
	s.state = 1
	out, err := s.conv.Step(string(resp))
	if s.lookupErr != nil {
		return nil, "", s.lookupErr
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w: SCRAM client-first message: %w", ErrMalformed, err)
	}
	s.user = s.conv.Username()
	if a := s.conv.AuthzID(); a != "" && a != s.user {
		return nil, "", ErrAuthzDenied
	}
	return []byte(out), "", nil
}

func (s *scramServer) clientFinal(resp []byte) ([]byte, string, error) {
	s.state = 2
	out, err := s.conv.Step(string(resp))
	switch {
	case err != nil && out == scram.ErrInvalidProof:
		return nil, "", ErrBadCredentials
	case err != nil:
		return nil, "", fmt.Errorf("%w: SCRAM client-final message: %w", ErrMalformed, err)
	case !s.conv.Valid():
		return nil, "", ErrBadCredentials
	}
	return []byte(out), "", nil
}

// credentials looks the user up for the library. Unknown users, and users
// without usable SCRAM secrets, get decoy secrets instead of an error, so
// that the exchange proceeds and fails at the proof like a wrong password.
func (s *scramServer) credentials(ctx context.Context, user string) (scram.StoredCredentials, error) {
	if err := checkLogin(user); err != nil {
		return scram.StoredCredentials{}, err
	}
	sec, err := s.m.Lookup(ctx, user)
	if err != nil && !errors.Is(err, ErrUnknownUser) {
		s.lookupErr = fmt.Errorf("auth: looking up %q: %w", user, err)
		return scram.StoredCredentials{}, s.lookupErr
	}
	if err != nil || len(sec.ScramSalt) == 0 || sec.ScramIter < 1 ||
		len(sec.ScramStoredKey) != sha256.Size || len(sec.ScramServerKey) != sha256.Size {
		sec.ScramSalt, sec.ScramIter, sec.ScramStoredKey, sec.ScramServerKey = s.m.decoyScram(user)
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(sec.ScramSalt), Iters: sec.ScramIter},
		StoredKey:  sec.ScramStoredKey,
		ServerKey:  sec.ScramServerKey,
	}, nil
}
