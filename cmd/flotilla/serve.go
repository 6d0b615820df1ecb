package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/cluster/command"
	"github.com/flotilla-mail/flotilla/mail/admin"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/storage"
)

func buildVersion() string {
	return fmt.Sprintf("flotilla %s (command version %d)", cluster.BuildVersion, command.Version())
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: text or json", format)
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" && cfg.GCPercent > 0 {
		debug.SetGCPercent(cfg.GCPercent)
	}
	if cfg.Dev {
		if err := prepareDev(&cfg); err != nil {
			return err
		}
	}
	tlsFiles, err := clusterTLSFiles(&cfg)
	if err != nil {
		return err
	}
	advertise := cfg.Advertise
	if advertise == "" {
		if ip := net.ParseIP(cfg.Bind); ip == nil || ip.IsUnspecified() {
			return errors.New("serve: --advertise is needed when --bind is not one address")
		}
		advertise = cfg.Bind
	}
	var gossipKey []byte
	if cfg.GossipKey != "" {
		gossipKey, _ = base64.StdEncoding.DecodeString(cfg.GossipKey)
	}
	httpAddr := ""
	if cfg.HTTPPort != 0 {
		httpAddr = net.JoinHostPort(advertise, strconv.Itoa(cfg.HTTPPort))
	}
	node, err := cluster.New(cluster.Config{
		NodeID: cfg.NodeID, DataDir: cfg.DataDir, BindAddr: cfg.Bind, AdvertiseAddr: advertise,
		ClusterPort: cfg.ClusterPort, GossipPort: cfg.GossipPort, HTTPAddr: httpAddr,
		Join: cfg.Join, BootstrapExpect: cfg.BootstrapExpect, Site: cfg.Site, TLS: tlsFiles,
		GossipKey: gossipKey, DeadServerGrace: cfg.DeadServerGrace.Duration,
		HeartbeatTimeout: cfg.HeartbeatTimeout.Duration, SnapshotInterval: cfg.SnapshotInterval.Duration,
		SnapshotThreshold: cfg.SnapshotThreshold, TrailingLogs: cfg.TrailingLogs, NoSync: cfg.UnsafeNoSync, Logger: log,
	})
	if err != nil {
		return err
	}
	if err := node.Start(ctx); err != nil {
		_ = node.Shutdown(context.Background())
		return err
	}
	log.Info("node started", "version", buildVersion(), "cluster", net.JoinHostPort(advertise, strconv.Itoa(cfg.ClusterPort)))

	api := &admin.Server{Node: node, Token: cfg.APIToken, Log: log, Derive: func(pw string, legacy admin.LegacySecrets) (storage.Secrets, error) {
		p := auth.DefaultParams()
		p.CRAMMD5, p.APOP = legacy.CRAMMD5, legacy.APOP
		s, err := auth.Derive(pw, p)
		return storage.Secrets(s), err
	}}
	var servers []*http.Server
	stopMail := func(context.Context) {}
	shutdownAll := func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace.Duration)
		defer cancel()
		stopMail(sctx)
		for _, s := range servers {
			_ = s.Shutdown(sctx)
		}
		if err := node.Shutdown(sctx); err != nil {
			log.Warn("shutdown", "err", err)
		}
	}
	sock, err := listenControl(cfg.DataDir)
	if err != nil {
		shutdownAll()
		return err
	}
	servers = append(servers, startHTTP(sock, api.Handler(true), log))
	if cfg.HTTPPort != 0 {
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Bind, strconv.Itoa(cfg.HTTPPort)))
		if err != nil {
			shutdownAll()
			return fmt.Errorf("http port: %w", err)
		}
		servers = append(servers, startHTTP(ln, api.Handler(false), log))
	}
	env, err := newMailEnv(&cfg, node, log)
	if err != nil {
		shutdownAll()
		return err
	}
	if stopMail, err = startMail(ctx, env); err != nil {
		shutdownAll()
		return err
	}
	if cfg.Dev {
		go devWelcome(ctx, node, api, &cfg, stdout, log)
	}

	select {
	case <-ctx.Done():
		log.Info("stopping: refusing new work, draining, handing leadership over")
		shutdownAll()
		log.Info("stopped")
		return nil
	case err := <-node.Fatal():
		// The state machine is stuck on purpose (see cluster.fsm): exit
		// without waiting for it. Nothing half-applied was committed.
		return err
	}
}

func startHTTP(ln net.Listener, h http.Handler, log *slog.Logger) *http.Server {
	s := &http.Server{
		Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute,
		WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return s
}

// listenControl opens the control socket; only the data dir's owner may use it.
func listenControl(dataDir string) (net.Listener, error) {
	path := filepath.Join(dataDir, "control.sock")
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// clusterTLSFiles finds the node's cluster credentials: the flags, or
// ca.pem, node.pem and node-key.pem in <data-dir>/tls.
func clusterTLSFiles(cfg *config) (cluster.TLSFiles, error) {
	f := cluster.TLSFiles{CA: cfg.ClusterCA, Cert: cfg.ClusterCert, Key: cfg.ClusterKey}
	if f.CA == "" && f.Cert == "" && f.Key == "" {
		dir := filepath.Join(cfg.DataDir, "tls")
		f = cluster.TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "node.pem"), Key: filepath.Join(dir, "node-key.pem")}
		if _, err := os.Stat(f.CA); err != nil {
			return f, errors.New("serve: no cluster TLS: make it with `flotilla cluster tls-init` and give --cluster-ca, --cluster-cert and --cluster-key (or use --dev)")
		}
	}
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return f, errors.New("serve: --cluster-ca, --cluster-cert and --cluster-key go together")
	}
	return f, nil
}

// prepareDev makes a single node work out of the box: loopback, its own
// cluster CA, an API token kept in the data dir.
func prepareDev(cfg *config) error {
	if cfg.NodeID == "" {
		cfg.NodeID = "dev"
	}
	if cfg.Bind == "0.0.0.0" {
		cfg.Bind = "127.0.0.1"
	}
	if cfg.BootstrapExpect == 0 && len(cfg.Join) == 0 {
		cfg.BootstrapExpect = 1
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	if cfg.ClusterCA == "" {
		dir := filepath.Join(cfg.DataDir, "tls")
		if err := cluster.TLSInit(dir, []string{"node"}, []string{cfg.Bind}); err != nil {
			return fmt.Errorf("dev TLS: %w", err)
		}
	}
	if cfg.APIToken == "" {
		tok, err := readOrCreate(filepath.Join(cfg.DataDir, "api-token"))
		if err != nil {
			return err
		}
		cfg.APIToken = tok
	}
	return nil
}

// readOrCreate returns the secret kept in path, making one the first time.
func readOrCreate(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	var r [18]byte
	_, _ = rand.Read(r[:])
	s := hex.EncodeToString(r[:])
	return s, os.WriteFile(path, []byte(s+"\n"), 0o600)
}

const demoDomain = "demo.test"

// devWelcome creates the demo domain and user once the node leads, and
// prints how to log in.
func devWelcome(ctx context.Context, node *cluster.Node, api *admin.Server, cfg *config, stdout io.Writer, log *slog.Logger) {
	for !node.IsLeader() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
	pw, err := readOrCreate(filepath.Join(cfg.DataDir, "demo-password"))
	if err != nil {
		log.Error("demo login", "err", err)
		return
	}
	user := "demo@" + demoDomain
	if _, _, err := node.Propose(ctx, &command.AddDomain{Name: demoDomain}); err != nil && !errors.Is(err, storage.ErrExists) {
		log.Error("demo domain", "err", err)
		return
	}
	secrets, err := api.Derive(pw, admin.LegacySecrets{})
	if err == nil {
		_, _, err = node.Propose(ctx, &command.AddUser{Address: user, Name: "Demo User", Secrets: secrets})
	}
	if err != nil && !errors.Is(err, storage.ErrExists) {
		log.Error("demo user", "err", err)
		return
	}
	host := cfg.Bind
	fmt.Fprintf(stdout, `
Flotilla dev node is up.
  Login:      %s  password: %s
  Admin API:  http://%s:%d  (token: %s)
  SMTP %d, submission %d, SMTPS %d, IMAP %d, IMAPS %d, POP3 %d, POP3S %d on %s
  Try:        flotilla cluster status --data-dir %s
`, user, pw, host, cfg.HTTPPort, cfg.APIToken, cfg.SMTPPort, cfg.SubmissionPort, cfg.SMTPSPort,
		cfg.IMAPPort, cfg.IMAPSPort, cfg.POP3Port, cfg.POP3SPort, host, cfg.DataDir)
}
