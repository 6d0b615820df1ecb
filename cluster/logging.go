package cluster

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// newHCLogger routes hashicorp/raft's logger into slog.
func newHCLogger(name string, log *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.Info,
		Output:     &slogWriter{log: log.With("component", name)},
		JSONFormat: false,
		TimeFormat: " ",
	})
}

// slogWriter turns the text lines of a foreign logger into slog records at
// the level the line names.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := strings.TrimSpace(string(line))
		level := slog.LevelInfo
		for _, t := range levelTags {
			if i := strings.Index(s, t.tag); i >= 0 {
				level = t.level
				s = strings.TrimSpace(s[i+len(t.tag):])
				break
			}
		}
		w.log.Log(context.Background(), level, s)
	}
	return len(p), nil
}

var levelTags = []struct {
	tag   string
	level slog.Level
}{{"[ERROR]", slog.LevelError}, {"[ERR]", slog.LevelError}, {"[WARN]", slog.LevelWarn},
	{"[DEBUG]", slog.LevelDebug}, {"[TRACE]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo}}

var _ io.Writer = (*slogWriter)(nil)

func promHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
