//go:build flotilla_next

package admin

import (
	"net/http"

	"github.com/flotilla-mail/flotilla/cluster/command"
)

// extraRoutes exposes the test-only command kind of flotilla_next builds.
func extraRoutes(s *Server, route func(string, func(*http.Request) (any, error))) {
	route("POST /v1/debug/note", func(r *http.Request) (any, error) {
		var in command.Note
		if err := decode(r, &in); err != nil {
			return nil, err
		}
		_, err := s.propose(r, &in)
		return struct{}{}, err
	})
}
