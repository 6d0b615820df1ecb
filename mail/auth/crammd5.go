package auth

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// cramServer is CRAM-MD5 (RFC 2195): the server sends a unique challenge,
// the client answers "user HEX(HMAC-MD5(password, challenge))". Only users
// whose Secrets carry the CRAM-MD5 key state can use it.
type cramServer struct {
	m         *Mechanisms
	challenge []byte
}

func (s *cramServer) step(ctx context.Context, resp []byte) ([]byte, string, error) {
	if s.challenge == nil {
		// The mechanism has no initial response; an empty one is harmless.
		if len(resp) != 0 {
			return nil, "", fmt.Errorf("%w: CRAM-MD5 takes no initial response", ErrMalformed)
		}
		s.challenge = []byte(s.m.newCramChallenge())
		return s.challenge, "", nil
	}

	// The user name may contain spaces; the digest cannot.
	i := bytes.LastIndexByte(resp, ' ')
	if i < 0 || len(resp)-i-1 != 2*md5.Size {
		return nil, "", fmt.Errorf("%w: CRAM-MD5 response is not \"user digest\"", ErrMalformed)
	}
	user := string(resp[:i])
	if err := checkLogin(user); err != nil {
		return nil, "", err
	}
	digest := make([]byte, md5.Size)
	if _, err := hex.Decode(digest, resp[i+1:]); err != nil {
		return nil, "", fmt.Errorf("%w: CRAM-MD5 digest is not hex", ErrMalformed)
	}

	sec, err := s.m.Lookup(ctx, user)
	switch {
	case errors.Is(err, ErrUnknownUser):
		sec = Secrets{}
	case err != nil:
		return nil, "", fmt.Errorf("auth: looking up %q: %w", user, err)
	}
	state := sec.CRAMMD5
	if len(state) == 0 {
		// No CRAM-MD5 for this name: check against a random key, so the
		// answer takes as long and says the same as a wrong password.
		state, _ = cramState(string(randomBytes(md5.BlockSize)))
	}
	want, err := cramDigest(state, s.challenge)
	if err != nil {
		return nil, "", fmt.Errorf("auth: stored CRAM-MD5 state of %q: %w", user, err)
	}
	if !hmac.Equal(digest, want) || len(sec.CRAMMD5) == 0 {
		return nil, "", ErrBadCredentials
	}
	return nil, user, nil
}

// newCramChallenge returns a challenge of the form RFC 2195 shows,
// <random.timestamp@hostname>; uniqueness is what matters.
func (m *Mechanisms) newCramChallenge() string {
	if m.cramChallenge != nil {
		return m.cramChallenge()
	}
	host := m.Hostname
	if host == "" {
		host = "localhost"
	}
	r := binary.BigEndian.Uint64(randomBytes(8))
	return fmt.Sprintf("<%d.%d@%s>", r, time.Now().Unix(), host)
}
