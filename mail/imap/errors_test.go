package imap

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/flotilla-mail/flotilla/cluster"
)

// TestRespForUnknownOutcome: a write whose fate is unknown, or that was
// committed but not seen, must never be answered "try again": a client
// repeating an APPEND would store the message twice.
func TestRespForUnknownOutcome(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("propose: %w", cluster.ErrUncertain), "may still take effect"},
		{fmt.Errorf("propose: %w", cluster.ErrUnavailable), "try again"},
		{context.Canceled, "try again"}, // nothing was proposed
	} {
		e, _ := respFor(tc.err)
		if e.Status != "NO" || e.Code != "UNAVAILABLE" || !strings.Contains(e.Text, tc.want) {
			t.Errorf("respFor(%v) = %s; want NO [UNAVAILABLE] ... %q", tc.err, e, tc.want)
		}
		if tc.want != "try again" && strings.Contains(e.Text, "try again") {
			t.Errorf("respFor(%v) invites a retry: %s", tc.err, e)
		}
	}
}
