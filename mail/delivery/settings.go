package delivery

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/storage"
)

// Delivery is configured by replicated cluster settings (JSON values of
// command.SetSetting), so every node works the queue the same way and an
// administrator changes them once, for all nodes, through the API or CLI.
const (
	KeySettings = "delivery"         // Settings
	KeyRelays   = "delivery.relays"  // []Relay
	KeyRoutes   = "delivery.routes"  // []Route
	KeyCollect  = "delivery.collect" // []Account
)

// ErrInvalid marks settings that cannot be used.
var ErrInvalid = fmt.Errorf("%w delivery settings", storage.ErrInvalid)

// Duration is a time.Duration written "5m" in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// TLS policies of a next hop.
const (
	TLSNone     = "none"     // never STARTTLS
	TLSMay      = "may"      // STARTTLS when offered, certificate not checked; plain text if it fails
	TLSRequire  = "require"  // STARTTLS or no delivery (certificate not checked)
	TLSVerify   = "verify"   // STARTTLS with a certificate valid for the host name
	TLSImplicit = "implicit" // TLS from the first byte (port 465)
)

var tlsModes = map[string]bool{TLSNone: true, TLSMay: true, TLSRequire: true, TLSVerify: true, TLSImplicit: true}

// Settings tune the queue. Zero values take the defaults of Defaults.
type Settings struct {
	// Retry is the wait after each failed attempt; the last one repeats.
	Retry []Duration `json:"retry,omitempty"`
	// Expire: a message still undelivered this long after it was queued
	// is bounced to its sender.
	Expire Duration `json:"expire,omitempty"`
	// DelayWarning: a message still undelivered this long after it was
	// queued makes one delay report to its sender ("off": never).
	DelayWarning Duration `json:"delay_warning,omitempty"`
	NoDelayDSN   bool     `json:"no_delay_dsn,omitempty"`
	// Lease is how long a node's claim on an entry lasts without renewal:
	// after a node dies, its entries wait at most this long.
	Lease Duration `json:"lease,omitempty"`
	// MaxHops: a message with more Received headers is a loop.
	MaxHops int `json:"max_hops,omitempty"`
	// Paused stops all delivery (entries stay queued).
	Paused bool `json:"paused,omitempty"`
	// Timeouts of outgoing SMTP.
	ConnectTimeout Duration `json:"connect_timeout,omitempty"`
	CommandTimeout Duration `json:"command_timeout,omitempty"`
	DataTimeout    Duration `json:"data_timeout,omitempty"`
	// PerDestination limits the connections a node opens to one
	// destination (a domain's MX hosts, a relay, a route) at once.
	PerDestination int `json:"per_destination,omitempty"`
	// TLS is the policy per recipient domain for MX delivery (default "may").
	TLS map[string]string `json:"tls,omitempty"`
}

// Defaults are the settings of a cluster that set none.
func Defaults() Settings {
	return Settings{
		Retry:        []Duration{Duration(time.Minute), Duration(5 * time.Minute), Duration(15 * time.Minute), Duration(30 * time.Minute), Duration(time.Hour), Duration(2 * time.Hour), Duration(4 * time.Hour)},
		Expire:       Duration(5 * 24 * time.Hour),
		DelayWarning: Duration(4 * time.Hour),
		Lease:        Duration(time.Minute),
		MaxHops:      30, ConnectTimeout: Duration(30 * time.Second), CommandTimeout: Duration(5 * time.Minute),
		DataTimeout: Duration(10 * time.Minute), PerDestination: 20,
	}
}

func (s *Settings) fill() {
	d := Defaults()
	if len(s.Retry) == 0 {
		s.Retry = d.Retry
	}
	if s.Expire == 0 {
		s.Expire = d.Expire
	}
	if s.DelayWarning == 0 {
		s.DelayWarning = d.DelayWarning
	}
	if s.Lease == 0 {
		s.Lease = d.Lease
	}
	if s.MaxHops == 0 {
		s.MaxHops = d.MaxHops
	}
	if s.ConnectTimeout == 0 {
		s.ConnectTimeout = d.ConnectTimeout
	}
	if s.CommandTimeout == 0 {
		s.CommandTimeout = d.CommandTimeout
	}
	if s.DataTimeout == 0 {
		s.DataTimeout = d.DataTimeout
	}
	if s.PerDestination == 0 {
		s.PerDestination = d.PerDestination
	}
}

// Validate checks settings before they are stored.
func (s *Settings) Validate() error {
	for _, r := range s.Retry {
		if r <= 0 {
			return fmt.Errorf("%w: retry intervals must be positive", ErrInvalid)
		}
	}
	if s.Expire < 0 || s.DelayWarning < 0 || s.Lease < 0 || s.MaxHops < 0 || s.PerDestination < 0 {
		return fmt.Errorf("%w: negative value", ErrInvalid)
	}
	if s.Lease != 0 && s.Lease.D() < time.Second {
		return fmt.Errorf("%w: lease shorter than 1s", ErrInvalid)
	}
	for d, m := range s.TLS {
		if !tlsModes[m] || m == TLSImplicit {
			return fmt.Errorf("%w: tls for %s: %q is not none, may, require or verify", ErrInvalid, d, m)
		}
	}
	return nil
}

// RetryAfter is the wait after the n-th failed attempt (n from 1).
func (s *Settings) RetryAfter(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	if n > len(s.Retry) {
		n = len(s.Retry)
	}
	return s.Retry[n-1].D()
}

// Host is one server mail is handed to.
type Host struct {
	// Addr is host:port (port 25 when left out).
	Addr string `json:"addr"`
	// TLS: none, may, require, verify or implicit (default may; routes
	// default to require).
	TLS string `json:"tls,omitempty"`
	// Username and Password authenticate (AUTH PLAIN or LOGIN).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// CertFile and KeyFile are a client certificate to present.
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// CAFile verifies the server's certificate (verify and implicit).
	CAFile string `json:"ca_file,omitempty"`
}

func (h *Host) validate(what string) error {
	if h.Addr == "" {
		return fmt.Errorf("%w: %s: a host without an address", ErrInvalid, what)
	}
	if _, _, err := net.SplitHostPort(h.hostPort()); err != nil {
		return fmt.Errorf("%w: %s: address %q: %v", ErrInvalid, what, h.Addr, err)
	}
	if h.TLS != "" && !tlsModes[h.TLS] {
		return fmt.Errorf("%w: %s: tls %q is not none, may, require, verify or implicit", ErrInvalid, what, h.TLS)
	}
	if (h.CertFile == "") != (h.KeyFile == "") {
		return fmt.Errorf("%w: %s: cert_file and key_file go together", ErrInvalid, what)
	}
	if h.Password != "" && h.Username == "" {
		return fmt.Errorf("%w: %s: a password without a username", ErrInvalid, what)
	}
	return nil
}

func (h *Host) hostPort() string {
	if _, _, err := net.SplitHostPort(h.Addr); err == nil {
		return h.Addr
	}
	return net.JoinHostPort(h.Addr, "25")
}

// Hand-over modes of a relay with several hosts.
const (
	Failover = "failover" // in turn: the next host only when one fails
	Spread   = "spread"   // all at once: transactions spread over the hosts
)

// Relay is a smart host: mail from the listed sender domains, or to the
// listed recipient domains, or (both lists empty) all mail that no route
// takes, goes through these hosts instead of the recipients' MX.
type Relay struct {
	Name       string   `json:"name"`
	Hosts      []Host   `json:"hosts"`
	Mode       string   `json:"mode,omitempty"`
	Senders    []string `json:"senders,omitempty"`
	Recipients []string `json:"recipients,omitempty"`
}

// Route sends the recipients it matches to another server (another site of
// the organisation) with their addresses unchanged. Patterns: "user@domain",
// "@domain" or "domain" (every user), and shell globs ("*.example.org",
// "sales-*@example.org"). Routes between sites authenticate (a username or
// a client certificate) and use TLS: a site never relays openly.
type Route struct {
	Name  string   `json:"name"`
	Match []string `json:"match"`
	Hosts []Host   `json:"hosts"`
	Mode  string   `json:"mode,omitempty"`
}

func validName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

func validatePatterns(what string, ps []string) error {
	for _, p := range ps {
		if p == "" {
			return fmt.Errorf("%w: %s: empty pattern", ErrInvalid, what)
		}
		if _, err := path.Match(strings.ToLower(p), ""); err != nil {
			return fmt.Errorf("%w: %s: pattern %q: %v", ErrInvalid, what, p, err)
		}
	}
	return nil
}

func validateHosts(what string, hosts []Host, mode string) error {
	if len(hosts) == 0 {
		return fmt.Errorf("%w: %s has no hosts", ErrInvalid, what)
	}
	for i := range hosts {
		if err := hosts[i].validate(what); err != nil {
			return err
		}
	}
	if mode != "" && mode != Failover && mode != Spread {
		return fmt.Errorf("%w: %s: mode %q is not failover or spread", ErrInvalid, what, mode)
	}
	return nil
}

// ValidateRelays checks a relay list.
func ValidateRelays(rs []Relay) error {
	seen := map[string]bool{}
	defaults := 0
	for _, r := range rs {
		if !validName(r.Name) || seen[r.Name] {
			return fmt.Errorf("%w: relay name %q missing, repeated or not [A-Za-z0-9._-]", ErrInvalid, r.Name)
		}
		seen[r.Name] = true
		if err := validateHosts("relay "+r.Name, r.Hosts, r.Mode); err != nil {
			return err
		}
		if err := validatePatterns("relay "+r.Name, append(append([]string{}, r.Senders...), r.Recipients...)); err != nil {
			return err
		}
		if len(r.Senders) == 0 && len(r.Recipients) == 0 {
			defaults++
		}
	}
	if defaults > 1 {
		return fmt.Errorf("%w: more than one default relay (no senders, no recipients)", ErrInvalid)
	}
	return nil
}

// ValidateRoutes checks a route list: sites authenticate and use TLS.
func ValidateRoutes(rs []Route) error {
	seen := map[string]bool{}
	for _, r := range rs {
		if !validName(r.Name) || seen[r.Name] {
			return fmt.Errorf("%w: route name %q missing, repeated or not [A-Za-z0-9._-]", ErrInvalid, r.Name)
		}
		seen[r.Name] = true
		if len(r.Match) == 0 {
			return fmt.Errorf("%w: route %s matches nothing", ErrInvalid, r.Name)
		}
		if err := validatePatterns("route "+r.Name, r.Match); err != nil {
			return err
		}
		if err := validateHosts("route "+r.Name, r.Hosts, r.Mode); err != nil {
			return err
		}
		for _, h := range r.Hosts {
			if h.Username == "" && h.CertFile == "" {
				return fmt.Errorf("%w: route %s: host %s must authenticate (username or cert_file): relay between sites is never open", ErrInvalid, r.Name, h.Addr)
			}
			if h.TLS == TLSNone || h.TLS == TLSMay {
				return fmt.Errorf("%w: route %s: host %s: tls must be require, verify or implicit between sites", ErrInvalid, r.Name, h.Addr)
			}
		}
	}
	return nil
}

// Account is an ISP mailbox that Flotilla collects mail from.
type Account struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"` // pop3 or imap
	Host     string `json:"host"`     // host:port
	TLS      string `json:"tls,omitempty"`
	Username string `json:"username"`
	Password string `json:"password"`
	CAFile   string `json:"ca_file,omitempty"`
	// Folder is the IMAP folder to collect (default INBOX).
	Folder string `json:"folder,omitempty"`
	// Interval between polls (default 5m).
	Interval Duration `json:"interval,omitempty"`
	// DeliverTo is the local address mail goes to; with MultiDrop, the
	// address mail goes to when its headers name no local recipient.
	DeliverTo string `json:"deliver_to,omitempty"`
	// MultiDrop sorts each message by its headers (Delivered-To,
	// X-Original-To, Envelope-To, To, Cc) to the local users they name.
	MultiDrop bool `json:"multidrop,omitempty"`
	// Keep leaves collected messages on the server (default: delete
	// them once they are stored).
	Keep bool `json:"keep,omitempty"`
}

// ValidateAccounts checks a collection account list.
func ValidateAccounts(as []Account) error {
	seen := map[string]bool{}
	for _, a := range as {
		if !validName(a.Name) || seen[a.Name] {
			return fmt.Errorf("%w: account name %q missing, repeated or not [A-Za-z0-9._-]", ErrInvalid, a.Name)
		}
		seen[a.Name] = true
		if a.Protocol != "pop3" && a.Protocol != "imap" {
			return fmt.Errorf("%w: account %s: protocol %q is not pop3 or imap", ErrInvalid, a.Name, a.Protocol)
		}
		if _, _, err := net.SplitHostPort(a.Host); err != nil {
			return fmt.Errorf("%w: account %s: host %q: give host:port", ErrInvalid, a.Name, a.Host)
		}
		if a.TLS != "" && a.TLS != TLSNone && a.TLS != TLSRequire && a.TLS != TLSVerify && a.TLS != TLSImplicit {
			return fmt.Errorf("%w: account %s: tls %q is not none, require, verify or implicit", ErrInvalid, a.Name, a.TLS)
		}
		if a.Username == "" {
			return fmt.Errorf("%w: account %s: no username", ErrInvalid, a.Name)
		}
		if a.DeliverTo == "" && !a.MultiDrop {
			return fmt.Errorf("%w: account %s: give deliver_to, multidrop or both", ErrInvalid, a.Name)
		}
		if a.Interval != 0 && a.Interval.D() < 100*time.Millisecond {
			return fmt.Errorf("%w: account %s: interval below 100ms", ErrInvalid, a.Name)
		}
	}
	return nil
}

// Config is everything delivery reads from the replicated settings.
type Config struct {
	Settings Settings
	Relays   []Relay
	Routes   []Route
	Accounts []Account
}

// LoadConfig reads the settings of the state in tx; damaged values (which
// validation keeps out) fall back to defaults, and the error says so.
func LoadConfig(tx *storage.Tx) (Config, error) {
	var c Config
	var errs []error
	get := func(key string, v any) {
		if b := tx.Setting(key); len(b) > 0 {
			if err := json.Unmarshal(b, v); err != nil {
				errs = append(errs, fmt.Errorf("setting %s: %w", key, err))
			}
		}
	}
	get(KeySettings, &c.Settings)
	get(KeyRelays, &c.Relays)
	get(KeyRoutes, &c.Routes)
	get(KeyCollect, &c.Accounts)
	c.Settings.fill()
	return c, errors.Join(errs...)
}

// ParseSetting checks the JSON value of one of the keys above and returns
// it normalised; the admin API stores only what passes.
func ParseSetting(key string, b []byte) ([]byte, error) {
	var v any
	var err error
	dec := func(p any) error {
		d := json.NewDecoder(strings.NewReader(string(b)))
		d.DisallowUnknownFields()
		if err := d.Decode(p); err != nil {
			return fmt.Errorf("%w: %s: %v", ErrInvalid, key, err)
		}
		return nil
	}
	switch key {
	case KeySettings:
		var s Settings
		if err = dec(&s); err == nil {
			err = s.Validate()
		}
		v = s
	case KeyRelays:
		rs := []Relay{}
		if err = dec(&rs); err == nil {
			err = ValidateRelays(rs)
		}
		v = rs
	case KeyRoutes:
		rs := []Route{}
		if err = dec(&rs); err == nil {
			err = ValidateRoutes(rs)
		}
		v = rs
	case KeyCollect:
		as := []Account{}
		if err = dec(&as); err == nil {
			err = ValidateAccounts(as)
		}
		v = as
	default:
		return nil, fmt.Errorf("%w: unknown key %q", ErrInvalid, key)
	}
	if err != nil {
		return nil, err
	}
	return json.Marshal(v)
}

// matchAddress reports whether address (lower case) matches a pattern:
// "user@domain", "@domain" or "domain" (any user there), or a glob.
func matchAddress(pattern, address string) bool {
	p := strings.ToLower(strings.TrimSpace(pattern))
	at := strings.LastIndexByte(address, '@')
	domain := address[at+1:]
	switch {
	case strings.HasPrefix(p, "@"):
		return globMatch(p[1:], domain)
	case !strings.Contains(p, "@"):
		return globMatch(p, domain)
	}
	return globMatch(p, address)
}

func globMatch(p, s string) bool {
	ok, err := path.Match(p, s)
	return err == nil && ok
}

// RouteFor returns the route that takes address, if any. Routes are tried
// in order; the first match wins. SMTP-in uses it to accept mail for users
// of a local domain who live at another site.
func (c *Config) RouteFor(address string) (*Route, bool) {
	a := strings.ToLower(address)
	for i := range c.Routes {
		for _, p := range c.Routes[i].Match {
			if matchAddress(p, a) {
				return &c.Routes[i], true
			}
		}
	}
	return nil, false
}

// RelayFor returns the relay for a message from sender to recipient: one
// listing the sender's domain first, then one listing the recipient's,
// then the default relay (if any).
func (c *Config) RelayFor(sender, recipient string) (*Relay, bool) {
	s, r := strings.ToLower(sender), strings.ToLower(recipient)
	if s != "" && strings.Contains(s, "@") {
		for i := range c.Relays {
			for _, p := range c.Relays[i].Senders {
				if matchAddress(p, s) {
					return &c.Relays[i], true
				}
			}
		}
	}
	for i := range c.Relays {
		for _, p := range c.Relays[i].Recipients {
			if matchAddress(p, r) {
				return &c.Relays[i], true
			}
		}
	}
	for i := range c.Relays {
		if len(c.Relays[i].Senders) == 0 && len(c.Relays[i].Recipients) == 0 {
			return &c.Relays[i], true
		}
	}
	return nil, false
}
