package admin

import (
	"fmt"
	"net/http"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/smtp/relay"
	"github.com/flotilla-mail/flotilla/storage"
)

// relayRoutes serves the cluster-wide relay policy of the SMTP listeners:
// GET /v1/relay returns it, PUT /v1/relay replaces it (a relay.Settings:
// {"mode": "local-users", "trusted": ["10.0.0.0/8", "mx.example.org"]}).
func relayRoutes(s *Server, route func(string, func(*http.Request) (any, error))) {
	route("GET /v1/relay", s.getRelay)
	route("PUT /v1/relay", s.setRelay)
}

func (s *Server) getRelay(r *http.Request) (any, error) {
	var out relay.Settings
	err := s.read(r, func(tx *storage.Tx) error {
		var err error
		out, err = relay.Parse(tx.Setting(relay.SettingKey))
		return err
	})
	return out, err
}

func (s *Server) setRelay(r *http.Request) (any, error) {
	var in relay.Settings
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	set, err := in.Normalize()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	if _, err := s.propose(r, &command.SetSetting{Key: relay.SettingKey, Value: set.Marshal()}); err != nil {
		return nil, err
	}
	return set, nil
}
