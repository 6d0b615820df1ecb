package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/flotilla-mail/flotilla/mail/auth"
	"github.com/flotilla-mail/flotilla/mail/pop3"
	"github.com/flotilla-mail/flotilla/mail/pop3store"
)

// startPOP3 starts POP3 (with STLS) and POP3S (implicit TLS) on the ports
// that are not 0. The stop function refuses new sessions at once, lets the
// others end (each session waiting for a command is told the server is
// shutting down; none deletes anything) until its context ends, then
// closes what is left.
func startPOP3(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	noop := func(context.Context) {}
	if env.cfg.POP3Port == 0 && env.cfg.POP3SPort == 0 {
		return noop, nil
	}
	log := env.log.With("proto", "pop3")
	backend, err := pop3store.New(pop3store.Config{
		Node: env.node, Logger: log, AuthParams: auth.DefaultParams(), Hostname: env.hostname,
		AllowCRAMMD5: env.cfg.AllowCRAMMD5,
	})
	if err != nil {
		return nil, err
	}
	var be pop3.Backend = backend
	if env.cfg.AllowAPOP {
		be = pop3store.WithAPOP(backend)
	}
	tlsConfig := env.tls.Config()
	srv := &pop3.Server{
		Backend:   be,
		TLSConfig: tlsConfig,
		Hostname:  env.hostname,
		Logger:    log,
		SASL:      backend.SASL,

		AllowInsecureAuth:   env.cfg.AllowInsecureAuth,
		MaxConnections:      env.cfg.MaxConnections,
		MaxConnectionsPerIP: env.cfg.MaxConnectionsPerIP,
	}

	type listener struct {
		net.Listener
		implicitTLS bool
	}
	var listeners []listener
	closeAll := func() {
		for _, l := range listeners {
			l.Close()
		}
	}
	for _, p := range []struct {
		port     int
		implicit bool
	}{{env.cfg.POP3Port, false}, {env.cfg.POP3SPort, true}} {
		if p.port == 0 {
			continue
		}
		l, err := net.Listen("tcp", env.addr(p.port))
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("pop3 port: %w", err)
		}
		if p.implicit {
			l = tls.NewListener(l, tlsConfig)
		}
		listeners = append(listeners, listener{l, p.implicit})
	}

	// Sessions end through Shutdown, not through ctx: SIGTERM cancels ctx,
	// and cancelling Serve's context is the hard stop. hardStop comes only
	// after the grace period.
	serveCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	for _, l := range listeners {
		log.Info("pop3: listening", "addr", l.Addr().String(), "implicit_tls", l.implicitTLS)
		go func() {
			if err := srv.Serve(serveCtx, l.Listener); err != nil && !errors.Is(err, pop3.ErrServerClosed) && serveCtx.Err() == nil {
				log.Error("pop3: listener failed", "addr", l.Addr().String(), "err", err)
			}
		}()
	}
	return func(sctx context.Context) {
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("pop3: sessions still open after the grace period; closing them", "err", err)
		}
		hardStop()
	}, nil
}
