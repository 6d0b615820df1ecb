// Package auth turns passwords into the secrets a node stores and runs the
// server side of the SASL mechanisms shared by SMTP AUTH, IMAP AUTHENTICATE
// and POP3 AUTH.
//
// A node never stores a password. Derive computes, once, everything the
// mechanisms need: an argon2id hash for PLAIN and LOGIN (where the client
// sends the password itself), SCRAM-SHA-256 keys (where the client proves it
// knows the password without sending it) and, only when an admin turns it on,
// the HMAC-MD5 key state of CRAM-MD5, and the shared secret of POP3's APOP.
// Those two are password-equivalent (APOP's is the password itself), which
// is why they are opt-in per account.
package auth

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/xdg-go/stringprep"
	"golang.org/x/crypto/argon2"
)

// Secrets is what a node stores for an account's password.
type Secrets struct {
	// Argon2id is a PHC string,
	// $argon2id$v=19$m=<KiB>,t=<passes>,p=<threads>$<salt>$<hash>, with
	// unpadded standard base64. It carries its own cost so that raising the
	// defaults later does not invalidate stored hashes.
	Argon2id string

	// SCRAM-SHA-256 (RFC 5802, RFC 7677): the salt and iteration count sent
	// to the client, and the two keys the server checks the proof with and
	// signs its answer with. Neither key lets anyone log in directly.
	ScramSalt      []byte
	ScramIter      int
	ScramStoredKey []byte
	ScramServerKey []byte

	// CRAMMD5 is set only when Params.CRAMMD5 was: the MD5 states after
	// hashing the HMAC ipad block and the opad block (RFC 2104), each
	// serialised with crypto/md5's MarshalBinary, inner then outer, in two
	// halves of equal length. It is enough to answer CRAM-MD5 for this user,
	// so treat it like a password.
	CRAMMD5 []byte

	// APOP is set only when Params.APOP was: the password itself, which
	// APOP (RFC 1939 section 7) hashes with each session's timestamp. It
	// is the one secret that reveals the password; store it knowingly.
	APOP []byte
}

// Params sets the cost of Derive and which optional secrets it produces.
type Params struct {
	Memory    uint32 // argon2id memory, KiB
	Time      uint32 // argon2id passes
	Threads   uint8  // argon2id lanes
	ScramIter int    // PBKDF2 iterations for SCRAM-SHA-256
	CRAMMD5   bool   // also store the CRAM-MD5 key state
	APOP      bool   // also store APOP's shared secret (the password)
}

// DefaultParams follows OWASP's argon2id recommendation (19 MiB, 2 passes,
// 1 lane) and RFC 7677's minimum of 4096 SCRAM iterations, below which common
// clients refuse to answer.
func DefaultParams() Params {
	return Params{Memory: 19 * 1024, Time: 2, Threads: 1, ScramIter: minScramIter}
}

// TestParams is cheap enough for tests. It keeps 4096 SCRAM iterations
// because real clients refuse fewer and PBKDF2 at that count is fast.
func TestParams() Params {
	return Params{Memory: 64, Time: 1, Threads: 1, ScramIter: minScramIter}
}

// ErrInvalidPassword is returned by Derive for a password that cannot be
// used: empty, not UTF-8, or containing NUL (which PLAIN cannot carry).
var ErrInvalidPassword = errors.New("auth: unacceptable password")

const (
	minScramIter = 4096
	saltLen      = 16
	argonKeyLen  = 32

	// Limits on a stored argon2id string, so that a corrupt or hostile
	// record cannot make Verify allocate without bound.
	maxArgonMemory = 4 << 20 // KiB, 4 GiB
	maxArgonTime   = 1 << 10
)

// Derive computes the secrets for password with fresh random salts.
func Derive(password string, p Params) (Secrets, error) {
	if err := checkPasswordText(password); err != nil {
		return Secrets{}, err
	}
	if err := p.check(); err != nil {
		return Secrets{}, err
	}
	var s Secrets
	salt := randomBytes(saltLen)
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, argonKeyLen)
	enc := base64.RawStdEncoding
	s.Argon2id = fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version,
		p.Memory, p.Time, p.Threads, enc.EncodeToString(salt), enc.EncodeToString(key))

	s.ScramSalt = randomBytes(saltLen)
	s.ScramIter = p.ScramIter
	var err error
	s.ScramStoredKey, s.ScramServerKey, err = scramKeys(password, s.ScramSalt, p.ScramIter)
	if err != nil {
		return Secrets{}, err
	}

	if p.CRAMMD5 {
		if s.CRAMMD5, err = cramState(password); err != nil {
			return Secrets{}, err
		}
	}
	if p.APOP {
		s.APOP = []byte(password)
	}
	return s, nil
}

// Verify reports whether password matches the argon2id hash, at the cost
// recorded in the hash. It is false for a missing or malformed hash.
func (s Secrets) Verify(password string) bool {
	if checkPasswordText(password) != nil {
		return false
	}
	h, err := parseArgon2id(s.Argon2id)
	if err != nil {
		return false
	}
	got := argon2.IDKey([]byte(password), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(got, h.key) == 1
}

// checkPasswordText rejects what cannot be a password in any mechanism.
func checkPasswordText(password string) error {
	switch {
	case password == "":
		return fmt.Errorf("%w: empty", ErrInvalidPassword)
	case !utf8.ValidString(password):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidPassword)
	case strings.IndexByte(password, 0) >= 0:
		return fmt.Errorf("%w: contains NUL", ErrInvalidPassword)
	}
	return nil
}

func (p Params) check() error {
	switch {
	case p.Time < 1 || p.Time > maxArgonTime:
		return fmt.Errorf("auth: argon2id time %d outside 1..%d", p.Time, maxArgonTime)
	case p.Threads < 1:
		return errors.New("auth: argon2id needs at least one thread")
	case p.Memory < 8*uint32(p.Threads) || p.Memory > maxArgonMemory:
		return fmt.Errorf("auth: argon2id memory %d KiB outside %d..%d", p.Memory, 8*uint32(p.Threads), maxArgonMemory)
	case p.ScramIter < minScramIter:
		return fmt.Errorf("auth: SCRAM iteration count %d below RFC 7677's minimum %d, which clients refuse", p.ScramIter, minScramIter)
	}
	return nil
}

type argon2idHash struct {
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

// parseArgon2id reads a PHC string strictly: our own Derive is its only
// writer, and anything else is a corrupt record.
func parseArgon2id(s string) (argon2idHash, error) {
	var h argon2idHash
	f := strings.Split(s, "$")
	if len(f) != 6 || f[0] != "" || f[1] != "argon2id" {
		return h, errors.New("auth: not an argon2id PHC string")
	}
	if f[2] != "v="+strconv.Itoa(argon2.Version) {
		return h, fmt.Errorf("auth: unsupported argon2 version %q", f[2])
	}
	ps := strings.Split(f[3], ",")
	if len(ps) != 3 {
		return h, fmt.Errorf("auth: bad argon2id parameters %q", f[3])
	}
	var vals [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		v, ok := strings.CutPrefix(ps[i], name)
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil {
			return h, fmt.Errorf("auth: bad argon2id parameters %q", f[3])
		}
		vals[i] = n
	}
	if vals[1] < 1 || vals[1] > maxArgonTime || vals[2] < 1 || vals[2] > 255 ||
		vals[0] < 8*vals[2] || vals[0] > maxArgonMemory {
		return h, fmt.Errorf("auth: argon2id parameters %q out of range", f[3])
	}
	h.memory, h.time, h.threads = uint32(vals[0]), uint32(vals[1]), uint8(vals[2])
	var err error
	if h.salt, err = base64.RawStdEncoding.DecodeString(f[4]); err != nil || len(h.salt) < 8 {
		return h, errors.New("auth: bad argon2id salt")
	}
	if h.key, err = base64.RawStdEncoding.DecodeString(f[5]); err != nil || len(h.key) < 16 || len(h.key) > 64 {
		return h, errors.New("auth: bad argon2id hash")
	}
	return h, nil
}

// scramKeys computes StoredKey and ServerKey (RFC 5802 section 3).
func scramKeys(password string, salt []byte, iter int) (storedKey, serverKey []byte, err error) {
	salted, err := pbkdf2.Key(sha256.New, scramNormalize(password), salt, iter, sha256.Size)
	if err != nil {
		return nil, nil, fmt.Errorf("auth: SCRAM salted password: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return stored[:], hmacSHA256(salted, "Server Key"), nil
}

// scramNormalize applies SASLprep as RFC 5802 requires, since clients do
// the same before hashing. A password SASLprep rejects (e.g. with
// unassigned code points) is used as is: clients that still try it send it
// unprepared too.
func scramNormalize(password string) string {
	if p, err := stringprep.SASLprep.Prepare(password); err == nil && p != "" {
		return p
	}
	return password
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// cramState returns the HMAC-MD5 key state for password (see
// Secrets.CRAMMD5). CRAM-MD5 uses the password bytes unprepared (RFC 2195).
func cramState(password string) ([]byte, error) {
	key := []byte(password)
	if len(key) > md5.BlockSize {
		sum := md5.Sum(key)
		key = sum[:]
	}
	var ipad, opad [md5.BlockSize]byte
	copy(ipad[:], key)
	copy(opad[:], key)
	for i := range ipad {
		ipad[i] ^= 0x36
		opad[i] ^= 0x5c
	}
	var state []byte
	for _, pad := range [][]byte{ipad[:], opad[:]} {
		h := md5.New()
		h.Write(pad)
		b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("auth: saving CRAM-MD5 state: %w", err)
		}
		state = append(state, b...)
	}
	return state, nil
}

// cramDigest finishes HMAC-MD5 of msg from a state made by cramState.
func cramDigest(state, msg []byte) ([]byte, error) {
	if len(state) == 0 || len(state)%2 != 0 {
		return nil, errors.New("auth: CRAM-MD5 state has odd or zero length")
	}
	half := len(state) / 2
	inner, outer := md5.New(), md5.New()
	if err := inner.(encoding.BinaryUnmarshaler).UnmarshalBinary(state[:half]); err != nil {
		return nil, fmt.Errorf("auth: CRAM-MD5 inner state: %w", err)
	}
	if err := outer.(encoding.BinaryUnmarshaler).UnmarshalBinary(state[half:]); err != nil {
		return nil, fmt.Errorf("auth: CRAM-MD5 outer state: %w", err)
	}
	inner.Write(msg)
	outer.Write(inner.Sum(nil))
	return outer.Sum(nil), nil
}

// randomBytes never fails: crypto/rand.Read does not return errors.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}
