package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/imap"
	"github.com/flotilla-mail/flotilla/storage"
)

// startIMAP starts the IMAP listeners: STARTTLS on the IMAP port, implicit
// TLS on the IMAPS port (either may be 0 for none). The stop function
// refuses new connections at once, says BYE to sessions at their next
// command boundary (at once to idle ones), and closes what is left when
// its context ends.
func startIMAP(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	if env.cfg.IMAPPort == 0 && env.cfg.IMAPSPort == 0 {
		return func(context.Context) {}, nil
	}
	srv := &imap.Server{
		Cluster: env.node,
		Mechanisms: &auth.Mechanisms{Lookup: imap.Lookup(env.node.Store()), Hostname: env.hostname, AllowCRAMMD5: env.cfg.AllowCRAMMD5,
			DecoyParams:  auth.DefaultParams(),
			DecoyKeyFunc: func() []byte { return env.node.Store().Secret(storage.SecretSASLDecoy) }},
		TLSConfig:         env.tls.Config(),
		AllowInsecureAuth: env.cfg.AllowInsecureAuth,
		Logger:            env.log,
		Version:           cluster.BuildVersion,
		MaxConnections:    env.cfg.MaxConnections, MaxConnectionsPerIP: env.cfg.MaxConnectionsPerIP,
		DiskLow: env.disk.Low,
	}
	var lns []net.Listener
	closeAll := func() {
		for _, l := range lns {
			l.Close()
		}
	}
	for _, l := range []struct {
		port     int
		implicit bool
	}{{env.cfg.IMAPPort, false}, {env.cfg.IMAPSPort, true}} {
		if l.port == 0 {
			continue
		}
		ln, err := net.Listen("tcp", env.addr(l.port))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("imap port %d: %w", l.port, err)
		}
		if l.implicit {
			ln = tls.NewListener(ln, env.tls.Config())
		}
		lns = append(lns, ln)
	}
	for _, ln := range lns {
		go func(ln net.Listener) {
			if err := srv.Serve(ctx, ln); err != nil && !errors.Is(err, imap.ErrServerClosed) && ctx.Err() == nil {
				env.log.Error("imap listener", "addr", ln.Addr().String(), "err", err)
			}
		}(ln)
	}
	env.log.Info("imap listening", "imap", env.cfg.IMAPPort, "imaps", env.cfg.IMAPSPort)
	return func(ctx context.Context) {
		if err := srv.Shutdown(ctx); err != nil {
			env.log.Warn("imap shutdown", "err", err)
		}
	}, nil
}
