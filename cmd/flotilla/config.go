package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// config is every setting of `flotilla serve`. Each has a TOML key and a
// flag of the same name with dashes; flags win over the file.
type config struct {
	Dev             bool     `toml:"dev"`
	NodeID          string   `toml:"node_id"`
	DataDir         string   `toml:"data_dir"`
	Bind            string   `toml:"bind"`
	Advertise       string   `toml:"advertise"`
	Join            []string `toml:"join"`
	BootstrapExpect int      `toml:"bootstrap_expect"`
	Site            string   `toml:"site"`
	Hostname        string   `toml:"hostname"`

	SMTPPort       int `toml:"smtp_port"`
	SubmissionPort int `toml:"submission_port"`
	SMTPSPort      int `toml:"smtps_port"`
	POP3Port       int `toml:"pop3_port"`
	POP3SPort      int `toml:"pop3s_port"`
	IMAPPort       int `toml:"imap_port"`
	IMAPSPort      int `toml:"imaps_port"`
	HTTPPort       int `toml:"http_port"`
	HTTPSPort      int `toml:"https_port"`
	ClusterPort    int `toml:"cluster_port"`
	GossipPort     int `toml:"gossip_port"`

	ClusterCA   string `toml:"cluster_ca"`
	ClusterCert string `toml:"cluster_cert"`
	ClusterKey  string `toml:"cluster_key"`
	GossipKey   string `toml:"gossip_key"`
	TLSCert     string `toml:"tls_cert"`
	TLSKey      string `toml:"tls_key"`
	APIToken    string `toml:"api_token"`

	DeadServerGrace   duration `toml:"dead_server_grace"`
	HeartbeatTimeout  duration `toml:"heartbeat_timeout"`
	SnapshotInterval  duration `toml:"snapshot_interval"`
	SnapshotThreshold uint64   `toml:"snapshot_threshold"`
	TrailingLogs      uint64   `toml:"trailing_logs"`
	ShutdownGrace     duration `toml:"shutdown_grace"`
	LogLevel          string   `toml:"log_level"`
	LogFormat         string   `toml:"log_format"`
	UnsafeNoSync      bool     `toml:"unsafe_no_fsync"`

	DNSResolver string `toml:"dns_resolver"`
	GCPercent   int    `toml:"gc_percent"`
	// MaxConnections and MaxConnectionsPerIP cap each mail protocol's
	// sessions on this node (SMTP, IMAP, POP3 each counting all its ports):
	// in all, and from one IP address.
	MaxConnections      int `toml:"max_connections"`
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"`
	// MinFreeSpace is the free space under the data dir below which new
	// mail is turned away (SMTP 452 4.3.1, IMAP APPEND NO [UNAVAILABLE],
	// collection waits); 0 is one and a half times the largest message.
	MinFreeSpace size `toml:"min_free_space"`
	// AllowCRAMMD5 offers CRAM-MD5 on SMTP, IMAP and POP3; only accounts
	// whose password was set with `--cram-md5` can use it.
	AllowCRAMMD5 bool `toml:"allow_cram_md5"`
	// AllowAPOP offers POP3's APOP to accounts whose password was set with
	// `--apop` (their password is then stored as such).
	AllowAPOP bool `toml:"allow_apop"`
	// AllowInsecureAuth lets passwords be sent on cleartext connections
	// from any address (IMAP LOGIN, POP3 USER/PASS, SMTP AUTH), for
	// networks where TLS is done elsewhere; by default only over TLS or
	// from loopback.
	AllowInsecureAuth bool `toml:"allow_insecure_auth"`
}

// duration reads "5m" from TOML and flags alike.
type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d *duration) String() string { return d.Duration.String() }
func (d *duration) Set(s string) error {
	return d.UnmarshalText([]byte(s))
}

// size is a number of bytes, written "52428800", "48MiB" or "2G" (units of
// 1024), in TOML and flags alike.
type size struct{ n int64 }

func (z *size) UnmarshalText(b []byte) error {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(string(b))), "B"), "I")
	shift := 0
	if t != "" {
		if i := strings.IndexByte("KMGT", t[len(t)-1]); i >= 0 {
			shift, t = 10*(i+1), t[:len(t)-1]
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || v < 0 || v > math.MaxInt64>>shift {
		return fmt.Errorf("%q is not a size (like 52428800, 48MiB or 2G)", b)
	}
	z.n = v << shift
	return nil
}

func (z *size) String() string { return strconv.FormatInt(z.n, 10) }
func (z *size) Set(s string) error {
	return z.UnmarshalText([]byte(s))
}

// stringList is a comma-separated flag.
type stringList struct{ p *[]string }

func (l stringList) String() string {
	if l.p == nil {
		return ""
	}
	return strings.Join(*l.p, ",")
}

func (l stringList) Set(s string) error {
	*l.p = nil
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l.p = append(*l.p, v)
		}
	}
	return nil
}

func defaultConfig() config {
	return config{
		DataDir: "./flotilla-data", Bind: "0.0.0.0",
		SMTPPort: 25, SubmissionPort: 587, SMTPSPort: 465, POP3Port: 110, POP3SPort: 995,
		IMAPPort: 143, IMAPSPort: 993, HTTPPort: 8080, HTTPSPort: 443, ClusterPort: 7000, GossipPort: 7946,
		DeadServerGrace: duration{5 * time.Minute}, ShutdownGrace: duration{10 * time.Second},
		LogLevel: "info", LogFormat: "text", GCPercent: 400,
		MaxConnections: 2000, MaxConnectionsPerIP: 200,
	}
}

// devPorts are the unprivileged ports of `serve --dev`.
func (c *config) devPorts() {
	c.SMTPPort, c.SubmissionPort, c.SMTPSPort = 2525, 2587, 2465
	c.POP3Port, c.POP3SPort, c.IMAPPort, c.IMAPSPort = 2110, 2995, 2143, 2993
	c.HTTPPort, c.HTTPSPort = 8080, 8443
}

// loadConfig reads the --config file, if any, then applies the flags.
func loadConfig(args []string, stderr io.Writer) (config, error) {
	cfg := defaultConfig()
	path, dev := scanConfigFlags(args)
	if path != "" && !dev {
		// dev=true in the file changes the defaults the file then overrides
		var probe struct {
			Dev bool `toml:"dev"`
		}
		_, _ = toml.DecodeFile(path, &probe)
		dev = probe.Dev
	}
	if dev {
		cfg.devPorts()
	}
	if path != "" {
		md, err := toml.DecodeFile(path, &cfg)
		if err != nil {
			var perr toml.ParseError
			if errors.As(err, &perr) {
				where := ""
				if perr.LastKey != "" {
					where = perr.LastKey + ": "
				}
				return cfg, fmt.Errorf("config %s: line %d: %s%s", path, perr.Position.Line, where, perr.Message)
			}
			return cfg, fmt.Errorf("config %s: %w", path, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			keys := make([]string, len(und))
			for i, k := range und {
				keys[i] = k.String()
			}
			return cfg, fmt.Errorf("config %s: unknown setting %s", path, strings.Join(keys, ", "))
		}
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var configPath string
	fs.StringVar(&configPath, "config", path, "TOML config file")
	fs.BoolVar(&cfg.Dev, "dev", cfg.Dev, "single-node demo: unprivileged ports, self-made TLS, a demo domain and login")
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "this node's unique ID (default: the data dir's, or the host name)")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "where this node keeps its state")
	fs.StringVar(&cfg.Bind, "bind", cfg.Bind, "IP address every listener binds to")
	fs.StringVar(&cfg.Advertise, "advertise", cfg.Advertise, "IP address peers reach this node at (default: --bind)")
	fs.Var(stringList{&cfg.Join}, "join", "peers' gossip addresses, host:port,...")
	fs.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", cfg.BootstrapExpect, "form a new cluster once this many fresh nodes see each other")
	fs.StringVar(&cfg.Site, "site", cfg.Site, "the site (cluster location) this node belongs to")
	fs.StringVar(&cfg.Hostname, "hostname", cfg.Hostname, "host name in greetings and trace headers (default: the system's)")
	for _, p := range []struct {
		name string
		v    *int
		what string
	}{
		{"smtp-port", &cfg.SMTPPort, "SMTP (MX)"}, {"submission-port", &cfg.SubmissionPort, "submission (STARTTLS)"},
		{"smtps-port", &cfg.SMTPSPort, "submission (implicit TLS)"}, {"pop3-port", &cfg.POP3Port, "POP3"},
		{"pop3s-port", &cfg.POP3SPort, "POP3 (implicit TLS)"}, {"imap-port", &cfg.IMAPPort, "IMAP"},
		{"imaps-port", &cfg.IMAPSPort, "IMAP (implicit TLS)"}, {"http-port", &cfg.HTTPPort, "HTTP: admin API, web"},
		{"https-port", &cfg.HTTPSPort, "HTTPS"}, {"cluster-port", &cfg.ClusterPort, "Raft and node RPC (mutual TLS)"},
		{"gossip-port", &cfg.GossipPort, "membership gossip"},
	} {
		fs.IntVar(p.v, p.name, *p.v, p.what+" port, 0 = off")
	}
	fs.StringVar(&cfg.ClusterCA, "cluster-ca", cfg.ClusterCA, "cluster CA certificate (flotilla cluster tls-init)")
	fs.StringVar(&cfg.ClusterCert, "cluster-cert", cfg.ClusterCert, "this node's cluster certificate")
	fs.StringVar(&cfg.ClusterKey, "cluster-key", cfg.ClusterKey, "this node's cluster key")
	fs.StringVar(&cfg.GossipKey, "gossip-key", cfg.GossipKey, "gossip encryption key, base64 of 16, 24 or 32 bytes")
	fs.StringVar(&cfg.TLSCert, "tls-cert", cfg.TLSCert, "certificate for the mail and web listeners (reloaded when it changes)")
	fs.StringVar(&cfg.TLSKey, "tls-key", cfg.TLSKey, "key for --tls-cert")
	fs.StringVar(&cfg.APIToken, "api-token", cfg.APIToken, "bearer token of the admin API on the HTTP port (or FLOTILLA_API_TOKEN)")
	fs.Var(&cfg.DeadServerGrace, "dead-server-grace", "remove a voter gone this long")
	fs.Var(&cfg.HeartbeatTimeout, "heartbeat-timeout", "Raft heartbeat and election timeout (default 500ms)")
	fs.Var(&cfg.SnapshotInterval, "snapshot-interval", "how often to consider a snapshot (default 2m)")
	fs.Uint64Var(&cfg.SnapshotThreshold, "snapshot-threshold", cfg.SnapshotThreshold, "log entries between snapshots (default 16384)")
	fs.Uint64Var(&cfg.TrailingLogs, "trailing-logs", cfg.TrailingLogs, "log entries kept after a snapshot, for followers that lag (default 10240)")
	fs.Var(&cfg.ShutdownGrace, "shutdown-grace", "how long SIGTERM waits for sessions to finish")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", cfg.LogFormat, "text or json")
	fs.StringVar(&cfg.DNSResolver, "dns-resolver", cfg.DNSResolver, "host:port of the DNS server every lookup of this node goes to (default: /etc/resolv.conf)")
	fs.BoolVar(&cfg.AllowAPOP, "allow-apop", cfg.AllowAPOP, "offer POP3 APOP (to accounts whose password was set with --apop)")
	fs.BoolVar(&cfg.AllowInsecureAuth, "allow-insecure-auth", cfg.AllowInsecureAuth, "accept passwords on cleartext connections from any address, not only over TLS or from loopback")
	fs.BoolVar(&cfg.AllowCRAMMD5, "allow-cram-md5", cfg.AllowCRAMMD5, "offer CRAM-MD5 (to accounts whose password was set with --cram-md5)")
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "sessions at once per mail protocol (SMTP, IMAP, POP3) on this node")
	fs.IntVar(&cfg.MaxConnectionsPerIP, "max-connections-per-ip", cfg.MaxConnectionsPerIP, "sessions at once per mail protocol from one IP address")
	fs.Var(&cfg.MinFreeSpace, "min-free-space", "free space under the data dir below which new mail is turned away (SMTP 452 4.3.1, IMAP APPEND NO), like 64MiB (default 1.5 times the largest message)")
	fs.IntVar(&cfg.GCPercent, "gc-percent", cfg.GCPercent, "Go GC target (GOGC), when GOGC is not set: the heap is small, and collecting less often is a third more commits per CPU")
	fs.BoolVar(&cfg.UnsafeNoSync, "unsafe-no-fsync", cfg.UnsafeNoSync, "skip fsync: loses acknowledged mail on power loss; for throwaway tests only")
	if err := fs.Parse(args); err != nil {
		return cfg, exitError{2}
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))
	}
	if cfg.APIToken == "" {
		cfg.APIToken = os.Getenv("FLOTILLA_API_TOKEN")
	}
	useDNSResolver(cfg.DNSResolver)
	return cfg, cfg.validate()
}

// scanConfigFlags finds --config and --dev before the flags are parsed, so
// that the file (and dev defaults) come first and flags override them.
func scanConfigFlags(args []string) (path string, dev bool) {
	for i := 0; i < len(args); i++ {
		a := strings.TrimLeft(args[i], "-")
		if len(a) == len(args[i]) {
			continue
		}
		switch {
		case a == "config" && i+1 < len(args):
			path = args[i+1]
		case strings.HasPrefix(a, "config="):
			path = strings.TrimPrefix(a, "config=")
		case a == "dev" || a == "dev=true":
			dev = true
		}
	}
	return path, dev
}

func (c *config) validate() error {
	if c.DataDir == "" {
		return errors.New("serve: --data-dir is empty")
	}
	ports := map[int]string{}
	for name, p := range map[string]int{"smtp": c.SMTPPort, "submission": c.SubmissionPort, "smtps": c.SMTPSPort,
		"pop3": c.POP3Port, "pop3s": c.POP3SPort, "imap": c.IMAPPort, "imaps": c.IMAPSPort, "http": c.HTTPPort,
		"https": c.HTTPSPort, "cluster": c.ClusterPort, "gossip": c.GossipPort} {
		if p < 0 || p > 65535 {
			return fmt.Errorf("serve: --%s-port %d is not a port", name, p)
		}
		if p == 0 {
			continue
		}
		if other, ok := ports[p]; ok {
			return fmt.Errorf("serve: --%s-port and --%s-port are both %d", name, other, p)
		}
		ports[p] = name
	}
	if c.ClusterPort == 0 || c.GossipPort == 0 {
		return errors.New("serve: the cluster and gossip ports cannot be off")
	}
	if c.GossipKey != "" {
		k, err := base64.StdEncoding.DecodeString(c.GossipKey)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			return errors.New("serve: --gossip-key must be base64 of 16, 24 or 32 bytes")
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("serve: --tls-cert and --tls-key go together")
	}
	if c.MaxConnections < 1 || c.MaxConnectionsPerIP < 1 {
		return fmt.Errorf("serve: --max-connections (%d) and --max-connections-per-ip (%d) must be at least 1", c.MaxConnections, c.MaxConnectionsPerIP)
	}
	return nil
}
