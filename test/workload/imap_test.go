package workload

import (
	"strings"
	"testing"

	goimap "github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

func msg(seq uint32, uid goimap.UID, modseq uint64, flags ...goimap.Flag) *imapclient.FetchMessageBuffer {
	return &imapclient.FetchMessageBuffer{SeqNum: seq, UID: uid, ModSeq: modseq, Flags: flags}
}

// TestObserve: a connection's history reports what must not happen.
func TestObserve(t *testing.T) {
	w := &IMAP{ids: map[string]string{}}
	h := &history{node: "n1", user: "u", msgs: map[uint32]*seenMsg{}}
	sel := func(validity uint32, highest uint64, next goimap.UID, n uint32) *goimap.SelectData {
		return &goimap.SelectData{UIDValidity: validity, HighestModSeq: highest, UIDNext: next, NumMessages: n}
	}
	fresh := w.observe(h, sel(7, 10, 4, 2), []*imapclient.FetchMessageBuffer{msg(2, 3, 9, `\Recent`), msg(1, 1, 5, "$a")})
	if len(fresh) != 2 || len(w.problems.list) != 0 {
		t.Fatalf("fresh %v, problems %v", fresh, w.problems.list)
	}
	h.own = append(h.own, FlagWrite{UID: 3, Flag: "$mine"})
	// HIGHESTMODSEQ and UIDNEXT back, UID 1 gone with its flag, UID 2
	// appears below 3, the own write is missing, UIDVALIDITY changes.
	w.observe(h, sel(8, 9, 3, 2), []*imapclient.FetchMessageBuffer{msg(1, 2, 6), msg(2, 3, 8)})
	want := []string{"UIDVALIDITY changed", "HIGHESTMODSEQ went back", "UIDNEXT went back", "UID 1 vanished",
		"UID 2 appeared below", "UID 3: MODSEQ went back", "read-your-writes: UID 3 lacks $mine"}
	got := strings.Join(w.problems.list, "\n")
	for _, s := range want {
		if !strings.Contains(got, s) {
			t.Errorf("no problem %q in:\n%s", s, got)
		}
	}
	if strings.Contains(got, `\Recent`) {
		t.Errorf("\\Recent is per session, its loss is no problem:\n%s", got)
	}
	// Flags seen are never lost; UIDs in sequence order increase.
	w.problems.list = nil
	w.observe(h, sel(8, 12, 5, 3), []*imapclient.FetchMessageBuffer{msg(1, 2, 6), msg(2, 4, 11, "$X"), msg(3, 3, 12)})
	got = strings.Join(w.problems.list, "\n")
	w.observe(h, sel(8, 12, 5, 3), []*imapclient.FetchMessageBuffer{msg(1, 2, 6), msg(2, 3, 12), msg(3, 4, 11, "$y")})
	got += "\n" + strings.Join(w.problems.list, "\n")
	for _, s := range []string{"UID 3 at sequence number 3, after UID 4", "UID 4 lost flag $X"} {
		if !strings.Contains(got, s) {
			t.Errorf("no problem %q in:\n%s", s, got)
		}
	}
}
