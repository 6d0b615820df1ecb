package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/flotilla-mail/flotilla/cluster"
	"github.com/flotilla-mail/flotilla/mail/certs"
	"github.com/flotilla-mail/flotilla/mail/smtp"
)

// mailEnv is what every protocol's listeners need.
type mailEnv struct {
	cfg      *config
	node     *cluster.Node
	log      *slog.Logger
	tls      *certs.Loader
	hostname string
	disk     *cluster.DiskGuard // shared by SMTP, IMAP and collection
}

// addr is the listening address of a port.
func (e *mailEnv) addr(port int) string { return net.JoinHostPort(e.cfg.Bind, strconv.Itoa(port)) }

// newMailEnv loads the listeners' TLS certificate: the configured pair, or a
// self-signed one (logged as such) so that STARTTLS and implicit TLS work
// out of the box.
func newMailEnv(cfg *config, node *cluster.Node, log *slog.Logger) (*mailEnv, error) {
	minFree := cfg.MinFreeSpace.n
	if minFree == 0 {
		minFree = smtp.DefaultMaxMessageBytes / 2 * 3 // room for the largest message and then some, as Postfix keeps
	}
	env := &mailEnv{cfg: cfg, node: node, log: log, hostname: cfg.Hostname,
		disk: cluster.NewDiskGuard(cfg.DataDir, minFree, log.With("component", "disk"))}
	if env.hostname == "" {
		env.hostname, _ = os.Hostname()
	}
	var err error
	if cfg.TLSCert != "" {
		env.tls, err = certs.NewLoader(cfg.TLSCert, cfg.TLSKey, log)
	} else {
		if !cfg.Dev {
			log.Warn("no --tls-cert given: the mail listeners use a self-signed certificate")
		}
		env.tls, err = certs.SelfSigned(filepath.Join(cfg.DataDir, "tls"), []string{env.hostname, cfg.Bind}, log)
	}
	return env, err
}

// starter starts one protocol's listeners and returns how to stop them: the
// stop function refuses new work at once and waits for sessions until its
// context ends, then closes what is left.
type starter func(ctx context.Context, env *mailEnv) (stop func(context.Context), err error)

// startMail starts every mail listener whose port is not 0.
func startMail(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	var stops []func(context.Context)
	// Every protocol drains at once, within the same grace period.
	stopAll := func(ctx context.Context) {
		var wg sync.WaitGroup
		for _, s := range stops {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s(ctx)
			}()
		}
		wg.Wait()
	}
	for _, start := range []starter{startSMTP, startPOP3, startIMAP, startDelivery} {
		stop, err := start(ctx, env)
		if err != nil {
			stopAll(ctx)
			return nil, err
		}
		stops = append(stops, stop)
	}
	return stopAll, nil
}
