package admin

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/delivery"
	"github.com/flotilla-mail/flotilla/storage"
)

func deliveryRoutes(s *Server, route func(string, func(*http.Request) (any, error))) {
	route("GET /v1/delivery/stats", s.deliveryStats)
	route("GET /v1/delivery/collect/status", s.collectStatus)
	route("GET /v1/delivery/{kind}", s.getDelivery)
	route("PUT /v1/delivery/{kind}", s.putDelivery)
}

// deliveryKeys maps the API's names to the settings keys.
var deliveryKeys = map[string]string{
	"settings": delivery.KeySettings, "relays": delivery.KeyRelays,
	"routes": delivery.KeyRoutes, "collect": delivery.KeyCollect,
}

func deliveryKey(r *http.Request) (string, error) {
	k, ok := deliveryKeys[r.PathValue("kind")]
	if !ok {
		return "", fmt.Errorf("%w: %q: settings, relays, routes or collect", errBadRequest, r.PathValue("kind"))
	}
	return k, nil
}

// redacted stands for a stored password in what the API shows.
const redacted = "(set)"

// getDelivery shows one kind of delivery settings, with the defaults filled
// in and passwords hidden.
func (s *Server) getDelivery(r *http.Request) (any, error) {
	key, err := deliveryKey(r)
	if err != nil {
		return nil, err
	}
	var cfg delivery.Config
	if err := s.read(r, func(tx *storage.Tx) error {
		cfg, err = delivery.LoadConfig(tx)
		return err
	}); err != nil {
		return nil, err
	}
	hide := func(hs []delivery.Host) {
		for i := range hs {
			if hs[i].Password != "" {
				hs[i].Password = redacted
			}
		}
	}
	switch key {
	case delivery.KeySettings:
		return cfg.Settings, nil
	case delivery.KeyRelays:
		out := append([]delivery.Relay{}, cfg.Relays...)
		for i := range out {
			out[i].Hosts = append([]delivery.Host(nil), out[i].Hosts...)
			hide(out[i].Hosts)
		}
		return out, nil
	case delivery.KeyRoutes:
		out := append([]delivery.Route{}, cfg.Routes...)
		for i := range out {
			out[i].Hosts = append([]delivery.Host(nil), out[i].Hosts...)
			hide(out[i].Hosts)
		}
		return out, nil
	}
	out := append([]delivery.Account{}, cfg.Accounts...)
	for i := range out {
		if out[i].Password != "" {
			out[i].Password = redacted
		}
	}
	return out, nil
}

// putDelivery replaces one kind of delivery settings for the whole cluster.
// A password given as "(set)" keeps the stored one of the same name.
func (s *Server) putDelivery(r *http.Request) (any, error) {
	key, err := deliveryKey(r)
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	norm, err := delivery.ParseSetting(key, b)
	if err != nil {
		return nil, err
	}
	if norm, err = s.keepPasswords(r, key, norm); err != nil {
		return nil, err
	}
	if _, err := s.propose(r, &command.SetSetting{Key: key, Value: norm}); err != nil {
		return nil, err
	}
	return json.RawMessage(norm), nil
}

func (s *Server) keepPasswords(r *http.Request, key string, norm []byte) ([]byte, error) {
	var cur delivery.Config
	if err := s.read(r, func(tx *storage.Tx) error {
		cur, _ = delivery.LoadConfig(tx)
		return nil
	}); err != nil {
		return nil, err
	}
	keep := func(name string, old []delivery.Host, hs []delivery.Host) {
		for i := range hs {
			if hs[i].Password != redacted {
				continue
			}
			hs[i].Password = ""
			for _, o := range old {
				if o.Addr == hs[i].Addr && o.Username == hs[i].Username {
					hs[i].Password = o.Password
				}
			}
		}
	}
	switch key {
	case delivery.KeyRelays:
		var rs []delivery.Relay
		_ = json.Unmarshal(norm, &rs)
		for i := range rs {
			for _, o := range cur.Relays {
				if o.Name == rs[i].Name {
					keep(o.Name, o.Hosts, rs[i].Hosts)
				}
			}
		}
		return json.Marshal(rs)
	case delivery.KeyRoutes:
		var rs []delivery.Route
		_ = json.Unmarshal(norm, &rs)
		for i := range rs {
			for _, o := range cur.Routes {
				if o.Name == rs[i].Name {
					keep(o.Name, o.Hosts, rs[i].Hosts)
				}
			}
		}
		return json.Marshal(rs)
	case delivery.KeyCollect:
		var as []delivery.Account
		_ = json.Unmarshal(norm, &as)
		for i := range as {
			if as[i].Password != redacted {
				continue
			}
			as[i].Password = ""
			for _, o := range cur.Accounts {
				if o.Name == as[i].Name {
					as[i].Password = o.Password
				}
			}
		}
		return json.Marshal(as)
	}
	return norm, nil
}

func (s *Server) deliveryStats(r *http.Request) (any, error) {
	w := delivery.Running(s.Node)
	if w == nil {
		return delivery.Stats{Node: s.Node.ID()}, nil
	}
	return w.Stats(), nil
}

// CollectStatus is where collection from one account stands.
type CollectStatus struct {
	Account    string     `json:"account"`
	LeaseNode  string     `json:"lease_node,omitempty"`
	LeaseUntil *time.Time `json:"lease_until,omitempty"`
	Remembered int        `json:"remembered_uids"`
}

func (s *Server) collectStatus(r *http.Request) (any, error) {
	out := []CollectStatus{}
	err := s.read(r, func(tx *storage.Tx) error {
		cfg, _ := delivery.LoadConfig(tx)
		for _, a := range cfg.Accounts {
			st := CollectStatus{Account: a.Name}
			node, until, err := tx.CollectLeaseOf(a.Name)
			if err != nil {
				return err
			}
			if node != "" {
				st.LeaseNode = node
				u := time.Unix(0, until).UTC()
				st.LeaseUntil = &u
			}
			if err := tx.CollectedUIDs(a.Name, func(string) { st.Remembered++ }); err != nil {
				return err
			}
			out = append(out, st)
		}
		return nil
	})
	return out, err
}
