package command

import (
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
)

var update = flag.Bool("update", false, "write golden files for command types that have none")

// samples has one filled-in command of every type. A new type must add one,
// and with it a golden file (go test -run Golden -update).
func samples() []Command {
	secrets := storage.Secrets{Argon2id: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", ScramSalt: []byte("salt"),
		ScramIter: 4096, ScramStoredKey: []byte{1, 2}, ScramServerKey: []byte{3, 4}}
	return []Command{
		&Init{ClusterID: "c0ffee"},
		&AddDomain{Name: "example.org"},
		&RemoveDomain{Name: "example.org"},
		&AddUser{Address: "alice@example.org", Name: "Alice", Secrets: secrets, QuotaBytes: 1 << 30},
		&SetSecrets{Address: "alice@example.org", Secrets: secrets},
		&RemoveUser{Address: "alice@example.org"},
		&AddAlias{Address: "team@example.org", Targets: []string{"alice@example.org", "bob@example.org"}},
		&RemoveAlias{Address: "team@example.org"},
		&Deliver{Blob: storage.Hash{9, 9}, Body: []byte("zstd"), BodySize: 5120, From: "a@b.test", InternalDate: 1700000000,
			Targets: []Target{{UserID: 7, Prefix: []byte("Return-Path: <a@b.test>\r\n"), Flags: []string{`\Seen`}, EnforceQuota: true}, {UserID: 8, Mailbox: "Lists"}},
			Queue:   []storage.QueueRecipient{{Address: "x@remote.test", Notify: "FAILURE", ORcpt: "rfc822;x@remote.test"}}, QueuePrefix: []byte("Received: x\r\n"),
			EnvID: "env1", Ret: "HDRS"},
		&Digest{Nonce: 42},
		&SetQuota{Address: "alice@example.org", QuotaBytes: 1000},
		&SetSetting{Key: "relay.mode", Value: []byte("local-users")},
		&SetFlags{UserID: 7, MailboxID: 3, UIDs: []uint32{1, 5, 9}, Op: storage.FlagsAdd, Flags: []string{`\Seen`, "$Label1"}, UnchangedSince: 44},
		&Expunge{UserID: 7, MailboxID: 3, UIDs: []uint32{2, 3}},
		&ExpungeDeleted{UserID: 7, MailboxID: 3, UIDs: []uint32{2, 3, 10}},
		&Copy{UserID: 7, From: 3, To: 4, UIDs: []uint32{1, 2}, Move: true},
		&CreateMailbox{UserID: 7, Name: "Lists/Go", SpecialUse: `\Archive`},
		&DeleteMailbox{UserID: 7, Name: "Old"},
		&RenameMailbox{UserID: 7, From: "Old", To: "New"},
		&Subscribe{UserID: 7, Name: "Lists/Go", On: true},
		&PopLock{UserID: 7, Node: "n2", Token: 99, Until: 1700000100},
		&PopUnlock{UserID: 7, Token: 99},
		&QueueClaim{Node: "n2", Until: 1700000060, IDs: []uint64{3, 4}},
		&QueueResult{Node: "n2", Entries: []EntryResult{
			{ID: 3, Rcpts: []RcptResult{{Address: "x@remote.test", Outcome: Delivered}, {Address: "y@remote.test", Outcome: Bounced, Error: "550 5.1.1 no such user"}},
				FailureDSN: &Deliver{Blob: storage.Hash{7}, Body: []byte("zstd"), BodySize: 900, InternalDate: 1700000001,
					Queue: []storage.QueueRecipient{{Address: "a@b.test"}}, QueuePrefix: []byte("Received: y\r\n")},
				SuccessDSN: &Deliver{Blob: storage.Hash{6}, Body: []byte("zstd"), BodySize: 600, Targets: []Target{{UserID: 9}}}},
			{ID: 4, Rcpts: []RcptResult{{Address: "z@remote.test", Outcome: Deferred, Error: "451 4.3.0 try later"}}, NextAttempt: 1700000300,
				DelayDSN: &Deliver{Blob: storage.Hash{8}, Body: []byte("zstd"), BodySize: 800, Targets: []Target{{UserID: 7}}}},
		}},
		&QueueAdmin{Op: QueueHold, IDs: []uint64{3, 9}, All: true},
		&CollectLease{Account: "isp", Node: "n1", Until: 1700000060, Release: true},
		&CollectDeliver{Account: "isp", UID: "1700:42", Deliver: Deliver{Blob: storage.Hash{5}, Body: []byte("zstd"), BodySize: 700,
			InternalDate: 1700000002, Targets: []Target{{UserID: 7, Prefix: []byte("X-Collected: isp\r\n")}}}},
		&CollectForget{Account: "isp", UIDs: []string{"1700:41", "1700:42"}, All: true},
	}
}

func TestGolden(t *testing.T) {
	req := storage.RequestID{0xde, 0xad, 0xbe, 0xef}
	at := time.Unix(1700000000, 123)
	seen := map[Type]bool{}
	for _, c := range samples() {
		seen[c.Type()] = true
		name := filepath.Join("testdata", "golden", c.Type().String()+".hex")
		got := Encode(c, req, at)
		want, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) && *update {
			if err := os.WriteFile(name, []byte(hex.EncodeToString(got)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v (new type? run go test -run Golden -update)", c.Type(), err)
		}
		wantBytes, err := hex.DecodeString(strings.TrimSpace(string(want)))
		if err != nil {
			t.Fatal(err)
		}
		// The golden bytes are what older builds wrote: they must still
		// decode to the same command, whatever this build would write.
		env, err := Open(wantBytes)
		if err != nil {
			t.Fatalf("%s: golden envelope: %v", c.Type(), err)
		}
		dec, err := env.Decode()
		if err != nil {
			t.Fatalf("%s: golden body: %v", c.Type(), err)
		}
		if !reflect.DeepEqual(dec, c) {
			t.Errorf("%s: golden decodes to %+v, want %+v", c.Type(), dec, c)
		}
		if env.Request != req || !env.Time.Equal(at) {
			t.Errorf("%s: envelope %+v", c.Type(), env)
		}
		if !bytes.Equal(got, wantBytes) {
			t.Errorf("%s: encoding changed: an old node would read it differently.\n got %x\nwant %x", c.Type(), got, wantBytes)
		}
	}
	for typ := range specs {
		if !seen[typ] {
			t.Errorf("type %s has no sample and no golden file", typ)
		}
	}
}

func TestUnknownTypeAndFields(t *testing.T) {
	e := Encode(&AddDomain{Name: "x.test"}, storage.RequestID{}, time.Unix(0, 0))
	// A newer build's type number.
	e2 := append([]byte{e[0], 0xf0, 0x07}, e[2:]...)
	env, err := Open(e2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Decode(); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("err = %v, want ErrUnknownType", err)
	}
	// A newer build's extra field is skipped.
	withExtra := append(append([]byte(nil), e...), 0xa0, 0x06, 0x01) // field 100, varint 1
	env, err = Open(withExtra)
	if err != nil {
		t.Fatal(err)
	}
	c, err := env.Decode()
	if err != nil || c.(*AddDomain).Name != "x.test" {
		t.Fatalf("decode with extra field: %+v %v", c, err)
	}
}

func TestResponseRoundTrip(t *testing.T) {
	r := Response{Code: CodeExists, Message: "domain x: already exists", IDs: []uint64{0, 5, 0}, Digest: []byte{1}}
	got, err := UnmarshalResponse(r.Marshal())
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("%+v %v", got, err)
	}
	if !errors.Is(got.Err(), storage.ErrExists) {
		t.Fatal("response error does not match storage.ErrExists")
	}
}

func FuzzOpen(f *testing.F) {
	for _, c := range samples() {
		f.Add(Encode(c, storage.RequestID{1}, time.Unix(1, 0)))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := Open(b)
		if err != nil {
			return
		}
		_, _ = env.Decode()
	})
}
