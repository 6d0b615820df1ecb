package pop3_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"

	"github.com/emersion/go-sasl"

	"github.com/flotilla-mail/flotilla/mail/pop3"
)

// verifyPassword stands in for the real credential check.
func verifyPassword(ctx context.Context, user, pass string) error { return pop3.ErrAuthFailed }

func ExampleServer() {
	var backend pop3.Backend // the clustered store
	var tlsConfig *tls.Config

	srv := &pop3.Server{
		Backend:   backend,
		TLSConfig: tlsConfig,
		Logger:    slog.Default(),
		SASL: func(ctx context.Context, c pop3.ConnInfo) map[string]func() pop3.SASLServer {
			if !c.PasswordOK {
				return nil // PLAIN sends the password: only over TLS
			}
			return map[string]func() pop3.SASLServer{
				"PLAIN": func() pop3.SASLServer {
					var user string
					s := sasl.NewPlainServer(func(identity, username, password string) error {
						if identity != "" && identity != username {
							return pop3.ErrAuthFailed
						}
						if err := verifyPassword(ctx, username, password); err != nil {
							return err
						}
						user = username
						return nil
					})
					return pop3.NewSASLServer(s, func() string { return user })
				},
			}
		},
	}

	ctx := context.Background()
	l110, _ := net.Listen("tcp", ":110")
	l995, _ := net.Listen("tcp", ":995")
	go srv.Serve(ctx, l110)
	go srv.Serve(ctx, tls.NewListener(l995, tlsConfig))

	// On SIGTERM: refuse new work, let sessions finish for a while, then
	// abort what is left.
	_ = srv.Shutdown(ctx)
}
