package main

import (
	"context"
	"net"

	"github.com/flotilla-mail/flotilla/mail/delivery"
)

// useDNSResolver sends every DNS lookup of the process (the standard
// library's too) to server. It runs while the configuration is read, before
// any goroutine could be looking something up.
func useDNSResolver(server string) {
	if server == "" {
		return
	}
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, "53")
	}
	net.DefaultResolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
}

// startDelivery starts this node's share of outbound delivery and of mail
// collection; with --dns-resolver its lookups go to that server.
func startDelivery(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	res, err := delivery.NewDNSResolver(env.cfg.DNSResolver)
	if err != nil {
		return nil, err
	}
	var local net.IP
	for _, a := range []string{env.cfg.Advertise, env.cfg.Bind} {
		if ip := net.ParseIP(a); ip != nil && !ip.IsUnspecified() {
			local = ip
			break
		}
	}
	log := env.log.With("proto", "delivery")
	w := delivery.New(delivery.Options{Node: env.node, Log: log, Hostname: env.hostname, Resolver: res, LocalIP: local})
	w.Start()
	col := delivery.NewCollector(delivery.CollectorOptions{Node: env.node, Log: log, Hostname: env.hostname, LocalIP: local,
		DiskLow: env.disk.Low})
	col.Start()
	log.Info("delivery: working the queue", "dns", orDefault(env.cfg.DNSResolver, "system"))
	return func(sctx context.Context) {
		col.Stop()
		w.Stop(sctx)
	}, nil
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
