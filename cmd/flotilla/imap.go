package main

import "context"

// startIMAP starts the IMAP listeners (not yet wired).
func startIMAP(ctx context.Context, env *mailEnv) (func(context.Context), error) {
	return func(context.Context) {}, nil
}
