// Package admin is the JSON API through which the CLI and other tools
// administer a cluster. Every node serves it on its HTTP port (with a bearer
// token) and on a control socket in its data dir (guarded by file mode).
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/storage"
)

// Server serves the admin API of one node.
type Server struct {
	Node *cluster.Node
	// Token is the bearer token the HTTP port requires; empty disables the
	// API there (the control socket still works).
	Token string
	// Derive turns a password into the secrets stored for a user, with
	// the optional password-equivalent ones that legacy asks for.
	Derive func(password string, legacy LegacySecrets) (storage.Secrets, error)
	Log    *slog.Logger
}

// Handler returns the API. With socket set, requests come through the
// control socket and need no token.
func (s *Server) Handler(socket bool) http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h func(*http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if !socket && !s.authorized(r) {
				writeError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
			defer cancel()
			v, err := h(r.WithContext(ctx))
			if err != nil {
				writeError(w, status(err), err)
				return
			}
			if raw, ok := v.(rawBody); ok {
				w.Header().Set("Content-Type", "message/rfc822")
				_, _ = w.Write(raw)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(v)
		})
	}
	route("GET /v1/cluster/status", s.clusterStatus)
	route("GET /v1/cluster/leader", func(r *http.Request) (any, error) {
		// This node's own view, asking nobody: cheap enough to poll.
		return struct {
			Leader string `json:"leader"`
		}{s.Node.Leader()}, nil
	})
	route("POST /v1/cluster/verify", s.clusterVerify)
	route("POST /v1/cluster/transfer-leadership", s.transferLeadership)
	route("POST /v1/cluster/remove", s.removeNode)
	route("GET /v1/cluster/upgrade-check", func(r *http.Request) (any, error) { return s.Node.UpgradeCheck(r.Context()), nil })
	route("POST /v1/cluster/snapshot", func(r *http.Request) (any, error) { return s.Node.Snapshot() })
	route("GET /v1/domains", s.listDomains)
	route("POST /v1/domains", s.addDomain)
	route("DELETE /v1/domains/{name}", s.removeDomain)
	route("GET /v1/users", s.listUsers)
	route("POST /v1/users", s.addUser)
	route("GET /v1/users/{address}", s.getUser)
	route("PUT /v1/users/{address}/password", s.setPassword)
	route("PUT /v1/users/{address}/quota", s.setQuota)
	route("DELETE /v1/users/{address}", s.removeUser)
	route("GET /v1/users/{address}/mailboxes", s.listMailboxes)
	route("GET /v1/users/{address}/messages", s.listMessages)
	route("GET /v1/users/{address}/messages/{uid}", s.getMessage)
	route("POST /v1/users/{address}/messages", s.importMessage)
	route("GET /v1/aliases", s.listAliases)
	route("POST /v1/aliases", s.addAlias)
	route("DELETE /v1/aliases/{address}", s.removeAlias)
	queueRoutes(s, route)
	deliveryRoutes(s, route)
	relayRoutes(s, route)
	extraRoutes(s, route)
	mux.HandleFunc("GET /v1/backup", func(w http.ResponseWriter, r *http.Request) {
		if !socket && !s.authorized(r) {
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
			return
		}
		s.handleBackup(w, r)
	})
	mux.HandleFunc("POST /v1/backup/restore", func(w http.ResponseWriter, r *http.Request) {
		if !socket && !s.authorized(r) {
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
			return
		}
		v, err := s.restoreBackup(w, r)
		if err != nil {
			writeError(w, status(err), err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	})
	mux.Handle("GET /metrics", s.Node.Metrics())
	profile := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !socket && !s.authorized(r) {
				writeError(w, http.StatusUnauthorized, errors.New("missing or wrong API token"))
				return
			}
			h(w, r)
		}
	}
	mux.HandleFunc("GET /debug/pprof/", profile(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", profile(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/trace", profile(pprof.Trace))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := s.Node.Status(r.Context())
		if st.Leader == "" {
			writeError(w, http.StatusServiceUnavailable, errors.New("no leader"))
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return mux
}

func (s *Server) authorized(r *http.Request) bool {
	if s.Token == "" {
		return false
	}
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.Token)) == 1
}

// Error is the body of every failed request.
type Error struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(Error{Error: err.Error()})
}

func status(err error) int {
	switch {
	case errors.Is(err, errBadRequest), errors.Is(err, storage.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, storage.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, storage.ErrExists):
		return http.StatusConflict
	case errors.Is(err, cluster.ErrUnavailable), errors.Is(err, cluster.ErrUncertain):
		return http.StatusServiceUnavailable
	case errors.Is(err, cluster.ErrNotSupported):
		return http.StatusPreconditionFailed
	}
	return http.StatusInternalServerError
}

var errBadRequest = errors.New("bad request")

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return nil
}

// read runs fn on a linearizable view, or on this node's own view with
// ?stale=1 (useful when the cluster has no leader).
func (s *Server) read(r *http.Request, fn func(*storage.Tx) error) error {
	if r.URL.Query().Get("stale") == "" {
		if err := s.Node.ReadIndex(r.Context()); err != nil {
			return err
		}
	}
	return s.Node.Store().View(fn)
}

func (s *Server) propose(r *http.Request, c command.Command) (command.Response, error) {
	resp, _, err := s.Node.Propose(r.Context(), c)
	return resp, err
}

func (s *Server) clusterStatus(r *http.Request) (any, error) { return s.Node.Status(r.Context()), nil }

func (s *Server) clusterVerify(r *http.Request) (any, error) { return s.Node.Verify(r.Context()) }

func (s *Server) transferLeadership(r *http.Request) (any, error) {
	var in struct {
		To string `json:"to"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	if err := s.Node.TransferLeadership(r.Context(), in.To); err != nil {
		return nil, err
	}
	for s.Node.Leader() == "" && r.Context().Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	return s.Node.Status(r.Context()), nil
}

func (s *Server) removeNode(r *http.Request) (any, error) {
	var in struct {
		ID string `json:"id"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	if in.ID == "" {
		return nil, fmt.Errorf("%w: no node id", errBadRequest)
	}
	return struct{}{}, s.Node.RemoveServer(r.Context(), in.ID)
}

// Domain is a domain in the API.
type Domain struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
}

func (s *Server) listDomains(r *http.Request) (any, error) {
	out := []Domain{}
	err := s.read(r, func(tx *storage.Tx) error {
		ds, err := tx.Domains()
		for _, d := range ds {
			out = append(out, Domain{Name: d.Name, Created: time.Unix(0, d.Created).UTC()})
		}
		return err
	})
	return out, err
}

func (s *Server) addDomain(r *http.Request) (any, error) {
	var in struct {
		Name string `json:"name"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	name, err := storage.NormalizeDomain(in.Name)
	if err != nil {
		return nil, err
	}
	if _, err := s.propose(r, &command.AddDomain{Name: name}); err != nil {
		return nil, err
	}
	return Domain{Name: name}, nil
}

func (s *Server) removeDomain(r *http.Request) (any, error) {
	_, err := s.propose(r, &command.RemoveDomain{Name: r.PathValue("name")})
	return struct{}{}, err
}

// User is a user in the API. Secrets never leave the node.
type User struct {
	Address    string    `json:"address"`
	Name       string    `json:"name,omitempty"`
	QuotaBytes int64     `json:"quota_bytes"`
	UsedBytes  int64     `json:"used_bytes"`
	Created    time.Time `json:"created"`
	Mailboxes  []string  `json:"mailboxes,omitempty"`
}

func userOut(tx *storage.Tx, u storage.User) User {
	used, _ := tx.UsedBytes(u.ID)
	return User{Address: u.Address, Name: u.Name, QuotaBytes: u.QuotaBytes, UsedBytes: used, Created: time.Unix(0, u.Created).UTC()}
}

func (s *Server) listUsers(r *http.Request) (any, error) {
	out := []User{}
	err := s.read(r, func(tx *storage.Tx) error {
		us, err := tx.Users(r.URL.Query().Get("domain"))
		for _, u := range us {
			out = append(out, userOut(tx, u))
		}
		return err
	})
	return out, err
}

func (s *Server) getUser(r *http.Request) (any, error) {
	var out User
	err := s.read(r, func(tx *storage.Tx) error {
		u, err := tx.User(r.PathValue("address"))
		if err != nil {
			return err
		}
		out = userOut(tx, u)
		mbs, err := tx.Mailboxes(u.ID)
		for _, mb := range mbs {
			out.Mailboxes = append(out.Mailboxes, mb.Name)
		}
		return err
	})
	return out, err
}

func (s *Server) addUser(r *http.Request) (any, error) {
	var in struct {
		Address  string `json:"address"`
		Password string `json:"password"`
		Name     string `json:"name"`
		Quota    int64  `json:"quota_bytes"`
		LegacySecrets
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	local, domain, err := storage.NormalizeAddress(in.Address, false)
	if err != nil {
		return nil, err
	}
	secrets, err := s.Derive(in.Password, in.LegacySecrets)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	addr := local + "@" + domain
	if _, err := s.propose(r, &command.AddUser{Address: addr, Name: in.Name, Secrets: secrets, QuotaBytes: in.Quota}); err != nil {
		return nil, err
	}
	return User{Address: addr, Name: in.Name, QuotaBytes: in.Quota}, nil
}

// LegacySecrets asks for the password-equivalent secrets of older
// mechanisms, beside the hashes every account has.
type LegacySecrets struct {
	CRAMMD5 bool `json:"cram_md5"` // CRAM-MD5's HMAC key state
	APOP    bool `json:"apop"`     // POP3 APOP's shared secret: the password itself
}

func (s *Server) setPassword(r *http.Request) (any, error) {
	var in struct {
		Password string `json:"password"`
		LegacySecrets
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	secrets, err := s.Derive(in.Password, in.LegacySecrets)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errBadRequest, err)
	}
	_, err = s.propose(r, &command.SetSecrets{Address: r.PathValue("address"), Secrets: secrets})
	return struct{}{}, err
}

func (s *Server) setQuota(r *http.Request) (any, error) {
	var in struct {
		Quota int64 `json:"quota_bytes"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	_, err := s.propose(r, &command.SetQuota{Address: r.PathValue("address"), QuotaBytes: in.Quota})
	return struct{}{}, err
}

func (s *Server) removeUser(r *http.Request) (any, error) {
	_, err := s.propose(r, &command.RemoveUser{Address: r.PathValue("address")})
	return struct{}{}, err
}

// Alias is an alias in the API.
type Alias struct {
	Address string   `json:"address"`
	Targets []string `json:"targets"`
}

func (s *Server) listAliases(r *http.Request) (any, error) {
	out := []Alias{}
	err := s.read(r, func(tx *storage.Tx) error {
		as, err := tx.Aliases(r.URL.Query().Get("domain"))
		for _, a := range as {
			out = append(out, Alias{Address: a.Address, Targets: a.Targets})
		}
		return err
	})
	return out, err
}

func (s *Server) addAlias(r *http.Request) (any, error) {
	var in Alias
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	if _, err := s.propose(r, &command.AddAlias{Address: in.Address, Targets: in.Targets}); err != nil {
		return nil, err
	}
	var out Alias
	err := s.Node.Store().View(func(tx *storage.Tx) error {
		a, err := tx.Alias(in.Address)
		out = Alias{Address: a.Address, Targets: a.Targets}
		return err
	})
	return out, err
}

func (s *Server) removeAlias(r *http.Request) (any, error) {
	_, err := s.propose(r, &command.RemoveAlias{Address: r.PathValue("address")})
	return struct{}{}, err
}
