package imap

import (
	"log/slog"
	"testing"
)

type tw struct{ t testing.TB }

func (w tw) Write(p []byte) (int, error) { w.t.Logf("%s", p); return len(p), nil }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tw{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
