package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/flotilla-mail/flotilla/mail/smtp"
)

// startSMTP starts the SMTP listeners whose ports are not 0: MX (STARTTLS),
// submission (STARTTLS, AUTH required) and submission over implicit TLS.
// The stop function shuts down in two phases: idle sessions get 421 at
// once, transactions in flight finish until ctx ends, then the rest are
// cut off.
//
// Limits are the package defaults (smtp.Default*): 32 MiB messages, 100
// recipients, 5 minute reads; there are no flags for them yet. CRAM-MD5
// is offered with --allow-cram-md5 (it needs secrets derived with it).
func startSMTP(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	ports := []struct {
		port int
		kind smtp.Kind
	}{{env.cfg.SMTPPort, smtp.MX}, {env.cfg.SubmissionPort, smtp.Submission}, {env.cfg.SMTPSPort, smtp.SubmissionTLS}}
	srv, err := smtp.New(smtp.Config{
		Backend: env.node, Hostname: env.hostname, TLSConfig: env.tls.Config(),
		Logger: env.log.With("proto", "smtp"), AllowCRAMMD5: env.cfg.AllowCRAMMD5,
		AllowInsecureAuth: env.cfg.AllowInsecureAuth,
		MaxConnections:    env.cfg.MaxConnections, MaxConnectionsPerIP: env.cfg.MaxConnectionsPerIP,
		DiskLow: env.disk.Low,
	})
	if err != nil {
		return nil, err
	}
	var lns []net.Listener
	for _, p := range ports {
		if p.port == 0 {
			continue
		}
		ln, err := net.Listen("tcp", env.addr(p.port))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("%s port: %w", p.kind, err)
		}
		lns = append(lns, ln)
	}
	var wg sync.WaitGroup
	i := 0
	for _, p := range ports {
		if p.port == 0 {
			continue
		}
		ln := lns[i]
		i++
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln, p.kind); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				env.log.Error("smtp listener failed", "kind", p.kind.String(), "addr", ln.Addr().String(), "err", err)
			}
		}()
	}
	return func(ctx context.Context) {
		if err := srv.Shutdown(ctx); err != nil {
			env.log.Warn("smtp: sessions cut off at shutdown", "err", err)
		}
		wg.Wait()
	}, nil
}
